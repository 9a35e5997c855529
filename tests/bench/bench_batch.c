/*
 * bench_batch: batch soft-label throughput of lmapd through liblmap.
 *
 * K client threads, each with its own handle (a handle has no lock), send
 * `POST /v1/labels` requests of B queries for dense labels
 * (lmap_client_labels, float32 [B, C]; sparse binary answers expanded by
 * liblmap, or .npy with --answers npy) for a fixed duration or until each
 * thread has sent a request cap, whichever comes first. Queries draw ids
 * uniformly from an id file (one id per line, e.g. `lmap ids STORE`) and
 * RandomResizedCrop-like boxes: area fraction U(0.08, 1), aspect ratio
 * log-uniform in [3/4, 4/3], position uniform, up to 10 draws then the whole
 * image, as torchvision draws them on a square image; flip is a coin.
 *
 * It prints one JSON line: clients, batch, requests, labels, seconds,
 * labels_per_s, per-request latency p50/p99/max in ms, and cpu_s, the CPU
 * time the client process spent during the timed part (what a trainer pays
 * on its side for the labels, to add to the server's). Measured, never
 * asserted; the exit status is 1 only when a call failed or the arguments
 * were wrong, because a figure from failing calls means nothing.
 *
 * Invariants: every thread makes one untimed warm-up call (connect, first
 * page faults) before a common start barrier; the clock runs from the first
 * thread leaving the barrier to the end of the last request of the last
 * thread, so a request in flight at the deadline is counted with its full
 * time.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "lmap/client.h"

#define MAX_CLIENTS 256
#define MAX_BATCH 4096
#define MAX_ID_FILE (1u << 30) /* 1 GiB of ids is far beyond any store */
#define MAX_LAT 4000000        /* latencies kept per thread */

static char *id_text; /* the id file; ids[] point into it */
static char **ids;
static size_t nids;
static const char *url;
static uint32_t num_classes;
static int batch = 256;
static double seconds = 3.0;
static long max_requests = 1000000;
static int json_queries;                                  /* --queries json */
static lmap_answer_form answer_form = LMAP_ANSWER_SPARSE; /* --answers */
static lmap_client_options client_options;
static pthread_barrier_t start_barrier;

