/*
 * offload-app: the tiny offload server inside vmsynth's test guest.
 *
 * It owns a working set of memory filled at start with a deterministic
 * pseudo-random pattern, and answers HTTP/1.0 requests on one TCP port:
 *
 *   GET /health                                   -> {"ok":true}
 *   GET /info                                     -> working-set size, uptime
 *   GET /run?mem_mb=A&disk_mb=B&disk_off_mb=C     -> touches A MiB of the
 *       working set and reads B MiB of the data disk (O_DIRECT, from C MiB),
 *       and returns a digest of each, so the host can check that the bytes
 *       the guest saw after a resume are the bytes it had before.
 *
 * The digest is the one lib/guest/app-digest.ts computes on the host:
 * h = 0; for each little-endian u64 word w: h = rotl(h, 5) ^ w; h *= K.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)
#define DIGEST_K 0x9E3779B97F4A7C15ULL

static uint8_t *ws;
static size_t ws_bytes;
static const char *disk_path = "/dev/vda";

static uint64_t digest(uint64_t h, const uint8_t *p, size_t n) {
  const uint64_t *w = (const uint64_t *)p;
  for (size_t i = 0; i < n / 8; i++) {
    h = ((h << 5) | (h >> 59)) ^ w[i];
    h *= DIGEST_K;
  }
  return h;
}

/* xorshift64*, seeded with a constant: the host regenerates the same bytes. */
static void fill_pattern(uint8_t *p, size_t n) {
  uint64_t x = 0x766d73796e7468ULL; /* "vmsynth" */
  uint64_t *w = (uint64_t *)p;
  for (size_t i = 0; i < n / 8; i++) {
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    w[i] = x * 0x2545F4914F6CDD1DULL;
  }
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static long query_num(const char *query, const char *key, long dflt) {
  size_t klen = strlen(key);
  for (const char *p = query; p && *p; ) {
    if (strncmp(p, key, klen) == 0 && p[klen] == '=') return strtol(p + klen + 1, NULL, 10);
    p = strchr(p, '&');
    if (p) p++;
  }
  return dflt;
}

static int read_disk(long off_mb, long mb, uint64_t *h, char *err, size_t errlen) {
  *h = 0;
  if (mb <= 0) return 0;
  int fd = open(disk_path, O_RDONLY | O_DIRECT);
  if (fd < 0) { snprintf(err, errlen, "open %s: %s", disk_path, strerror(errno)); return -1; }
  void *buf;
  if (posix_memalign(&buf, 4096, MIB)) { close(fd); snprintf(err, errlen, "out of memory"); return -1; }
  for (long i = 0; i < mb; i++) {
    ssize_t n = pread(fd, buf, MIB, (off_t)(off_mb + i) * MIB);
    if (n != (ssize_t)MIB) {
      snprintf(err, errlen, "read %s at %ld MiB: %s", disk_path, off_mb + i, n < 0 ? strerror(errno) : "short read");
      free(buf); close(fd); return -1;
    }
    *h = digest(*h, buf, MIB);
  }
  free(buf);
  close(fd);
  return 0;
}

static void reply(int c, int status, const char *body) {
  char head[256];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.0 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                   status, status == 200 ? "OK" : "Error", strlen(body));
  if (write(c, head, n) < 0 || write(c, body, strlen(body)) < 0) { /* client went away */ }
}

static void handle(int c, double started) {
  char req[2048];
  size_t got = 0;
  while (got < sizeof req - 1) {
    ssize_t n = read(c, req + got, sizeof req - 1 - got);
    if (n <= 0) break;
    got += n;
    req[got] = 0;
    if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n")) break;
  }
  req[got] = 0;
  char method[8], target[1024];
  if (sscanf(req, "%7s %1023s", method, target) != 2) { reply(c, 400, "{\"error\":\"bad request\"}"); return; }
  char *query = strchr(target, '?');
  if (query) *query++ = 0;
  char body[512];
  if (strcmp(target, "/health") == 0) {
    reply(c, 200, "{\"ok\":true}");
  } else if (strcmp(target, "/info") == 0) {
    snprintf(body, sizeof body, "{\"wsMb\":%zu,\"uptimeMs\":%.0f}", ws_bytes / MIB, (now_us() - started) / 1e3);
    reply(c, 200, body);
  } else if (strcmp(target, "/run") == 0) {
    long mem_mb = query_num(query, "mem_mb", 0), disk_mb = query_num(query, "disk_mb", 0);
    long disk_off = query_num(query, "disk_off_mb", 0);
    if (mem_mb < 0 || (size_t)mem_mb * MIB > ws_bytes || disk_mb < 0 || disk_off < 0) {
      snprintf(body, sizeof body, "{\"error\":\"mem_mb must be 0..%zu, disk_mb and disk_off_mb >= 0\"}", ws_bytes / MIB);
      reply(c, 400, body);
      return;
    }
    double t = now_us();
    uint64_t mh = digest(0, ws, (size_t)mem_mb * MIB), dh;
    char err[256];
    if (read_disk(disk_off, disk_mb, &dh, err, sizeof err) < 0) {
      snprintf(body, sizeof body, "{\"error\":\"%s\"}", err);
      reply(c, 500, body);
      return;
    }
    snprintf(body, sizeof body,
             "{\"memMb\":%ld,\"memDigest\":\"%016llx\",\"diskMb\":%ld,\"diskOffMb\":%ld,\"diskDigest\":\"%016llx\",\"workUs\":%.0f}",
             mem_mb, (unsigned long long)mh, disk_mb, disk_off, (unsigned long long)dh, now_us() - t);
    reply(c, 200, body);
  } else {
    reply(c, 404, "{\"error\":\"not found\"}");
  }
}

int main(int argc, char **argv) {
  int port = 8000;
  long ws_mb = 16;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--ws-mb")) ws_mb = atol(argv[i + 1]);
    else if (!strcmp(argv[i], "--disk")) disk_path = argv[i + 1];
  }
  double started = now_us();
  ws_bytes = (size_t)ws_mb * MIB;
  ws = mmap(NULL, ws_bytes ? ws_bytes : 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (ws == MAP_FAILED) { perror("offload-app: mmap"); return 1; }
  fill_pattern(ws, ws_bytes);

  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY) };
  if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) { perror("offload-app: listen"); return 1; }
  printf("offload-app: listening on %d, working set %ld MiB\n", port, ws_mb);
  fflush(stdout);
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    handle(c, started);
    close(c);
  }
}
