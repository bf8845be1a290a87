/* offload-app --identity (identity.c): a clone's own MAC, and what /info reports of it. */
#ifndef VMSYNTH_IDENTITY_H
#define VMSYNTH_IDENTITY_H
#include <stddef.h>

/* Follows the kernel log; on each new VM generation, sets a random MAC on eth0. Never returns but on error. */
int identity_mode(void);

/* Writes `"mac":"..","random":".."` (eth0's MAC, 16 bytes from getrandom in hex) into out. */
int identity_json(char *out, size_t len);

#endif
