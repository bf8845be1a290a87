/**
 * The test guest's wall clock against the host's: a VM resumed from a
 * snapshot must not keep the snapshot's time (guest/clock.c, offload-app --clock).
 */

/** Waits until a snapshot taken at `taken` (ms since the epoch) is at least `ms` old, so a guest clock left at the snapshot's time would be off by more than that. */
export async function ageSnapshot(taken: number, ms: number): Promise<void> {
  const age = Date.now() - taken;
  if (age < ms) await new Promise((r) => setTimeout(r, ms - age));
}

/**
 * How far a resumed guest's clock may be from the host's: the guest sets it from QEMU's RTC,
 * which is good to half a second (guest/clock.c, clock_mode), plus the request's own time.
 */
export const CLOCK_TOLERANCE_MS = 750;

/**
 * Asks the guest app's GET /info (through `info`) until its clock is within
 * `toleranceMs` of the host's, for at most `withinMs`; returns the last
 * offset seen (guest minus host, at the midpoint of the request).
 */
export async function guestClockOffset(
  info: () => Promise<Buffer>,
  toleranceMs = CLOCK_TOLERANCE_MS,
  withinMs = 5000,
): Promise<number> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const sent = Date.now();
    const body = JSON.parse((await info()).toString()) as { unixMs?: number };
    const offset = Number(body.unixMs) - (sent + Date.now()) / 2;
    if (Math.abs(offset) <= toleranceMs || Date.now() >= deadline || !Number.isFinite(offset)) return offset;
    await new Promise((r) => setTimeout(r, 200));
  }
}