typedef struct worker {
  pthread_t thread;
  uint64_t seed;
  uint64_t requests;
  double *lat_ms; /* one per timed request */
  size_t nlat;
  double start; /* monotonic time the thread left the barrier */
  double end;   /* monotonic time the last request ended */
  int failed;
  char err[512];
} worker;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* splitmix64 to a double in [0, 1): independent streams per seed. */
static double urand(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* A RandomResizedCrop box on a square image, xyxy fractions. */
static void rrc_box(uint64_t *s, double box[4]) {
  const double lo = log(3.0 / 4.0), hi = log(4.0 / 3.0);
  for (int attempt = 0; attempt < 10; attempt++) {
    double area = 0.08 + 0.92 * urand(s);
    double ratio = exp(lo + (hi - lo) * urand(s));
    double w = sqrt(area * ratio), h = sqrt(area / ratio);
    if (w <= 1.0 && h <= 1.0) {
      double x0 = (1.0 - w) * urand(s), y0 = (1.0 - h) * urand(s);
      box[0] = x0;
      box[1] = y0;
      box[2] = x0 + w < 1.0 ? x0 + w : 1.0;
      box[3] = y0 + h < 1.0 ? y0 + h : 1.0;
      return;
    }
  }
  box[0] = box[1] = 0.0;
  box[2] = box[3] = 1.0;
}

static void fill_queries(worker *w, lmap_query *q) {
  for (int i = 0; i < batch; i++) {
    q[i].id = ids[(size_t)(urand(&w->seed) * (double)nids) % nids];
    rrc_box(&w->seed, q[i].box);
    q[i].flip = urand(&w->seed) < 0.5;
  }
}

/* One client: warm-up call, barrier, then timed calls until the deadline or
 * the request cap. Failures are recorded in w->failed / w->err; the thread
 * still reaches the barrier so the others are not left waiting. */
static void *worker_main(void *arg) {
  worker *w = arg;
  lmap_client *c = NULL;
  char errbuf[LMAP_ERRBUF_SIZE];
  size_t out_len = (size_t)batch * num_classes;
  lmap_query *q = calloc((size_t)batch, sizeof *q);
  float *out = malloc(out_len * sizeof *out);
  size_t cap = (size_t)max_requests < MAX_LAT ? (size_t)max_requests : MAX_LAT;
  w->lat_ms = malloc(cap * sizeof *w->lat_ms);
  if (!q || !out || !w->lat_ms) {
    snprintf(w->err, sizeof w->err, "out of memory");
    w->failed = 1;
  } else if (lmap_client_new(url, &client_options, &c, errbuf) != 0) {
    snprintf(w->err, sizeof w->err, "lmap_client_new: %s", errbuf);
    w->failed = 1;
  } else {
    lmap_client_set_answer_form(c, answer_form);
    fill_queries(w, q);
    if (lmap_client_labels(c, q, (size_t)batch, NULL, out, out_len) != 0) {
      snprintf(w->err, sizeof w->err, "warm-up call: %s",
               lmap_client_errmsg(c));
      w->failed = 1;
    }
  }
  pthread_barrier_wait(&start_barrier);
  double t0 = now(), t = t0;
  w->start = w->end = t0;
  while (!w->failed && t - t0 < seconds &&
         w->requests < (uint64_t)max_requests) {
    fill_queries(w, q);
    double a = now();
    if (lmap_client_labels(c, q, (size_t)batch, NULL, out, out_len) != 0) {
      lmap_error_detail d;
      lmap_client_last_error(c, &d);
      snprintf(w->err, sizeof w->err,
               "request %llu: %s (HTTP %d, request id %s)",
               (unsigned long long)w->requests, d.message, d.http_status,
               d.request_id);
      w->failed = 1;
      break;
    }
    t = now();
    if (w->nlat < cap)
      w->lat_ms[w->nlat++] = (t - a) * 1e3;
    w->requests++;
    w->end = t;
  }
  lmap_client_free(c);
  free(q);
  free(out);
  return NULL;
}

static double cpu_seconds(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0)
    return 0.0;
  return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
         (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n). */
static double pct(const double *v, size_t n, double p) {
  if (n == 0)
    return 0.0;
  size_t k = (size_t)ceil(p / 100.0 * (double)n);
  return v[k ? k - 1 : 0];
}

/* Reads the id file into ids[] (lines, empty ones skipped). Returns 0 or -1
 * with a message on stderr. The text stays in id_text for the ids' lifetime. */
static int load_ids(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "bench_batch: %s: %s\n", path, strerror(errno));
    return -1;
  }
  size_t len = 0, cap = 1 << 20;
  char *text = malloc(cap + 1);
  while (text) {
    size_t got = fread(text + len, 1, cap - len, f);
    len += got;
    if (got == 0)
      break;
    if (len == cap) {
      if (cap >= MAX_ID_FILE) {
        fprintf(stderr, "bench_batch: %s: larger than %u bytes\n", path,
                MAX_ID_FILE);
        free(text);
        fclose(f);
        return -1;
      }
      char *grown = realloc(text, cap * 2 + 1);
      if (!grown) {
        free(text);
        text = NULL;
        break;
      }
      text = grown;
      cap *= 2;
    }
  }
  fclose(f);
  if (!text) {
    fprintf(stderr, "bench_batch: out of memory reading %s\n", path);
    return -1;
  }
  text[len] = '\0';
  id_text = text;
  size_t lines = 1;
  for (size_t i = 0; i < len; i++)
    lines += text[i] == '\n';
  ids = malloc(lines * sizeof *ids);
  if (!ids) {
    fprintf(stderr, "bench_batch: out of memory for %zu ids\n", lines);
    return -1;
  }
  for (char *p = text, *e; p < text + len; p = e + 1) {
    e = strchr(p, '\n');
    if (!e)
      e = text + len;
    *e = '\0';
    if (e > p && e[-1] == '\r')
      e[-1] = '\0';
    if (*p)
      ids[nids++] = p;
  }
  if (nids == 0) {
    fprintf(stderr, "bench_batch: %s holds no ids\n", path);
    return -1;
  }
  return 0;
}

static void usage(void) {
  fprintf(
      stderr,
      "usage: bench_batch --url URL --ids FILE [--clients K] [--batch B]\n"
      "                   [--seconds S] [--max-requests N] [--seed S]\n"
      "                   [--queries binary|json] [--answers sparse|npy]\n"
      "K client threads send POST /v1/labels of B queries (dense float32\n"
      "labels out) for S seconds or N requests per client; prints one JSON\n"
      "line.\n"
      "defaults: K 4, B 256, S 3, N 1000000, seed 1, binary queries and sparse\n"
      "binary answers (liblmap's defaults; json: the JSON body; npy: dense\n"
      ".npy answers)\n");
}

