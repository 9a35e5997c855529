/*
 * mapsvg: a label map as SVG (see mapsvg.h). Coordinates: one unit of the
 * map's grid is `cell` pixels, and the image's fraction x maps to
 * x * W cells, as RoIAlign's sampling sees it (cell q spans [q, q + 1)).
 */
#include "mapsvg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LEGEND_MAX 24u /* classes listed in the legend */
#define BARS 5u        /* pooled classes shown as bars */
#define BAR_PX 160.0   /* the length of a bar of probability 1 */
#define GRID_PX 560u   /* the grid's largest side, at most */
#define PANEL_PX 300u  /* legend and bars, right of the grid */

typedef struct layout {
  double cell;   /* pixels per grid unit */
  double ox, oy; /* the grid's top-left corner */
  double px;     /* the panel's left edge */
  uint32_t h, w;
} layout;

/* The colour of class `c` at probability `p`: a hue per class, golden-ratio
 * spaced (neighbouring indices land far apart on the wheel), lighter as
 * the class is less sure. */
static int colour(dynbuf *b, uint32_t c, double p) {
  double hue = fmod((double)c * 0.6180339887498949, 1.0) * 360.0;
  double light = 92.0 - 52.0 * (p < 0 ? 0 : p > 1 ? 1 : p);
  return lmap_dynbuf_printf(b, "hsl(%.0f,70%%,%.0f%%)", hue, light);
}

/* Text with &, <, > and " escaped, and the control characters that XML
 * forbids (even as references) shown as '?'. */
static int text(dynbuf *b, const char *s) {
  int rc = 0;
  for (; rc == 0 && *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
      rc = lmap_dynbuf_add(b, "?", 1);
      continue;
    }
    switch (*s) {
    case '&': rc = lmap_dynbuf_addstr(b, "&amp;"); break;
    case '<': rc = lmap_dynbuf_addstr(b, "&lt;"); break;
    case '>': rc = lmap_dynbuf_addstr(b, "&gt;"); break;
    case '"': rc = lmap_dynbuf_addstr(b, "&quot;"); break;
    default: rc = lmap_dynbuf_add(b, s, 1);
    }
  }
  return rc;
}

/* A class's name, or its index when the store has no names. */
static int class_label(dynbuf *b, const mapsvg_input *in, uint32_t c) {
  if (in->class_names && in->class_names[c]) {
    int rc = lmap_dynbuf_printf(b, "%u ", c);
    return rc ? rc : text(b, in->class_names[c]);
  }
  return lmap_dynbuf_printf(b, "class %u", c);
}

/* The top-1 class of cell `i` and its probability: softmax over all C
 * classes, the K stored logits and C - K zeros. */
static void cell_top1(const labelmap *m, uint32_t C, size_t i, uint32_t *cls,
                      double *prob) {
  size_t base = i * m->k;
  uint32_t best = 0;
  for (uint32_t e = 1; e < m->k; e++) {
    float a = labelmap_score(m, base + e), t = labelmap_score(m, base + best);
    if (a > t || (a == t &&
                  labelmap_class(m, base + e) < labelmap_class(m, base + best)))
      best = e;
  }
  double top = labelmap_score(m, base + best);
  double mx = C > m->k && top < 0 ? 0 : top;
  double z = (double)(C - m->k) * exp(-mx);
  for (uint32_t e = 0; e < m->k; e++)
    z += exp((double)labelmap_score(m, base + e) - mx);
  *cls = labelmap_class(m, base + best);
  *prob = exp(top - mx) / z;
}

typedef struct legend_entry {
  uint32_t cls, count;
} legend_entry;

static int by_class(const void *pa, const void *pb) {
  uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
  return (a > b) - (a < b);
}

static int by_count(const void *pa, const void *pb) {
  const legend_entry *a = pa, *b = pb;
  if (a->count != b->count)
    return a->count > b->count ? -1 : 1;
  return (a->cls > b->cls) - (a->cls < b->cls);
}

