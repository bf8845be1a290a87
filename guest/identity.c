/*
 * What GET /info reports of the guest's identity, so the host can tell
 * clones apart: eth0's MAC, 16 fresh bytes of getrandom, and how many times
 * the kernel has logged a VM fork ("crng reseeded due to virtual machine
 * fork": its vmgenid driver saw a new VM generation ID and reseeded the RNG).
 *
 * The MAC is not changed here: a clone keeps its snapshot's MAC. Changing it
 * in the guest when the generation changes was tried, and wedged the app in
 * 8 of 24 concurrent syntheses (docs/DESIGN-NOTES.md, "Unique clones").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "identity.h"

#define FORK_LINE "crng reseeded due to virtual machine fork"

/* The VM forks the kernel log still holds, read without blocking. */
static int forks_logged(void) {
  int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
  if (fd < 0) return -1;
  int n = 0;
  char rec[8192];
  for (;;) {
    ssize_t r = read(fd, rec, sizeof rec - 1);
    if (r < 0) {
      if (errno == EPIPE || errno == EINTR) continue; /* overwritten records: go on from the next */
      break;                                          /* EAGAIN: the end */
    }
    rec[r] = 0;
    if (strstr(rec, FORK_LINE)) n++;
  }
  close(fd);
  return n;
}

int identity_json(char *out, size_t len) {
  char mac[32] = "";
  int fd = open("/sys/class/net/eth0/address", O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, mac, sizeof mac - 1);
    close(fd);
    mac[n > 0 ? n : 0] = 0;
    char *nl = strchr(mac, '\n');
    if (nl) *nl = 0;
  }
  unsigned char r[16];
  char hex[33] = "";
  size_t got = 0;
  while (got < sizeof r) {
    ssize_t n = getrandom(r + got, sizeof r - got, 0);
    if (n < 0) { if (errno == EINTR) continue; break; }
    got += (size_t)n;
  }
  if (got == sizeof r)
    for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", r[i]);
  return snprintf(out, len, "\"mac\":\"%s\",\"random\":\"%s\",\"vmForks\":%d", mac, hex, forks_logged());
}
