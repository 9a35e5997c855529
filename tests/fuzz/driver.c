/*
 * driver: runs a fuzz target, built without libFuzzer, once on every file
 * named on the command line or found in a folder named there (not
 * recursively). A crash or a sanitizer report fails the run, so the
 * corpus and every regression input are checked by each ordinary build.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    perror(path);
    return 1;
  }
  size_t cap = 4096, len = 0, got;
  uint8_t *buf = malloc(cap);
  while (buf != NULL && (got = fread(buf + len, 1, cap - len, f)) > 0) {
    len += got;
    if (len == cap) {
      uint8_t *p = realloc(buf, cap *= 2);
      if (p == NULL)
        free(buf);
      buf = p;
    }
  }
  int bad = buf == NULL || ferror(f);
  fclose(f);
  if (bad) {
    fprintf(stderr, "%s: cannot read\n", path);
    free(buf);
    return 1;
  }
  /* An exact-size copy, so that a read past the input is a heap overflow
   * under ASan, as it is under libFuzzer. */
  uint8_t *exact = malloc(len ? len : 1);
  if (exact == NULL)
    abort();
  memcpy(exact, buf, len);
  free(buf);
  LLVMFuzzerTestOneInput(exact, len);
  free(exact);
  return 0;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
  size_t files = 0;
  int failed = 0;
  for (int i = 1; i < argc; i++) {
    struct stat sb;
    if (stat(argv[i], &sb) != 0) {
      /* A regression folder may not exist yet: nothing has crashed. */
      continue;
    }
    if (!S_ISDIR(sb.st_mode)) {
      failed |= run_file(argv[i]);
      files++;
      continue;
    }
    DIR *dh = opendir(argv[i]);
    if (dh == NULL) {
      perror(argv[i]);
      return 1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(dh)) != NULL) {
      if (e->d_name[0] == '.')
        continue;
      if (n == cap && (names = realloc(names, (cap = cap ? 2 * cap : 64) *
                                                  sizeof *names)) == NULL)
        abort();
      size_t len = strlen(argv[i]) + strlen(e->d_name) + 2;
      if ((names[n] = malloc(len)) == NULL)
        abort();
      snprintf(names[n++], len, "%s/%s", argv[i], e->d_name);
    }
    closedir(dh);
    /* In name order, so that a failure is reproducible by its position. */
    qsort(names, n, sizeof *names, by_name);
    for (size_t j = 0; j < n; j++) {
      failed |= run_file(names[j]);
      free(names[j]);
    }
    free(names);
    files += n;
  }
  printf("%s: %zu inputs ran\n", argv[0], files);
  return failed || files == 0;
}
