// lmap store browser: talks to the lmapd that served it, nothing else.
//
// The map is the server's own drawing (GET /v1/maps/{id}, Accept:
// image/svg+xml, the one owner of how a map looks); this page draws the crop
// box over it, asks POST /v1/labels for the box's soft label as the box
// moves (one request in flight, the latest box next), and shows the result
// as bars. Box state is kept in image fractions, as xyxy; the relabel format
// sends the same crop as the official (top, left, height, width) tuple.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PAGE = 50;     // ids per page
const BARS = 10;     // classes shown for the soft label
const LIVE_MS = 2000; // /metrics poll

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem("lmap-token") || "",
  info: null,
  classNames: null,
  id: null,
  box: { x0: 0.2, y0: 0.2, x1: 0.8, y1: 0.8 },
  grid: null,        // the map's cell grid in SVG units: {x, y, cell, rows, columns}
  svg: null,         // the map's <svg>
  overlay: null,     // our <g> over it
  pages: [""],       // the `after` of each page seen, for Previous
  page: 0,
  next: null,
  inFlight: false,
  dirty: false,
  result: null,      // the last POST /v1/labels item
};

// ---- HTTP ----

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) {
    askToken(state.token ? "The token was refused." : "");
    throw new HttpError(401, "a bearer token is required");
  }
  if (!res.ok) {
    let message = res.status + " " + res.statusText;
    try { message = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    throw new HttpError(res.status, message);
  }
  return res;
}

function askToken(why) {
  const dialog = $("token-dialog");
  if (dialog.open) return;
  dialog.querySelector("p").textContent = (why ? why + " " : "") +
    "This server wants a bearer token. It is kept in this tab's session storage " +
    "only, and sent only to this server.";
  $("token-input").value = "";
  dialog.showModal();
}

// ---- store info and class names ----

async function loadStore() {
  state.info = await (await api("/v1/info")).json();
  try {
    state.classNames = (await (await api("/v1/classes")).json()).classes;
  } catch (e) {
    if (e.status !== 404) throw e;
    state.classNames = null; // the store has none: classes by index
  }
  const i = state.info;
  $("store-line").textContent = i.record_count.toLocaleString("en") + " maps, " +
    i.grid_h + " x " + i.grid_w + " cells, top-" + i.topk + " of " + i.num_classes + " classes";
  const rows = [
    ["records", i.record_count.toLocaleString("en")],
    ["grid", i.grid_h + " x " + i.grid_w],
    ["top-K", i.topk],
    ["classes", i.num_classes + (state.classNames ? " (named)" : " (no names)")],
    ["encoding", i.encoding],
    ["file", (i.file_bytes / 1048576).toFixed(1) + " MiB"],
    ["serving", i.serving ? i.serving.mode : "mapped"],
  ];
  const dl = $("store-info");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = String(v);
    dl.append(dt, dd);
  }
}

function className(c) {
  return state.classNames && state.classNames[c] != null
    ? c + " " + state.classNames[c] : "class " + c;
}

// ---- ids ----

async function loadIds() {
  const prefix = $("id-search").value.trim();
  const after = state.pages[state.page];
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (prefix) q.set("prefix", prefix);
  if (after) q.set("after", after);
  $("ids-status").textContent = "Searching…";
  let page;
  try {
    page = await (await api("/v1/ids?" + q)).json();
  } catch (e) {
    $("ids-status").textContent = e.message;
    return;
  }
  state.next = page.next;
  const list = $("id-list");
  list.replaceChildren();
  for (const id of page.ids) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = id;
    b.dataset.id = id;
    if (id === state.id) b.setAttribute("aria-current", "true");
    b.addEventListener("click", () => showMap(id));
    li.append(b);
    list.append(li);
  }
  const first = state.page * PAGE + 1;
  $("ids-status").textContent = page.ids.length
    ? "ids " + first + "–" + (first + page.ids.length - 1) + (page.next ? ", more follow" : "")
    : "No id starts with '" + prefix + "'.";
  $("page-prev").disabled = state.page === 0;
  $("page-next").disabled = !page.next;
}

function search() {
  state.pages = [""];
  state.page = 0;
  loadIds();
}

