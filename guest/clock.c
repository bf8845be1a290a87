/*
 * offload-app --clock (see clock_mode below), and the guest's clocks as the
 * app reads them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

long long realtime_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
  struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) { }
}

/* The RTC's time in whole seconds since the epoch (QEMU's RTC follows the host's clock). */
static int rtc_seconds(long long *out) {
  char b[32];
  int fd = open("/sys/class/rtc/rtc0/since_epoch", O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n = read(fd, b, sizeof b - 1);
  close(fd);
  if (n <= 0) return -1;
  b[n] = 0;
  *out = strtoll(b, NULL, 10);
  return 0;
}

/* Sets the system clock to `ms` since the epoch. */
static void set_realtime_ms(long long ms) {
  struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
  clock_settime(CLOCK_REALTIME, &ts);
}

/*
 * Waits (up to ~1.2 s) for the RTC's next tick after second `r`, caught
 * between two reads at most 50 ms apart, and sets the clock to the middle of
 * that second, plus the guest's monotonic time since the middle of those
 * reads: that time runs on while the vCPU waits (say, for a page of an
 * early-started VM's memory), so a stall between the read and the setting
 * does not put the clock behind. Returns 1 when it set the clock, 0 when the
 * reads were too far apart (a loaded host) or failed.
 */
static int set_on_tick(long long r) {
  double prev = now_us();
  for (int i = 0; i < 600; i++) {
    long long next;
    sleep_ms(2);
    int ok = rtc_seconds(&next) == 0;
    double at = now_us();
    if (ok && next != r) {
      if (at - prev > 50000) return 0;
      set_realtime_ms(next * 1000 + 500 + (long long)((now_us() - (prev + at) / 2) / 1000));
      return 1;
    }
    prev = at;
  }
  return 0;
}

/*
 * --clock: a resumed VM's system clock is the one it had when its snapshot
 * was taken (the kernel set it from the RTC at boot, and time stood still
 * while the VM was saved), but QEMU's RTC reads the host's time. Every 250 ms
 * this compares the two; when they differ by more than 1.5 s it sets the
 * clock from the RTC at once, then again on the RTC's next tick
 * (set_on_tick), trying on later rounds until a tick is caught.
 *
 * The RTC is good to half a second, no better: it counts whole seconds, and
 * its ticks are not on the host's second boundaries (QEMU starts it at the
 * host's whole second when the base VM is created, so it lags the host by
 * that instant's fraction of a second, a different one per base: measured
 * 17 to 922 ms on six). Not knowing that lag, the clock is set to the middle
 * of the RTC's second: within 0.5 s of the host's.
 */
int clock_mode(void) {
  long long r;
  if (rtc_seconds(&r) < 0) { perror("offload-app --clock: /sys/class/rtc/rtc0/since_epoch"); return 1; }
  printf("offload-app: keeping the clock on the RTC\n");
  fflush(stdout);
  int pending = 0; /* set from a read, not yet on a tick */
  for (;; sleep_ms(250)) {
    if (rtc_seconds(&r) < 0) continue;
    double read_at = now_us();
    long long drift = (r * 1000 + 500) - realtime_ms();
    if (drift <= -1500 || drift >= 1500) {
      set_realtime_ms(r * 1000 + 500 + (long long)((now_us() - read_at) / 1000));
      printf("offload-app: the clock was %lld ms off the RTC; set from it\n", drift);
      fflush(stdout);
      pending = 1;
    }
    if (pending && set_on_tick(r)) pending = 0;
  }
}
