/**
 * The demo: the newcomer's first run. Builds the test guest (cached),
 * captures it as the base "demo" (reused while the guest build is the same),
 * resumes it with memory and disk served over FUSE, and reports the timings.
 */
import { publish } from '../core/diagnostics.js';
import { isErrorCode } from '../core/errors.js';
import { buildGuest, type Guest } from '../guest/build.js';
import { createBase, loadBase, type Base } from '../vm/base.js';
import { resumeBase, type ResumeResult } from '../vm/resume.js';

export const DEMO_BASE = 'demo';

export interface DemoResult extends ResumeResult {
  accelerator: ResumeResult['accel'];
  guestKey: string;
  baseCreated: boolean;
  baseCreateMs: number | null;
}

/** Loads the demo base if it was captured from this guest build; otherwise (re)captures it. */
export async function ensureGuestBase(guest: Guest, name: string, signal?: AbortSignal): Promise<{ base: Base; created: boolean; ms: number | null }> {
  try {
    const base = await loadBase(name);
    if (base.manifest.created.source.guestKey === guest.key) return { base, created: false, ms: null };
    publish('progress', { step: `base "${name}" is from another guest build; capturing it again` });
  } catch (err) {
    if (!isErrorCode(err, 'VMS_BASE_NOT_FOUND')) publish('progress', { step: `base "${name}" is unusable (${(err as Error).message}); capturing it again` });
  }
  const t0 = Date.now();
  const base = await createBase({
    name,
    force: true,
    signal,
    source: {
      kernel: guest.kernel, initrd: guest.initrd, disk: guest.disk, cmdline: guest.cmdline,
      memoryMiB: guest.memoryMiB, appPort: guest.appPort,
      info: { kind: 'vmsynth-test-guest', guestKey: guest.key, kernelPackage: guest.kernelPackage },
    },
  });
  return { base, created: true, ms: Date.now() - t0 };
}

export async function runDemo(signal?: AbortSignal): Promise<DemoResult> {
  publish('progress', { step: 'step 1/3: test guest (Debian kernel + busybox initramfs + offload app)' });
  const guest = await buildGuest();
  publish('progress', { step: `step 2/3: base VM "${DEMO_BASE}"` });
  const { base, created, ms } = await ensureGuestBase(guest, DEMO_BASE, signal);
  publish('progress', { step: `step 3/3: resume "${base.name}" with memory and disk over FUSE` });
  const r = await resumeBase({ base: base.name, work: { memMb: 8, diskMb: 4 }, signal });
  return { ...r, accelerator: r.accel, guestKey: guest.key, baseCreated: created, baseCreateMs: ms };
}