// ---- the map and the box over it ----

async function showMap(id) {
  state.id = id;
  for (const b of $("id-list").querySelectorAll("button"))
    b.setAttribute("aria-current", String(b.dataset.id === id));
  $("map-title").textContent = id;
  let text;
  try {
    text = await (await api("/v1/maps/" + encodeURIComponent(id),
                            { headers: { Accept: "image/svg+xml" } })).text();
  } catch (e) {
    $("map-title").textContent = id + ": " + e.message;
    return;
  }
  // The server's drawing, parsed as XML (never as HTML) and adopted.
  const doc = new DOMParser().parseFromString(text, "image/svg+xml");
  const svg = document.importNode(doc.documentElement, true);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "label map of " + id);
  const cells = svg.querySelector("#cells");
  if (!cells) {
    $("map-title").textContent = id + ": the server's drawing could not be read";
    return;
  }
  state.grid = {
    x: +cells.dataset.x, y: +cells.dataset.y, cell: +cells.dataset.cell,
    rows: +cells.dataset.rows, columns: +cells.dataset.columns,
  };
  state.svg = svg;
  state.overlay = document.createElementNS(SVG_NS, "g");
  state.overlay.id = "ui-overlay";
  svg.append(state.overlay);
  svg.addEventListener("pointerdown", onPointerDown);
  svg.addEventListener("keydown", onBoxKey);
  $("map-figure").replaceChildren(svg);
  boxChanged();
}

const clamp = (v) => Math.min(1, Math.max(0, v));

function boxFormat() {
  return $("format-relabel").checked ? "relabel" : "xyxy";
}

function outputSize() {
  return +$("output-size").value;
}

// The box as the server takes it, in the chosen format.
function queryBox() {
  const b = state.box;
  return boxFormat() === "relabel"
    ? [b.y0, b.x0, b.y1 - b.y0, b.x1 - b.x0] // (top, left, height, width)
    : [b.x0, b.y0, b.x1, b.y1];
}

// The region pooled, in grid units: the box itself, or for relabel boxes
// the official reading, (top, left, height, width) taken as
// (x1, y1, x2, y2) and both axes scaled by the width (docs/POOLING.md).
function pooledRegion() {
  const b = state.box, W = state.grid.columns, H = state.grid.rows;
  if (boxFormat() === "relabel")
    return { x0: b.y0 * W, y0: b.x0 * W, x1: b.y1 * W, y1: b.x1 * W };
  return { x0: b.x0 * W, y0: b.y0 * H, x1: b.x1 * W, y1: b.y1 * H };
}

function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  parent.append(el);
  return el;
}

function drawBox() {
  const g = state.grid, o = state.overlay, b = state.box;
  if (!o) return;
  const focused = o.contains(document.activeElement);
  o.replaceChildren();
  const px = (fx) => g.x + fx * g.columns * g.cell; // image fraction -> SVG
  const py = (fy) => g.y + fy * g.rows * g.cell;
  const gx = (u) => g.x + u * g.cell;               // grid units -> SVG
  const gy = (u) => g.y + u * g.cell;
  const r = pooledRegion();
  if (boxFormat() === "relabel") {
    const d = svgEl("rect", { x: gx(r.x0), y: gy(r.y0), width: gx(r.x1) - gx(r.x0),
                              height: gy(r.y1) - gy(r.y0), fill: "none", stroke: "#d40000",
                              "stroke-width": 2.5, "stroke-dasharray": "6 4",
                              "pointer-events": "none", class: "ui-pooled" }, o);
    svgEl("title", {}, d).textContent =
      "the region the official code pools: the crop mirrored across the diagonal";
  }
  const G = outputSize();
  for (let k = 1; k < G; k++) {
    const fx = r.x0 + (r.x1 - r.x0) * k / G, fy = r.y0 + (r.y1 - r.y0) * k / G;
    svgEl("line", { x1: gx(fx), y1: gy(r.y0), x2: gx(fx), y2: gy(r.y1), stroke: "#000",
                    "stroke-dasharray": "2 3", "pointer-events": "none" }, o);
    svgEl("line", { x1: gx(r.x0), y1: gy(fy), x2: gx(r.x1), y2: gy(fy), stroke: "#000",
                    "stroke-dasharray": "2 3", "pointer-events": "none" }, o);
  }
  const box = svgEl("rect", { x: px(b.x0), y: py(b.y0), width: px(b.x1) - px(b.x0),
                              height: py(b.y1) - py(b.y0), fill: "rgba(255,255,255,0.08)",
                              stroke: "#000", "stroke-width": 2.5, class: "ui-box",
                              "data-drag": "move", tabindex: "0", role: "img",
                              "aria-label": "crop box: arrow keys move it, " +
                                "Shift with arrow keys resizes it" }, o);
  svgEl("title", {}, box).textContent = "the crop box: drag to move";
  for (const [name, fx, fy] of [["nw", b.x0, b.y0], ["ne", b.x1, b.y0],
                                ["sw", b.x0, b.y1], ["se", b.x1, b.y1]])
    svgEl("rect", { x: px(fx) - 5, y: py(fy) - 5, width: 10, height: 10, fill: "#fff",
                    stroke: "#000", "stroke-width": 1.5, class: "ui-handle " + name,
                    "data-drag": name }, o);
  if (focused) box.focus(); // redrawn: keep the keyboard on it
}

