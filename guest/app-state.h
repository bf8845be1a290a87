/* The state that offload requests build in the test app: see app-state.c. */
#ifndef VMSYNTH_APP_STATE_H
#define VMSYNTH_APP_STATE_H
#include <stddef.h>
#include <stdint.h>

/* GET /state?add=N&touch_mb=M&disk_mb=D&disk_off_mb=O: writes the JSON reply into body; returns the HTTP status. */
int app_state(long add, long touch_mb, long disk_mb, long disk_off_mb, uint8_t *ws, size_t ws_bytes,
              const char *disk_path, char *body, size_t n);

#endif
