/*
 * fileio: the two file operations that writing a file safely needs and
 * that the store's writer and `lmap pull` share.
 */
#ifndef LMAP_FILEIO_H
#define LMAP_FILEIO_H

#include <stddef.h>

/* Writes all `n` bytes to `fd`, retrying short writes and EINTR. Returns 0,
 * or -1 with errno set. */
int file_write_all(int fd, const void *buf, size_t n);

/* Syncs the directory holding `path`, so that a rename into it survives a
 * crash. Best effort: some file systems refuse fsync on directories. */
void file_sync_dir(const char *path);

#endif /* LMAP_FILEIO_H */