// Arrow keys move the focused box by 1% of the image; with Shift they
// move its bottom-right corner.
function onBoxKey(ev) {
  if (!ev.target.classList || !ev.target.classList.contains("ui-box")) return;
  const step = { ArrowLeft: [-0.01, 0], ArrowRight: [0.01, 0],
                 ArrowUp: [0, -0.01], ArrowDown: [0, 0.01] }[ev.key];
  if (!step) return;
  ev.preventDefault();
  const b = state.box, [dx, dy] = step;
  if (ev.shiftKey) {
    setBox({ x0: b.x0, y0: b.y0, x1: b.x1 + dx, y1: b.y1 + dy });
    return;
  }
  const w = b.x1 - b.x0, h = b.y1 - b.y0;
  const x0 = Math.min(1 - w, Math.max(0, b.x0 + dx));
  const y0 = Math.min(1 - h, Math.max(0, b.y0 + dy));
  setBox({ x0, y0, x1: x0 + w, y1: y0 + h });
}

// Pointer position as an image fraction.
function fractionAt(ev) {
  const pt = state.svg.createSVGPoint();
  pt.x = ev.clientX;
  pt.y = ev.clientY;
  const p = pt.matrixTransform(state.svg.getScreenCTM().inverse());
  const g = state.grid;
  return { x: (p.x - g.x) / (g.columns * g.cell), y: (p.y - g.y) / (g.rows * g.cell) };
}

function onPointerDown(ev) {
  if (ev.button !== 0) return;
  const start = fractionAt(ev);
  const kind = ev.target.dataset ? ev.target.dataset.drag : undefined;
  if (!kind && (start.x < 0 || start.x > 1 || start.y < 0 || start.y > 1)) return;
  ev.preventDefault();
  const from = Object.assign({}, state.box);
  const svg = state.svg;
  svg.setPointerCapture(ev.pointerId);
  const move = (e) => {
    const p = fractionAt(e);
    const dx = p.x - start.x, dy = p.y - start.y;
    let b;
    if (kind === "move") {
      const w = from.x1 - from.x0, h = from.y1 - from.y0;
      const x0 = Math.min(1 - w, Math.max(0, from.x0 + dx));
      const y0 = Math.min(1 - h, Math.max(0, from.y0 + dy));
      b = { x0, y0, x1: x0 + w, y1: y0 + h };
    } else if (kind) { // a corner: the opposite one stays
      b = Object.assign({}, from);
      if (kind.includes("w")) b.x0 = clamp(from.x0 + dx); else b.x1 = clamp(from.x1 + dx);
      if (kind.includes("n")) b.y0 = clamp(from.y0 + dy); else b.y1 = clamp(from.y1 + dy);
    } else { // a new box from the press to here
      b = { x0: clamp(Math.min(start.x, p.x)), y0: clamp(Math.min(start.y, p.y)),
            x1: clamp(Math.max(start.x, p.x)), y1: clamp(Math.max(start.y, p.y)) };
    }
    setBox(b);
  };
  const up = (e) => {
    move(e);
    svg.removeEventListener("pointermove", move);
    svg.removeEventListener("pointerup", up);
    svg.removeEventListener("pointercancel", up);
  };
  svg.addEventListener("pointermove", move);
  svg.addEventListener("pointerup", up);
  svg.addEventListener("pointercancel", up);
}

