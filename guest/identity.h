/* What /info reports of the guest's identity (identity.c). */
#ifndef VMSYNTH_IDENTITY_H
#define VMSYNTH_IDENTITY_H
#include <stddef.h>

/* Writes `"mac":"..","random":"..","vmForks":N` into out: eth0's MAC, 16 bytes of getrandom in hex, and the VM forks the kernel logged. */
int identity_json(char *out, size_t len);

#endif
