/*
 * State that offload requests build, so a host can tell a VM that went on
 * (a handoff) from a fresh one resumed from the same overlay:
 *
 *   GET /state?add=N&touch_mb=M&disk_mb=D&disk_off_mb=O
 *
 * With add: counts the request and chains N into a 64-bit value
 * (chain = (rotl(chain, 5) ^ N) * K). With touch_mb: writes one word derived
 * from the chain into every page of the first M MiB of the working set (the
 * pages the VM dirties). With disk_mb: writes D MiB derived from the chain to
 * the data disk at O MiB (default 56), O_DIRECT, then fdatasync. Replies
 * {"count":C,"chain":"hex"}; GET /run then digests what was written.
 */
#define _GNU_SOURCE
#include "app-state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)
#define STATE_K 0x9E3779B97F4A7C15ULL

static uint64_t chain = 0;
static long count = 0;

static int write_disk(long off_mb, long mb, char *err, size_t errlen, const char *disk_path) {
  int fd = open(disk_path, O_WRONLY | O_DIRECT);
  if (fd < 0) { snprintf(err, errlen, "open %s: %s", disk_path, strerror(errno)); return -1; }
  uint64_t *buf;
  if (posix_memalign((void **)&buf, 4096, MIB)) { close(fd); snprintf(err, errlen, "out of memory"); return -1; }
  for (long i = 0; i < mb; i++) {
    for (size_t w = 0; w < MIB / 8; w++) buf[w] = chain ^ ((uint64_t)(off_mb + i) << 32) ^ w;
    if (pwrite(fd, buf, MIB, (off_t)(off_mb + i) * MIB) != (ssize_t)MIB) {
      snprintf(err, errlen, "write %s at %ld MiB: %s", disk_path, off_mb + i, strerror(errno));
      free(buf); close(fd); return -1;
    }
  }
  int r = fdatasync(fd);
  free(buf);
  close(fd);
  if (r < 0) { snprintf(err, errlen, "fdatasync %s: %s", disk_path, strerror(errno)); return -1; }
  return 0;
}

int app_state(long add, long touch_mb, long disk_mb, long disk_off_mb, uint8_t *ws, size_t ws_bytes,
              const char *disk_path, char *body, size_t n) {
  if (touch_mb < 0 || (size_t)touch_mb * MIB > ws_bytes || disk_mb < 0 || disk_off_mb < 0) {
    snprintf(body, n, "{\"error\":\"touch_mb must be 0..%zu, disk_mb and disk_off_mb >= 0\"}", ws_bytes / MIB);
    return 400;
  }
  if (add >= 0) {
    count++;
    chain = (((chain << 5) | (chain >> 59)) ^ (uint64_t)add) * STATE_K;
  }
  for (size_t off = 0; off < (size_t)touch_mb * MIB; off += 4096) ((uint64_t *)(ws + off))[1] = chain ^ off;
  char err[256];
  if (disk_mb > 0 && write_disk(disk_off_mb, disk_mb, err, sizeof err, disk_path) < 0) {
    snprintf(body, n, "{\"error\":\"%s\"}", err);
    return 500;
  }
  snprintf(body, n, "{\"count\":%ld,\"chain\":\"%016llx\"}", count, (unsigned long long)chain);
  return 200;
}