int main(int argc, char **argv) {
  const char *idfile = NULL;
  int clients = 4;
  uint64_t seed = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) {
      usage();
      return 2;
    }
    if (!strcmp(a, "--url"))
      url = v;
    else if (!strcmp(a, "--ids"))
      idfile = v;
    else if (!strcmp(a, "--clients"))
      clients = atoi(v);
    else if (!strcmp(a, "--batch"))
      batch = atoi(v);
    else if (!strcmp(a, "--seconds"))
      seconds = atof(v);
    else if (!strcmp(a, "--max-requests"))
      max_requests = atol(v);
    else if (!strcmp(a, "--seed"))
      seed = strtoull(v, NULL, 10);
    else if (!strcmp(a, "--queries") &&
             (!strcmp(v, "binary") || !strcmp(v, "json")))
      json_queries = !strcmp(v, "json");
    else if (!strcmp(a, "--answers") &&
             (!strcmp(v, "sparse") || !strcmp(v, "npy")))
      answer_form = !strcmp(v, "npy") ? LMAP_ANSWER_NPY : LMAP_ANSWER_SPARSE;
    else {
      usage();
      return 2;
    }
    i++;
  }
  if (!url || !idfile || clients < 1 || clients > MAX_CLIENTS || batch < 1 ||
      batch > MAX_BATCH || !(seconds > 0 && seconds <= 3600) ||
      max_requests < 1) {
    usage();
    return 2;
  }
  if (load_ids(idfile) != 0)
    return 1;
  lmap_client_options_init(&client_options);
  client_options.json_queries = json_queries;

  lmap_client *c = NULL;
  char errbuf[LMAP_ERRBUF_SIZE];
  lmap_info info;
  if (lmap_client_new(url, NULL, &c, errbuf) != 0) {
    fprintf(stderr, "bench_batch: %s\n", errbuf);
    return 1;
  }
  if (lmap_client_info(c, &info, NULL) != 0) {
    fprintf(stderr, "bench_batch: info: %s\n", lmap_client_errmsg(c));
    lmap_client_free(c);
    return 1;
  }
  lmap_client_free(c);
  num_classes = info.num_classes;

  worker *w = calloc((size_t)clients, sizeof *w);
  if (!w ||
      pthread_barrier_init(&start_barrier, NULL, (unsigned)clients + 1) != 0) {
    fprintf(stderr, "bench_batch: cannot set up %d clients\n", clients);
    return 1;
  }
  int started = 0;
  for (int i = 0; i < clients; i++) {
    w[i].seed = seed * 1000003u + (uint64_t)i * 7919u;
    if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) != 0)
      break;
    started++;
  }
  if (started < clients) {
    /* The barrier counts clients + 1: without every thread it never opens. */
    fprintf(stderr, "bench_batch: could only start %d of %d threads\n", started,
            clients);
    exit(1);
  }
  pthread_barrier_wait(&start_barrier);
  double cpu0 = cpu_seconds();
  double t0 = 0, end = 0;
  uint64_t requests = 0;
  size_t nlat = 0;
  int failed = 0;
  for (int i = 0; i < clients; i++) {
    pthread_join(w[i].thread, NULL);
    if (w[i].failed) {
      fprintf(stderr, "bench_batch: client %d: %s\n", i, w[i].err);
      failed = 1;
    }
    requests += w[i].requests;
    nlat += w[i].nlat;
    if (i == 0 || w[i].start < t0)
      t0 = w[i].start;
    if (w[i].end > end)
      end = w[i].end;
  }
  double cpu = cpu_seconds() - cpu0;
  double *lat = malloc((nlat ? nlat : 1) * sizeof *lat);
  if (!lat) {
    fprintf(stderr, "bench_batch: out of memory\n");
    return 1;
  }
  size_t k = 0;
  for (int i = 0; i < clients; i++) {
    memcpy(lat + k, w[i].lat_ms, w[i].nlat * sizeof *lat);
    k += w[i].nlat;
    free(w[i].lat_ms);
  }
  qsort(lat, nlat, sizeof *lat, cmp_double);
  double secs = end - t0;
  uint64_t labels = requests * (uint64_t)batch;
  printf(
      "{\"tool\":\"bench_batch\",\"clients\":%d,\"batch\":%d,\"classes\":%u,"
      "\"requests\":%llu,\"labels\":%llu,\"seconds\":%.3f,\"labels_per_s\":%.0f,"
      "\"requests_per_s\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
      "\"cpu_s\":%.3f,\"answers\":\"%s\",\"failed\":%s}\n",
      clients, batch, num_classes, (unsigned long long)requests,
      (unsigned long long)labels, secs, secs > 0 ? (double)labels / secs : 0.0,
      secs > 0 ? (double)requests / secs : 0.0, pct(lat, nlat, 50),
      pct(lat, nlat, 99), nlat ? lat[nlat - 1] : 0.0, cpu,
      answer_form == LMAP_ANSWER_NPY ? "npy" : "sparse",
      failed ? "true" : "false");
  free(lat);
  free(w);
  free(ids);
  free(id_text);
  return failed;
}
