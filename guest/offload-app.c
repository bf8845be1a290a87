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
 *   GET /state?add=N&touch_mb=M&disk_mb=D&disk_off_mb=O -> state that requests
 *       build (a count, a chain of values, pages and disk blocks written):
 *       app-state.c. A VM that went on has it; a fresh one does not.
 *
 *   GET /info also carries the guest's wall clock (unixMs), so the host can
 *   check that a resumed VM's clock is right, and eth0's MAC, 16 fresh bytes
 *   of getrandom and the VM forks the kernel logged (mac, random, vmForks:
 *   identity.c), so it can tell clones apart.
 *
 * With --clock it keeps the guest's system clock on the RTC instead (see
 * clock_mode in clock.c): a VM resumed from a snapshot starts with the clock it
 * had when the snapshot was taken.
 *
 * With --agent it is instead the customization agent (no working set), for
 * `vmsynth overlay create`; the host forwards its port only while it
 * customizes a VM:
 *
 *   PUT  /file?path=P&mode=M   (body: the file) -> writes P with mode M (octal)
 *   POST /exec                 (body: a script) -> runs it with /bin/sh; replies
 *       {"status":N} with the script's output (stdout+stderr, last 64 KiB) in
 *       the X-Output-Bytes bytes after the JSON line.
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "app-state.h"
#include "clock.h"
#include "identity.h"

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

static void reply_with_output(int c, int status, const char *json, const char *out, size_t outlen) {
  char head[320];
  size_t jl = strlen(json);
  int n = snprintf(head, sizeof head,
                   "HTTP/1.0 %d %s\r\nContent-Type: application/octet-stream\r\nX-Output-Bytes: %zu\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                   status, status == 200 ? "OK" : "Error", outlen, jl + 1 + outlen);
  if (write(c, head, n) < 0 || write(c, json, jl) < 0 || write(c, "\n", 1) < 0 || (outlen && write(c, out, outlen) < 0)) { /* gone */ }
}

/* Reads the request body: `have` bytes already read after the headers, Content-Length in total. */
static char *read_body(int c, const char *req, const char *body_start, size_t have, size_t *len) {
  const char *cl = strcasestr(req, "Content-Length:");
  size_t want = cl ? strtoul(cl + 15, NULL, 10) : 0;
  if (want > 256 * MIB) return NULL;
  char *b = malloc(want + 1);
  if (!b) return NULL;
  if (have > want) have = want;
  memcpy(b, body_start, have);
  while (have < want) {
    ssize_t n = read(c, b + have, want - have);
    if (n <= 0) { free(b); return NULL; }
    have += n;
  }
  b[want] = 0;
  *len = want;
  return b;
}

static void url_decode(char *s) {
  char *o = s;
  for (; *s; s++) {
    if (*s == '%' && s[1] && s[2]) { char h[3] = { s[1], s[2], 0 }; *o++ = (char)strtol(h, NULL, 16); s += 2; }
    else *o++ = *s;
  }
  *o = 0;
}

static void query_str(const char *query, const char *key, char *out, size_t outlen) {
  size_t klen = strlen(key);
  out[0] = 0;
  for (const char *p = query; p && *p; ) {
    if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
      const char *v = p + klen + 1, *e = strchr(v, '&');
      size_t n = e ? (size_t)(e - v) : strlen(v);
      if (n >= outlen) n = outlen - 1;
      memcpy(out, v, n);
      out[n] = 0;
      url_decode(out);
      return;
    }
    p = strchr(p, '&');
    if (p) p++;
  }
}

