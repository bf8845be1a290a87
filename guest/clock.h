/* The guest's clocks (clock.c), and offload-app --clock, which keeps the system clock on the RTC. */
#ifndef VMSYNTH_CLOCK_H
#define VMSYNTH_CLOCK_H

/* CLOCK_MONOTONIC in microseconds. */
double now_us(void);

/* CLOCK_REALTIME in milliseconds since the epoch. */
long long realtime_ms(void);

/* Keeps the system clock on the RTC; never returns but on error. */
int clock_mode(void);

#endif
