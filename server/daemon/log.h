/* log: lmapd's structured log, one JSON object per line on stderr. */
#ifndef LMAPD_LOG_H
#define LMAPD_LOG_H

/* Writes {"ts":..,"event":"<event>",<fields>}; `fields` is a printf format
 * producing JSON members (without braces), or NULL. In text mode the line
 * is "<ts> <event> <fields>" instead, for people reading a terminal. */
void log_event(const char *event, const char *fields, ...)
    __attribute__((format(printf, 2, 3)));

/* `text` as a JSON string literal (quoted and escaped by jansson), for a
 * field of a log line: malloc'd (free it), or NULL when out of memory.
 * Text from a client or a file goes through it, never straight into
 * log_event's format. */
char *log_quote(const char *text);

/* log_event(event) with one field, "message": `message`, quoted. */
void log_message(const char *event, const char *message);

/* Selects the text format (default: JSON lines). Call before threads. */
void log_set_text(int text);

#endif /* LMAPD_LOG_H */