static void agent_exec(int c, const char *script, size_t len) {
  char path[] = "/tmp/vmsynth-script-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0 || write(fd, script, len) != (ssize_t)len) { reply(c, 500, "{\"error\":\"cannot write the script\"}"); if (fd >= 0) close(fd); return; }
  close(fd);
  int p[2];
  if (pipe(p) < 0) { reply(c, 500, "{\"error\":\"pipe\"}"); return; }
  pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1); dup2(p[1], 2); close(p[0]); close(p[1]);
    execl("/bin/sh", "sh", path, (char *)NULL);
    _exit(127);
  }
  close(p[1]);
  static char out[64 * 1024];
  size_t outlen = 0;
  char buf[4096];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof buf)) > 0) {
    if (outlen + n > sizeof out) { size_t drop = outlen + n - sizeof out; if (drop > outlen) drop = outlen; memmove(out, out + drop, outlen - drop); outlen -= drop; }
    size_t take = (size_t)n > sizeof out ? sizeof out : (size_t)n;
    memcpy(out + outlen, buf + n - take, take);
    outlen += take;
  }
  close(p[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  unlink(path);
  char json[64];
  snprintf(json, sizeof json, "{\"status\":%d}", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  reply_with_output(c, 200, json, out, outlen);
}

static void agent_put(int c, const char *query, const char *data, size_t len) {
  char path[512], mode[16];
  query_str(query, "path", path, sizeof path);
  query_str(query, "mode", mode, sizeof mode);
  if (path[0] != '/') { reply(c, 400, "{\"error\":\"path must be absolute\"}"); return; }
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode[0] ? (mode_t)strtol(mode, NULL, 8) : 0644);
  if (fd < 0) { char b[600]; snprintf(b, sizeof b, "{\"error\":\"open: %s\"}", strerror(errno)); reply(c, 500, b); return; }
  size_t done = 0;
  while (done < len) { ssize_t n = write(fd, data + done, len - done); if (n <= 0) break; done += n; }
  if (mode[0]) fchmod(fd, (mode_t)strtol(mode, NULL, 8));
  close(fd);
  reply(c, done == len ? 200 : 500, done == len ? "{\"ok\":true}" : "{\"error\":\"short write\"}");
}

static int agent_mode = 0;

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
  char *hend = strstr(req, "\r\n\r\n");
  size_t hlen = hend ? (size_t)(hend - req) + 4 : got;
  char method[8], target[1024];
  if (sscanf(req, "%7s %1023s", method, target) != 2) { reply(c, 400, "{\"error\":\"bad request\"}"); return; }
  char *query = strchr(target, '?');
  if (query) *query++ = 0;
  char body[512];
  if (agent_mode && (strcmp(target, "/exec") == 0 || strcmp(target, "/file") == 0)) {
    size_t len = 0;
    char *data = read_body(c, req, req + hlen, got - hlen, &len);
    if (!data) { reply(c, 400, "{\"error\":\"bad body\"}"); return; }
    if (target[1] == 'e') agent_exec(c, data, len);
    else agent_put(c, query, data, len);
    free(data);
  } else if (strcmp(target, "/health") == 0) {
    reply(c, 200, "{\"ok\":true}");
  } else if (strcmp(target, "/info") == 0) {
    char id[128];
    identity_json(id, sizeof id);
    snprintf(body, sizeof body, "{\"wsMb\":%zu,\"uptimeMs\":%.0f,\"unixMs\":%lld,%s}", ws_bytes / MIB, (now_us() - started) / 1e3, realtime_ms(), id);
    reply(c, 200, body);
  } else if (strcmp(target, "/state") == 0) {
    int status = app_state(query_num(query, "add", -1), query_num(query, "touch_mb", 0), query_num(query, "disk_mb", 0),
                           query_num(query, "disk_off_mb", 56), ws, ws_bytes, disk_path, body, sizeof body);
    reply(c, status, body);
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
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--agent")) { agent_mode = 1; ws_mb = 0; continue; }
    if (!strcmp(argv[i], "--clock")) return clock_mode();
    if (i + 1 >= argc) break;
    if (!strcmp(argv[i], "--port")) port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--ws-mb")) ws_mb = atol(argv[++i]);
    else if (!strcmp(argv[i], "--disk")) disk_path = argv[++i];
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
