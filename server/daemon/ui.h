/*
 * ui: the store browser's files (server/daemon/ui/), compiled into lmapd by
 * cmake/embed.cmake so that the page needs nothing from outside the daemon.
 * lmapd serves them at / and /ui/... (api.c), unless --no-ui.
 */
#ifndef LMAP_UI_H
#define LMAP_UI_H

#include <stddef.h>

typedef struct ui_asset {
  const char *path;         /* the URL path: "/", "/ui/app.js", ... */
  const char *content_type; /* static string */
  const unsigned char *data;
  size_t len;
} ui_asset;

/* The asset at URL path `path`, or NULL. */
const ui_asset *ui_asset_find(const char *path);

/* Every asset, ended by one whose path is NULL (generated). */
extern const ui_asset ui_assets[];

#endif /* LMAP_UI_H */