static int draw_cells(dynbuf *b, const mapsvg_input *in, const layout *L,
                      uint32_t *top1) {
  const labelmap *m = in->map;
  /* The grid's place, for a page that draws over it (the store browser). */
  int rc = lmap_dynbuf_printf(b,
                              "<g id=\"cells\" stroke=\"#ffffff\" "
                              "stroke-width=\"0.5\" data-x=\"%.2f\" "
                              "data-y=\"%.2f\" data-cell=\"%.4f\" "
                              "data-rows=\"%u\" data-columns=\"%u\">\n",
                              L->ox, L->oy, L->cell, m->h, m->w);
  for (uint32_t r = 0; rc == 0 && r < m->h; r++)
    for (uint32_t q = 0; rc == 0 && q < m->w; q++) {
      size_t i = (size_t)r * m->w + q;
      double p;
      cell_top1(m, in->num_classes, i, &top1[i], &p);
      rc = lmap_dynbuf_printf(b,
                              "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" "
                              "height=\"%.2f\" fill=\"",
                              L->ox + q * L->cell, L->oy + r * L->cell, L->cell,
                              L->cell);
      if (rc == 0)
        rc = colour(b, top1[i], p);
      if (rc == 0)
        rc = lmap_dynbuf_printf(b, "\"><title>row %u, column %u: ", r, q);
      if (rc == 0)
        rc = class_label(b, in, top1[i]);
      if (rc == 0)
        rc = lmap_dynbuf_printf(b, ", p = %.3f</title></rect>\n", p);
    }
  return rc ? rc : lmap_dynbuf_addstr(b, "</g>\n");
}

/* Row and column numbers: every one, or every 5th on a dense grid. */
static int draw_coordinates(dynbuf *b, const layout *L) {
  uint32_t step = L->cell >= 14 ? 1 : 5;
  int rc = lmap_dynbuf_addstr(b, "<g id=\"coordinates\" font-size=\"10\" "
                                 "fill=\"#444444\" text-anchor=\"middle\">\n");
  for (uint32_t q = 0; rc == 0 && q < L->w; q += step)
    rc = lmap_dynbuf_printf(b, "<text x=\"%.2f\" y=\"%.2f\">%u</text>\n",
                            L->ox + (q + 0.5) * L->cell, L->oy - 4, q);
  for (uint32_t r = 0; rc == 0 && r < L->h; r += step)
    rc = lmap_dynbuf_printf(b, "<text x=\"%.2f\" y=\"%.2f\">%u</text>\n",
                            L->ox - 12, L->oy + (r + 0.5) * L->cell + 3.5, r);
  return rc ? rc : lmap_dynbuf_addstr(b, "</g>\n");
}

/* The legend's lines: one per top-1 class present, up to LEGEND_MAX, and
 * one for the rest. Uses `top1` (one entry per cell) as scratch. */
static size_t legend_rows(const mapsvg_input *in, uint32_t *top1) {
  const labelmap *m = in->map;
  size_t cells = (size_t)m->h * m->w, n = 0;
  double p;
  for (size_t i = 0; i < cells; i++)
    cell_top1(m, in->num_classes, i, &top1[i], &p);
  qsort(top1, cells, sizeof *top1, by_class);
  for (size_t i = 0; i < cells; i++)
    n += i == 0 || top1[i] != top1[i - 1];
  return n > LEGEND_MAX ? LEGEND_MAX + 1 : n;
}

/* The top-1 classes present, most cells first; returns the panel's next y. */
static int draw_legend(dynbuf *b, const mapsvg_input *in, const layout *L,
                       uint32_t *top1, double *y) {
  size_t cells = (size_t)L->h * L->w;
  qsort(top1, cells, sizeof *top1, by_class);
  legend_entry *e = malloc(cells * sizeof *e);
  if (e == NULL)
    return LMAP_ENOMEM;
  size_t n = 0;
  for (size_t i = 0; i < cells; i++) {
    if (n && e[n - 1].cls == top1[i])
      e[n - 1].count++;
    else
      e[n++] = (legend_entry){top1[i], 1};
  }
  qsort(e, n, sizeof *e, by_count);
  int rc = lmap_dynbuf_printf(
      b,
      "<g id=\"legend\" font-size=\"12\">\n<text x=\"%.2f\" y=\"%.2f\" "
      "font-weight=\"bold\">Top-1 classes (%zu)</text>\n",
      L->px, *y, n);
  *y += 18;
  for (size_t i = 0; rc == 0 && i < n && i < LEGEND_MAX; i++, *y += 16) {
    rc = lmap_dynbuf_printf(b,
                            "<rect x=\"%.2f\" y=\"%.2f\" width=\"12\" "
                            "height=\"12\" fill=\"",
                            L->px, *y - 10);
    if (rc == 0)
      rc = colour(b, e[i].cls, 1.0);
    if (rc == 0)
      rc = lmap_dynbuf_printf(b, "\"/><text x=\"%.2f\" y=\"%.2f\">", L->px + 18,
                              *y);
    if (rc == 0)
      rc = class_label(b, in, e[i].cls);
    if (rc == 0)
      rc = lmap_dynbuf_printf(b, " (%u cell%s)</text>\n", e[i].count,
                              e[i].count == 1 ? "" : "s");
  }
  if (rc == 0 && n > LEGEND_MAX) {
    rc = lmap_dynbuf_printf(b,
                            "<text x=\"%.2f\" y=\"%.2f\">and %zu more</text>\n",
                            L->px + 18, *y, n - LEGEND_MAX);
    *y += 16;
  }
  free(e);
  *y += 12;
  return rc ? rc : lmap_dynbuf_addstr(b, "</g>\n");
}