// A box with its corners in order and a size the server accepts; rounded
// to 4 digits so that what the inputs show is what is sent.
function normalBox(b) {
  const r = (v) => Math.round(clamp(v) * 1e4) / 1e4;
  let x0 = r(Math.min(b.x0, b.x1)), x1 = r(Math.max(b.x0, b.x1));
  let y0 = r(Math.min(b.y0, b.y1)), y1 = r(Math.max(b.y0, b.y1));
  const MIN = 0.01;
  if (x1 - x0 < MIN) { x1 = r(Math.min(1, x0 + MIN)); x0 = r(x1 - MIN); }
  if (y1 - y0 < MIN) { y1 = r(Math.min(1, y0 + MIN)); y0 = r(y1 - MIN); }
  return { x0, y0, x1, y1 };
}

function setBox(b) {
  state.box = normalBox(b);
  for (const k of ["x0", "y0", "x1", "y1"]) $("box-" + k).value = state.box[k];
  boxChanged();
}

function boxFromInputs() {
  const v = (k) => parseFloat($("box-" + k).value);
  const b = { x0: v("x0"), y0: v("y0"), x1: v("x1"), y1: v("y1") };
  if (Object.values(b).some((x) => !Number.isFinite(x))) return;
  setBox(b);
}

function boxChanged() {
  drawBox();
  requestLabel();
}

// ---- the soft label ----

function requestLabel() {
  if (!state.id) return;
  if (state.inFlight) { state.dirty = true; return; }
  state.inFlight = true;
  state.dirty = false;
  const body = {
    queries: [{ id: state.id, box: queryBox(), flip: $("flip").checked }],
    output_size: outputSize(),
    format: "sparse",
    box_format: boxFormat(),
  };
  const sent = JSON.stringify(body);
  api("/v1/labels", { method: "POST", headers: { "Content-Type": "application/json" },
                      body: sent })
    .then((res) => res.json())
    .then((answer) => {
      state.result = answer.results[0];
      showLabel(body);
    })
    .catch((e) => { $("label-status").textContent = e.message; })
    .finally(() => {
      state.inFlight = false;
      if (state.dirty) requestLabel();
    });
}

// The hue lmap's drawing gives class c (pool/mapsvg.c), for the bars.
function classColour(c) {
  const hue = ((c * 0.6180339887498949) % 1) * 360;
  return "hsl(" + Math.round(hue) + ",70%,40%)";
}

function showLabel(body) {
  const item = state.result;
  const G = body.output_size;
  const tokenSelect = $("token");
  if (tokenSelect.options.length !== G * G) {
    tokenSelect.replaceChildren();
    for (let t = 0; t < G * G; t++) {
      const o = document.createElement("option");
      o.value = String(t);
      o.textContent = G > 1 ? t + " (row " + Math.floor(t / G) + ", column " + (t % G) + ")" : "0";
      tokenSelect.append(o);
    }
  }
  tokenSelect.disabled = G === 1;
  const t = Math.min(+tokenSelect.value || 0, G * G - 1);
  // Sparse items: lists for one cell, lists of G*G lists for a grid.
  const rest = Array.isArray(item.rest) ? item.rest[t] : item.rest;
  const cell = G > 1 ? { classes: item.classes[t], probs: item.probs[t], rest } : item;
  const list = $("bars");
  list.replaceChildren();
  const n = Math.min(BARS, cell.classes.length);
  for (let i = 0; i < n; i++) {
    const c = cell.classes[i], p = cell.probs[i];
    const li = document.createElement("li");
    li.dataset.class = String(c);
    li.dataset.p = String(p);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = className(c);
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("role", "meter");
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "1");
    track.setAttribute("aria-valuenow", String(p));
    track.setAttribute("aria-label", className(c));
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = (p * 100).toFixed(2) + "%";
    fill.style.background = classColour(c);
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = p.toFixed(3);
    li.append(name, track, value);
    list.append(li);
  }
  const b = body.queries[0].box.map((v) => v.toFixed(4)).join(", ");
  $("label-status").textContent = (G > 1 ? "Token " + t + " of the " : "The ") +
    body.box_format + " box [" + b + "]" + (body.queries[0].flip ? ", flipped" : "") +
    ": top " + n + " of " + cell.classes.length + " classes.";
  $("rest").textContent = "every other class: " + (cell.rest == null ? 0 : cell.rest).toPrecision(3);
  $("bars").dataset.box = JSON.stringify(body.queries[0].box);
  $("bars").dataset.request = JSON.stringify(body);
}

