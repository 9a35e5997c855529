/* ui: the store browser's files (see ui.h). */
#include "ui.h"

#include <string.h>

const ui_asset *ui_asset_find(const char *path) {
  for (const ui_asset *a = ui_assets; a->path != NULL; a++)
    if (strcmp(a->path, path) == 0)
      return a;
  return NULL;
}