/* A rectangle given in grid units. */
static int grid_rect(dynbuf *b, const layout *L, double x0, double y0,
                     double x1, double y1, const char *attrs,
                     const char *title) {
  return lmap_dynbuf_printf(
      b,
      "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
      "fill=\"none\" %s><title>%s</title></rect>\n",
      L->ox + x0 * L->cell, L->oy + y0 * L->cell, (x1 - x0) * L->cell,
      (y1 - y0) * L->cell, attrs, title);
}

/* The box, the region pooled and the token grid. */
static int draw_box(dynbuf *b, const mapsvg_input *in, const layout *L) {
  const pool_query *q = in->query;
  const double *bx = q->box;
  double W = L->w, H = L->h;
  /* The region pooled, in grid units: the official tuple (top, left,
   * height, width) is read as (x1, y1, x2, y2), both axes scaled by W. */
  double px0, py0, px1, py1;
  int rc = lmap_dynbuf_addstr(b, "<g id=\"box\">\n");
  if (q->box_format == POOL_BOX_RELABEL) {
    px0 = bx[0] * W;
    py0 = bx[1] * W;
    px1 = (bx[0] + bx[2]) * W;
    py1 = (bx[1] + bx[3]) * W;
    if (rc == 0)
      rc = grid_rect(b, L, bx[1] * W, bx[0] * H, (bx[1] + bx[3]) * W,
                     (bx[0] + bx[2]) * H,
                     "stroke=\"#000000\" stroke-width=\"2.5\"",
                     "the crop (top, left, height, width)");
    if (rc == 0)
      rc = grid_rect(b, L, px0, py0, px1, py1,
                     "stroke=\"#d40000\" stroke-width=\"2.5\" "
                     "stroke-dasharray=\"6 4\"",
                     "the region the official code pools: the crop mirrored "
                     "across the diagonal");
  } else {
    px0 = bx[0] * W;
    py0 = bx[1] * H;
    px1 = bx[2] * W;
    py1 = bx[3] * H;
    if (rc == 0)
      rc = grid_rect(b, L, px0, py0, px1, py1,
                     "stroke=\"#000000\" stroke-width=\"2.5\"",
                     "the box (x0, y0, x1, y1)");
  }
  uint32_t G = q->output_size;
  for (uint32_t k = 1; rc == 0 && k < G; k++) {
    double fx = px0 + (px1 - px0) * k / G, fy = py0 + (py1 - py0) * k / G;
    rc = lmap_dynbuf_printf(
        b,
        "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" "
        "stroke=\"#000000\" stroke-dasharray=\"2 3\"/>\n"
        "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" "
        "stroke=\"#000000\" stroke-dasharray=\"2 3\"/>\n",
        L->ox + fx * L->cell, L->oy + py0 * L->cell, L->ox + fx * L->cell,
        L->oy + py1 * L->cell, L->ox + px0 * L->cell, L->oy + fy * L->cell,
        L->ox + px1 * L->cell, L->oy + fy * L->cell);
  }
  return rc ? rc : lmap_dynbuf_addstr(b, "</g>\n");
}

