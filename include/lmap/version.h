/* lmap version, shared by the daemon, the CLI and the client library. */
#ifndef LMAP_VERSION_H
#define LMAP_VERSION_H

#define LMAP_VERSION_MAJOR 0
#define LMAP_VERSION_MINOR 1
#define LMAP_VERSION_PATCH 0

#define LMAP__STR2(x) #x
#define LMAP__STR(x) LMAP__STR2(x)
#define LMAP_VERSION_STRING                                                    \
  LMAP__STR(LMAP_VERSION_MAJOR)                                                \
  "." LMAP__STR(LMAP_VERSION_MINOR) "." LMAP__STR(LMAP_VERSION_PATCH)

#endif /* LMAP_VERSION_H */
