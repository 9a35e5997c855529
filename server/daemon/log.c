/* log: JSON lines on stderr (see log.h). */
#include "log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int text_mode;

char *log_quote(const char *text) {
  json_t *j = json_string(text);
  char *q = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
  json_decref(j);
  return q;
}

void log_message(const char *event, const char *message) {
  char *q = log_quote(message);
  log_event(event, "\"message\":%s", q ? q : "\"?\"");
  free(q);
}

void log_set_text(int text) {
  text_mode = text;
}

void log_event(const char *event, const char *fields, ...) {
  char ts[40];
  struct timespec now;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);
  char body[1024] = "";
  if (fields) {
    va_list ap;
    va_start(ap, fields);
    vsnprintf(body, sizeof body, fields, ap);
    va_end(ap);
  }
  /* One fprintf per line so that lines from threads do not interleave. */
  if (text_mode)
    fprintf(stderr, "%s %s %s\n", ts, event, body);
  else
    fprintf(stderr, "{\"ts\":\"%s\",\"event\":\"%s\"%s%s}\n", ts, event,
            body[0] ? "," : "", body);
}