/* The pooled top classes of the box (its first cell for G > 1). */
static int draw_bars(dynbuf *b, const mapsvg_input *in, const layout *L,
                     pool_ws *ws, double y) {
  pool_query q = *in->query;
  q.softmax = true;
  pool_cell cell;
  int rc = pool_cell_sparse(in->map, in->num_classes, &q, 0, ws, &cell);
  if (rc)
    return rc;
  rc =
      lmap_dynbuf_printf(b,
                         "<g id=\"pooled\" font-size=\"12\">\n<text x=\"%.2f\" "
                         "y=\"%.2f\" font-weight=\"bold\">Soft label of the "
                         "box%s</text>\n",
                         L->px, y, q.output_size > 1 ? ", token 0" : "");
  y += 18;
  for (uint32_t i = 0; rc == 0 && i < cell.n && i < BARS; i++, y += 30) {
    uint32_t c = cell.classes[i];
    double v = cell.values[i];
    rc = lmap_dynbuf_printf(b, "<text x=\"%.2f\" y=\"%.2f\">", L->px, y);
    if (rc == 0)
      rc = class_label(b, in, c);
    if (rc == 0)
      rc = lmap_dynbuf_printf(b,
                              "</text>\n<rect class=\"bar\" data-class=\"%u\" "
                              "data-p=\"%.6f\" x=\"%.2f\" y=\"%.2f\" "
                              "width=\"%.2f\" height=\"10\" fill=\"",
                              c, v, L->px, y + 4, v * BAR_PX);
    if (rc == 0)
      rc = colour(b, c, 1.0);
    if (rc == 0)
      rc = lmap_dynbuf_printf(b,
                              "\"><title>p = %.6f</title></rect>\n"
                              "<text x=\"%.2f\" y=\"%.2f\">%.3f</text>\n",
                              v, L->px + v * BAR_PX + 6, y + 13, v);
  }
  if (rc == 0)
    rc =
        lmap_dynbuf_printf(b,
                           "<text x=\"%.2f\" y=\"%.2f\" fill=\"#444444\">every "
                           "other class: %.6f</text>\n</g>\n",
                           L->px, y, (double)cell.rest);
  return rc;
}

int mapsvg_write(dynbuf *out, const mapsvg_input *in, pool_ws *ws) {
  const labelmap *m = in->map;
  size_t cells = (size_t)m->h * m->w;
  for (size_t i = 0; i < cells * m->k; i++)
    if (labelmap_class(m, i) >= in->num_classes)
      return LMAP_EINVAL;
  layout L = {.h = m->h, .w = m->w};
  uint32_t side = m->h > m->w ? m->h : m->w;
  L.cell = side * 28 <= GRID_PX ? 28.0 : (double)GRID_PX / side;
  L.ox = 40;
  L.oy = 56;
  L.px = L.ox + m->w * L.cell + 28;
  uint32_t *top1 = malloc((cells ? cells : 1) * sizeof *top1);
  if (top1 == NULL)
    return LMAP_ENOMEM;
  /* The panel is as tall as its legend and bars (draw_legend, draw_bars). */
  size_t rows = legend_rows(in, top1);
  double width = L.px + PANEL_PX, gh = L.oy + m->h * L.cell + 24;
  double panel_h = L.oy + 10 + 18 + 16.0 * rows + 12 +
                   (in->query ? 18 + 30.0 * BARS + 16 : 0) + 12;
  double height = gh > panel_h ? gh : panel_h;
  int rc = lmap_dynbuf_printf(
      out,
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" "
      "height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n"
      "<title>lmap: label map of ",
      width, height, width, height);
  if (rc == 0)
    rc = text(out, in->id);
  if (rc == 0)
    rc = lmap_dynbuf_printf(out,
                            " (%u x %u cells, top-%u of %u classes)</title>\n"
                            "<rect width=\"100%%\" height=\"100%%\" "
                            "fill=\"#ffffff\"/>\n<text x=\"%.2f\" y=\"22\" "
                            "font-size=\"15\" font-weight=\"bold\">",
                            m->h, m->w, m->k, in->num_classes, L.ox);
  if (rc == 0)
    rc = text(out, in->id);
  if (rc == 0)
    rc = lmap_dynbuf_printf(
        out,
        "</text>\n<text x=\"%.2f\" y=\"38\" font-size=\"11\" "
        "fill=\"#444444\">each cell: its top-1 class, darker "
        "when surer</text>\n",
        L.ox);
  if (rc == 0)
    rc = draw_cells(out, in, &L, top1);
  if (rc == 0)
    rc = draw_coordinates(out, &L);
  double y = L.oy + 10;
  if (rc == 0)
    rc = draw_legend(out, in, &L, top1, &y);
  if (rc == 0 && in->query) {
    rc = draw_box(out, in, &L);
    if (rc == 0)
      rc = draw_bars(out, in, &L, ws, y);
  }
  free(top1);
  return rc ? rc : lmap_dynbuf_addstr(out, "</svg>\n");
}
