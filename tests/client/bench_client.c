/*
 * bench_client: labels per second through liblmap, measured, not asserted.
 *
 * A 10,000-record synthetic store served by a 2-thread lmapd; each client
 * thread has its own handle and calls lmap_client_labels with batches of
 * 256 G = 1 queries (random ids and boxes) for about 3 s. Printed for 1 and
 * for 2 client threads. The exit code is 1 only when a call fails: a
 * figure from failing calls would mean nothing.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "lmap/client.h"

#define BATCH 256
#define SECONDS 3.0
#define RECORDS "10000"

static char **ids;
static size_t nids;
static const char *url;
static uint32_t C;

typedef struct worker {
  pthread_t thread;
  uint64_t seed;
  double seconds;
  uint64_t labels;
  int failed;
} worker;

static double urand(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static void *worker_main(void *arg) {
  worker *w = arg;
  lmap_client *c = NULL;
  char err[LMAP_ERRBUF_SIZE];
  lmap_query *q = calloc(BATCH, sizeof *q);
  float *out = malloc((size_t)BATCH * C * sizeof *out);
  if (!q || !out || lmap_client_new(url, NULL, &c, err) != 0) {
    w->failed = 1;
    goto out;
  }
  double t0 = th_now(), t = t0;
  while (t - t0 < w->seconds) {
    for (int i = 0; i < BATCH; i++) {
      double bw = 0.1 + 0.9 * urand(&w->seed), bh = 0.1 + 0.9 * urand(&w->seed);
      double x0 = (1 - bw) * urand(&w->seed), y0 = (1 - bh) * urand(&w->seed);
      q[i].id = ids[(size_t)(urand(&w->seed) * (double)nids) % nids];
      q[i].box[0] = x0;
      q[i].box[1] = y0;
      q[i].box[2] = x0 + bw < 1 ? x0 + bw : 1;
      q[i].box[3] = y0 + bh < 1 ? y0 + bh : 1;
      q[i].flip = urand(&w->seed) < 0.5;
    }
    int rc = lmap_client_labels(c, q, BATCH, NULL, out, (size_t)BATCH * C);
    if (rc != 0) {
      fprintf(stderr, "bench_client: %s\n", lmap_client_errmsg(c));
      w->failed = 1;
      break;
    }
    w->labels += BATCH;
    t = th_now();
  }
  w->seconds = t - t0;
out:
  lmap_client_free(c);
  free(q);
  free(out);
  return NULL;
}

static int measure(int threads) {
  worker w[8];
  memset(w, 0, sizeof w);
  for (int i = 0; i < threads; i++) {
    w[i].seed = 1234 + (uint64_t)i * 7919;
    w[i].seconds = SECONDS;
    if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) != 0)
      return -1;
  }
  uint64_t labels = 0;
  double longest = 0;
  int failed = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(w[i].thread, NULL);
    labels += w[i].labels;
    failed |= w[i].failed;
    if (w[i].seconds > longest)
      longest = w[i].seconds;
  }
  if (failed)
    return -1;
  printf("bench_client: %d client thread%s, batch %d, G=1, C=%u: %.0f labels/s "
         "(%llu labels in %.2f s)\n",
         threads, threads > 1 ? "s" : "", BATCH, C, (double)labels / longest,
         (unsigned long long)labels, longest);
  return 0;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  th_init();
  char store[600], idpath[700];
  snprintf(store, sizeof store, "%s/bench-%ld.lmap", th_tmp(), (long)getpid());
  snprintf(idpath, sizeof idpath, "%s/bench-ids-%ld", th_tmp(), (long)getpid());
  const char *synth[] = {th_lmap(), "synth",         "-o", store, "-n", RECORDS,
                         "-f",      "--no-progress", NULL};
  const char *list[] = {th_lmap(), "ids", store, NULL};
  if (th_run(synth, NULL) != 0 || th_run(list, idpath) != 0) {
    fprintf(stderr, "bench_client: cannot make the store\n");
    return 1;
  }
  char *text = th_read_file(idpath, NULL);
  remove(idpath);
  ids = malloc(10001 * sizeof *ids);
  for (char *l = text ? strtok(text, "\n") : NULL; l && ids && nids < 10001;
       l = strtok(NULL, "\n"))
    ids[nids++] = l;
  const char *extra[] = {"--threads", "2", NULL};
  th_daemon *d = nids ? th_start(store, extra) : NULL;
  int rc = 1;
  if (d) {
    url = d->url;
    lmap_client *c = NULL;
    lmap_info info;
    char err[LMAP_ERRBUF_SIZE];
    if (lmap_client_new(url, NULL, &c, err) == 0 &&
        lmap_client_info(c, &info, NULL) == 0) {
      C = info.num_classes;
      rc = measure(1) == 0 && measure(2) == 0 ? 0 : 1;
    }
    lmap_client_free(c);
    th_stop(d, 30);
  }
  if (rc == 0)
    th_remove_logs();
  free(ids);
  free(text);
  remove(store);
  return rc;
}
