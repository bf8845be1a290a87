/**
 * Free page reporting: how a guest's free memory stops weighing in a memory
 * image, with stock QEMU and a stock guest kernel.
 *
 * Every vmsynth VM has a virtio balloon with free-page-reporting=on (and no
 * inflation). The guest kernel reports free 2 MiB blocks to QEMU a couple of
 * seconds after they are freed; with guest RAM in a local file mapped
 * share=on, QEMU punches holes there, so the pages read as zeros. Before
 * saving a base or a customized VM we wait for the holes to stop appearing.
 * (A resumed VM maps its memory image share=off from FUSE: there the punch
 * fails harmlessly, and the FUSE layer must never implement it.)
 */
import { promises as fsp } from 'node:fs';
import { sleep } from '../core/scope.js';

export interface SettleOptions {
  /** Wait at least this long (the guest reports after ~2 s). */
  minMs?: number;
  /** Done when the allocation has not shrunk for this long. */
  stableMs?: number;
  /** Give up waiting after this long (never an error: the image is right either way, just larger). */
  maxMs?: number;
  intervalMs?: number;
  signal?: AbortSignal;
}

export interface SettleResult {
  ms: number;
  /** Bytes of the RAM file that became holes while waiting. */
  freedBytes: number;
  allocatedBytes: number;
}

const allocated = async (file: string) => (await fsp.stat(file)).blocks * 512;

/** Waits until the guest's free page reporting has settled: the RAM file's allocated bytes stop shrinking. */
export async function settleFreePages(ramFile: string, opts: SettleOptions = {}): Promise<SettleResult> {
  const { minMs = 2500, stableMs = 1000, maxMs = 10_000, intervalMs = 250 } = opts;
  const t0 = performance.now();
  const first = await allocated(ramFile);
  let last = first;
  let lastChange = t0;
  for (;;) {
    await sleep(intervalMs, opts.signal);
    const now = performance.now();
    const a = await allocated(ramFile);
    if (a < last) {
      last = a;
      lastChange = now;
    }
    if ((now - t0 >= minMs && now - lastChange >= stableMs) || now - t0 >= maxMs) {
      return { ms: Math.round(now - t0), freedBytes: first - last, allocatedBytes: last };
    }
  }
}
