/* log: lmapd's structured log, one JSON object per line on stderr. */
#ifndef LMAPD_LOG_H
#define LMAPD_LOG_H

/* Writes {"ts":..,"event":"<event>",<fields>}; `fields` is a printf format
 * producing JSON members (without braces), or NULL. */
void log_event(const char *event, const char *fields, ...)
    __attribute__((format(printf, 2, 3)));

#endif /* LMAPD_LOG_H */