// ---- live figures from /metrics ----

let lastMetrics = null;

function parseMetrics(text) {
  const m = { labels: 0, requests: 0, buckets: new Map() };
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || !line) continue;
    const sp = line.lastIndexOf(" ");
    const name = line.slice(0, sp), v = parseFloat(line.slice(sp + 1));
    if (name === "lmap_labels_served_total") m.labels = v;
    else if (name.startsWith("lmap_requests_total{")) m.requests += v;
    else if (name.startsWith("lmap_request_duration_seconds_bucket{")) {
      const le = /le="([^"]+)"/.exec(name)[1];
      m.buckets.set(le, (m.buckets.get(le) || 0) + v);
    } else if (name === "lmap_ready") m.ready = v;
  }
  m.at = performance.now();
  return m;
}

// The 99th percentile of the requests between two scrapes: the upper bound
// of the first bucket that holds 99% of them.
function p99(prev, now) {
  const bounds = [...now.buckets.keys()].sort((a, b) => parseFloat(a) - parseFloat(b));
  const total = now.buckets.get("+Inf") - (prev.buckets.get("+Inf") || 0);
  if (!(total > 0)) return null;
  for (const le of bounds) {
    const n = now.buckets.get(le) - (prev.buckets.get(le) || 0);
    if (n >= 0.99 * total) return le;
  }
  return "+Inf";
}

async function pollLive() {
  try {
    const res = await fetch("/metrics");
    const now = parseMetrics(await res.text());
    if (lastMetrics) {
      const s = (now.at - lastMetrics.at) / 1000;
      $("live-labels").textContent = ((now.labels - lastMetrics.labels) / s).toFixed(0);
      $("live-requests").textContent = ((now.requests - lastMetrics.requests) / s).toFixed(0);
      const q = p99(lastMetrics, now);
      $("live-p99").textContent = q == null ? "no requests"
        : q === "+Inf" ? "over the largest bucket" : "≤ " + (parseFloat(q) * 1000) + " ms";
    }
    $("live-ready").textContent = now.ready === 1 ? "yes" : "no";
    lastMetrics = now;
  } catch (e) {
    $("live-ready").textContent = "unreachable";
  }
}

// ---- wiring ----

async function start() {
  try {
    await loadStore();
    await loadIds();
    const first = $("id-list").querySelector("button");
    if (first && !state.id) showMap(first.dataset.id);
  } catch (e) {
    $("store-line").textContent = e.message;
  }
}

function init() {
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("page-next").addEventListener("click", () => {
    if (!state.next) return;
    state.pages[state.page + 1] = state.next;
    state.page++;
    loadIds();
  });
  $("page-prev").addEventListener("click", () => {
    if (state.page === 0) return;
    state.page--;
    loadIds();
  });
  $("controls").addEventListener("submit", (e) => e.preventDefault());
  for (const k of ["x0", "y0", "x1", "y1"])
    $("box-" + k).addEventListener("change", boxFromInputs);
  for (const id of ["format-xyxy", "format-relabel", "flip", "output-size"])
    $(id).addEventListener("change", boxChanged);
  $("token").addEventListener("change", () => { if (state.result) requestLabel(); });
  $("token-button").addEventListener("click", () => askToken(""));
  $("token-cancel").addEventListener("click", () => $("token-dialog").close());
  $("token-form").addEventListener("submit", () => {
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("lmap-token", state.token);
    start();
  });
  start();
  pollLive();
  setInterval(pollLive, LIVE_MS);
}

init();
