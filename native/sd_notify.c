/*
 * sd_notify transport for vmsynth: one datagram to systemd's notification
 * socket. Node has no AF_UNIX datagram sockets, and vmsynth does not link
 * libsystemd, so this addon does the one system call sequence the protocol
 * needs (sd_notify(3)): socket, sendto, close. The message format and every
 * policy (when to send, what a failure means) live in lib/core/sd-notify.ts.
 *
 * JS API:  send(socketPath: string, message: string): void
 *   socketPath  a filesystem path, or "@name" for an abstract socket (the "@"
 *               becomes the leading NUL byte; the name has no trailing NUL).
 *   throws      an Error with code ("ENOENT", ...), errno (negative, as Node's
 *               own errors), syscall and address, like a Node system error.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_MESSAGE (64 * 1024)

/* The errno's symbolic name; glibc >= 2.32 knows them all. */
static const char *errno_name(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char *name = strerrorname_np(err);
  if (name) return name;
#else
  switch (err) {
    case ENOENT: return "ENOENT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOTDIR: return "ENOTDIR";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EINVAL: return "EINVAL";
    case EMSGSIZE: return "EMSGSIZE";
    case EPROTOTYPE: return "EPROTOTYPE";
    case EAGAIN: return "EAGAIN";
    case ENOBUFS: return "ENOBUFS";
    case ENOMEM: return "ENOMEM";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
  }
#endif
  return "EUNKNOWN";
}

/* Throws a Node-style system error: "ENOENT: No such file or directory, sendto '/run/x'". */
static void throw_errno(napi_env env, int err, const char *syscall, const char *address) {
  const char *code = errno_name(err);
  char text[512];
  snprintf(text, sizeof text, "%s: %s, %s '%s'", code, strerror(err), syscall, address);
  napi_value js_code, js_msg, error, v;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &js_code) != napi_ok ||
      napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &js_msg) != napi_ok ||
      napi_create_error(env, js_code, js_msg, &error) != napi_ok) {
    napi_throw_error(env, code, text);
    return;
  }
  if (napi_create_int32(env, -err, &v) == napi_ok) napi_set_named_property(env, error, "errno", v);
  if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v) == napi_ok) napi_set_named_property(env, error, "syscall", v);
  if (napi_create_string_utf8(env, address, NAPI_AUTO_LENGTH, &v) == napi_ok) napi_set_named_property(env, error, "address", v);
  napi_throw(env, error);
}

/* Copies a JS string argument into a fresh NUL-terminated buffer (free() it); NULL after throwing. */
static char *string_arg(napi_env env, napi_value value, const char *what, size_t limit, size_t *length) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_string) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a string", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return NULL;
  }
  size_t len = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &len) != napi_ok) return NULL;
  if (len > limit) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s is longer than %zu bytes", what, limit);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return NULL;
  }
  char *buf = malloc(len + 1);
  if (!buf) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  if (napi_get_value_string_utf8(env, value, buf, len + 1, &len) != napi_ok) {
    free(buf);
    return NULL;
  }
  *length = len;
  return buf;
}

/* Sends one datagram; returns 0 or an errno, naming the failed call in *syscall. */
static int send_datagram(const char *path, size_t path_len, const char *msg, size_t msg_len, const char **syscall) {
  struct sockaddr_un addr;
  int abstract = path[0] == '@';
  *syscall = "sendto"; /* the address is what sendto would reject */
  if (path_len == 0 || (abstract && path_len == 1)) return EINVAL;
  /* A filesystem path keeps its NUL inside sun_path; an abstract name has none. */
  if (path_len >= sizeof addr.sun_path + (abstract ? 1 : 0)) return ENAMETOOLONG;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path, path_len);
  if (abstract) addr.sun_path[0] = '\0';
  socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len + (abstract ? 0 : 1));

  *syscall = "socket";
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  *syscall = "sendto";
  ssize_t sent;
  do {
    sent = sendto(fd, msg, msg_len, MSG_NOSIGNAL, (const struct sockaddr *)&addr, addr_len);
  } while (sent < 0 && errno == EINTR);
  int err = sent < 0 ? errno : (size_t)sent != msg_len ? EMSGSIZE : 0;
  close(fd);
  return err;
}

static napi_value send_notification(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 2) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", "send(socketPath, message) takes two strings");
    return NULL;
  }
  size_t path_len = 0, msg_len = 0;
  char *path = string_arg(env, argv[0], "socketPath", 4096, &path_len);
  if (!path) return NULL;
  char *msg = string_arg(env, argv[1], "message", MAX_MESSAGE, &msg_len);
  if (msg) {
    const char *syscall = "";
    int err = send_datagram(path, path_len, msg, msg_len, &syscall);
    if (err) throw_errno(env, err, syscall, path);
    free(msg);
  }
  free(path);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "send", NAPI_AUTO_LENGTH, send_notification, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "send", fn) != napi_ok) return NULL;
  return exports;
}
