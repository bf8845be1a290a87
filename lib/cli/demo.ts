/**
 * The demo: the newcomer's first run, the whole story on loopback. Builds the
 * test guest (cached), captures it as the base "demo" (reused while the guest
 * build is the same), customizes it into an overlay (cached while base,
 * script and key are the same), starts a synthesis server, and synthesizes
 * the overlay twice over a link paced to a Wi-Fi rate: with early start and
 * with Elijah's baseline (whole overlay, then resume). Prints both
 * first-response times and the speedup.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { synthesize, type SynthesizeResult } from '../client/client.js';
import { DEFAULTS } from '../core/defaults.js';
import { publish } from '../core/diagnostics.js';
import { cacheDir, keyDir, packageRoot } from '../core/paths.js';
import { buildGuest, type Guest } from '../guest/build.js';
import { createOverlay } from '../offline/create.js';
import { generateKey } from '../overlay/keys.js';
import { Overlay } from '../overlay/reader.js';
import { SynthServer } from '../server/server.js';
import { detectAccel, type Accel } from '../vm/accel.js';
import { ensureBase, type Base } from '../vm/base.js';

export const DEMO_BASE = 'demo';
/** The demo's first request: 8 MiB of the app's working set and the 4 MiB the customization installed at 40 MiB. */
export const DEMO_REQUEST = { method: 'GET' as const, path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' };

export interface PolicyRun {
  firstResponseMs: number;
  bytesBeforeFirstResponse: number;
  overlayBytes: number;
  timeline: SynthesizeResult['timeline'];
  demandRequests: number;
  firstResponse: SynthesizeResult['firstResponse'];
}

export interface DemoResult {
  accelerator: Accel;
  guestKey: string;
  base: string;
  baseCreated: boolean;
  overlay: { dir: string; created: boolean; bytes: number; segments: number };
  link: { mbit: number | null; how: string };
  request: string;
  earlyStart: PolicyRun;
  baseline: PolicyRun;
  /** baseline.firstResponseMs / earlyStart.firstResponseMs */
  speedup: number;
}

/** Loads the demo base if it was captured from this guest build; otherwise (re)captures it. */
export async function ensureGuestBase(
  guest: Guest,
  name: string,
  signal?: AbortSignal,
): Promise<{ base: Base; created: boolean; ms: number | null }> {
  return ensureBase(
    name,
    {
      kernel: guest.kernel,
      initrd: guest.initrd,
      disk: guest.disk,
      cmdline: guest.cmdline,
      memoryMiB: guest.memoryMiB,
      appPort: guest.appPort,
      info: { kind: 'vmsynth-test-guest', guestKey: guest.key, kernelPackage: guest.kernelPackage },
    },
    signal,
  );
}

/** The demo customization: the example script (a second app, software on the disk, trimmed scratch) plus a 16 MiB model file. */
export async function demoScript(): Promise<string> {
  const example = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
  return `${example}\n# The app's model file: 16 MiB of data the first request does not read.\ndd if=/dev/urandom of=/dev/vda bs=1M seek=8 count=16 conv=fsync 2>/dev/null\necho model installed\n`;
}

/** The only signing key's id in the key directory, generating one when there is none. */
async function demoKey(): Promise<string> {
  const keys = (await fsp.readdir(keyDir()).catch(() => [] as string[])).filter((f) => f.endsWith('.key')).sort();
  if (keys.length > 0) return keys[0]!.slice(0, -'.key'.length);
  publish('progress', { step: `no signing key in ${keyDir()}: generating one (vmsynth key generate)` });
  return (await generateKey()).keyId;
}

/** The demo overlay, reused while the base, the script and the key are the same. */
async function ensureDemoOverlay(base: Base, signal?: AbortSignal): Promise<{ dir: string; created: boolean }> {
  const script = await demoScript();
  const keyId = await demoKey();
  const stamp = createHash('sha256')
    .update(JSON.stringify([base.manifest.memory.sha256, base.manifest.disk.sha256, script, keyId]))
    .digest('hex');
  const dir = path.join(cacheDir(), 'demo-overlay');
  const stampFile = path.join(cacheDir(), 'demo-overlay.stamp');
  if ((await fsp.readFile(stampFile, 'utf8').catch(() => '')) === stamp) {
    try {
      await Overlay.open(dir, { trusted: null });
      return { dir, created: false };
    } catch {
      // damaged: build it again
    }
  }
  publish('progress', {
    step: 'customizing the base into an overlay (a second app, software on the disk, a 16 MiB model file)',
  });
  await createOverlay({ base: base.name, out: dir, script, key: keyId, force: true, signal });
  await fsp.writeFile(stampFile, stamp);
  return { dir, created: true };
}

function policyRun(r: SynthesizeResult): PolicyRun {
  return {
    firstResponseMs: r.timeline.firstResponse!,
    bytesBeforeFirstResponse: r.bytesSentBeforeFirstResponse,
    overlayBytes: r.overlayBytes,
    timeline: r.timeline,
    demandRequests: r.demandRequests,
    firstResponse: r.firstResponse,
  };
}

export async function runDemo(opts: { signal?: AbortSignal; linkMbit?: number } = {}): Promise<DemoResult> {
  const { signal } = opts;
  const linkMbit = opts.linkMbit ?? DEFAULTS.demoLinkMbit;
  publish('progress', { step: 'step 1/4: test guest (Debian kernel + busybox initramfs + offload app)' });
  const guest = await buildGuest();
  publish('progress', { step: `step 2/4: base VM "${DEMO_BASE}"` });
  const { base, created } = await ensureGuestBase(guest, DEMO_BASE, signal);
  publish('progress', { step: 'step 3/4: overlay' });
  const overlay = await ensureDemoOverlay(base, signal);
  const ov = await Overlay.open(overlay.dir, { trusted: null });

  publish('progress', {
    step: `step 4/4: synthesis server on loopback; the client paces itself to ${linkMbit ? `${linkMbit} Mbit/s` : 'no limit'}`,
  });
  // Bases are hashed before listening, as `vmsynth serve` does, not in the first (timed) session.
  const server = await SynthServer.listen({ host: '127.0.0.1', port: 0, verifyBases: true });
  try {
    const { host, port } = server.address();
    const run = async (policy: 'early-start' | 'baseline') => {
      publish('progress', { step: `synthesizing with ${policy}` });
      return synthesize({
        server: `${host}:${port}`,
        overlay: overlay.dir,
        policy,
        request: DEMO_REQUEST,
        signal,
        ...(linkMbit ? { maxBytesPerSecond: (linkMbit * 1e6) / 8 } : {}),
      });
    };
    const early = await run('early-start');
    const baseline = await run('baseline');
    return {
      accelerator: (await detectAccel()).accel,
      guestKey: guest.key,
      base: base.name,
      baseCreated: created,
      overlay: {
        dir: overlay.dir,
        created: overlay.created,
        bytes: ov.segmentsBytes + ov.manifestBytes,
        segments: ov.body.segments.length,
      },
      link: { mbit: linkMbit || null, how: linkMbit ? 'loopback, client paced' : 'loopback, unpaced' },
      request: DEMO_REQUEST.path,
      earlyStart: policyRun(early),
      baseline: policyRun(baseline),
      speedup: Math.round((baseline.timeline.firstResponse! / early.timeline.firstResponse!) * 100) / 100,
    };
  } finally {
    await server.close();
  }
}
