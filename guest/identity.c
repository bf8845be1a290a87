/*
 * offload-app --identity: gives a clone its own MAC address.
 *
 * Every VM synthesized from one overlay starts from the same memory, so each
 * holds the MAC its snapshot had (virtio-net's saved state carries it, and the
 * guest driver read it at probe time). The host cannot change it from outside.
 *
 * What the guest can see is the VM generation ID: vmsynth gives each resumed
 * VM a fresh one (QEMU's vmgenid device). The kernel's vmgenid driver notices
 * the change, reseeds the RNG and logs "crng reseeded due to virtual machine
 * fork". This process follows the kernel log (/dev/kmsg) and, on that line,
 * sets a random locally administered MAC on eth0, drawn from the reseeded RNG.
 * arp_notify=1 makes the kernel announce it (gratuitous ARP), so QEMU's
 * user-mode network sends to the new address at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "identity.h"

#define IFACE "eth0"
#define FORK_LINE "crng reseeded due to virtual machine fork"

static int random_bytes(unsigned char *out, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = getrandom(out + got, n - got, 0);
    if (r < 0) { if (errno == EINTR) continue; return -1; }
    got += (size_t)r;
  }
  return 0;
}

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) return -1;
  ssize_t n = write(fd, text, strlen(text));
  close(fd);
  return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* A random unicast, locally administered MAC on eth0. */
static int new_mac(char *shown, size_t len) {
  unsigned char mac[6];
  if (random_bytes(mac, sizeof mac) < 0) return -1;
  mac[0] = (unsigned char)((mac[0] & 0xfe) | 0x02);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, IFACE, IFNAMSIZ - 1);
  ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
  memcpy(ifr.ifr_hwaddr.sa_data, mac, sizeof mac);
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  if (s < 0) return -1;
  int rc = ioctl(s, SIOCSIFHWADDR, &ifr);
  close(s);
  snprintf(shown, len, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
  return rc;
}

int identity_mode(void) {
  if (write_file("/proc/sys/net/ipv4/conf/" IFACE "/arp_notify", "1\n") < 0)
    perror("offload-app --identity: arp_notify");
  int kmsg = open("/dev/kmsg", O_RDONLY);
  if (kmsg < 0) { perror("offload-app --identity: /dev/kmsg"); return 1; }
  printf("offload-app: a new VM generation will get a new MAC\n");
  fflush(stdout);
  char rec[8192];
  for (;;) {
    ssize_t n = read(kmsg, rec, sizeof rec - 1);
    if (n < 0) {
      if (errno == EINTR || errno == EPIPE) continue; /* EPIPE: records were overwritten; go on from the next */
      perror("offload-app --identity: read /dev/kmsg");
      return 1;
    }
    rec[n] = 0;
    if (!strstr(rec, FORK_LINE)) continue;
    char shown[32];
    if (new_mac(shown, sizeof shown) < 0) perror("offload-app --identity: SIOCSIFHWADDR");
    else printf("offload-app: new VM generation; MAC now %s\n", shown);
    fflush(stdout);
  }
}

int identity_json(char *out, size_t len) {
  char mac[32] = "";
  int fd = open("/sys/class/net/" IFACE "/address", O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, mac, sizeof mac - 1);
    close(fd);
    mac[n > 0 ? n : 0] = 0;
    char *nl = strchr(mac, '\n');
    if (nl) *nl = 0;
  }
  unsigned char r[16];
  char hex[33] = "";
  if (random_bytes(r, sizeof r) == 0)
    for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", r[i]);
  return snprintf(out, len, "\"mac\":\"%s\",\"random\":\"%s\"", mac, hex);
}
