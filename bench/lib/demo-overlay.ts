/**
 * The benchmarks' demo-app overlay and its fully local baseline, shared by
 * the first-response and store benchmarks: the test guest's base, a bench
 * signing key, the overlay (guest/examples/customize-demo.sh plus 16 MiB of
 * random bytes written to the disk at 48..64 MiB, so streaming has
 * something to hide), optionally re-packed in access order, all cached in
 * <cache>/bench/first-response/<hash of the base's manifest hashes, the
 * script and the key>; and the launch VM applied locally and resumed, whose
 * first response is what a warm or floor-bound synthesis is held to.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ensureGuestBase } from '../../lib/cli/demo.js';
import { VmsynthError } from '../../lib/core/errors.js';
import { cacheDir, packageRoot } from '../../lib/core/paths.js';
import { abortReason } from '../../lib/core/scope.js';
import { buildGuest } from '../../lib/guest/build.js';
import { applyOverlay } from '../../lib/offline/apply.js';
import { createOverlay } from '../../lib/offline/create.js';
import { profileOverlay } from '../../lib/offline/profile.js';
import { Overlay } from '../../lib/overlay/reader.js';
import type { Base } from '../../lib/vm/base.js';
import { resumeBase } from '../../lib/vm/base-resume.js';
import type { AppWork } from '../../lib/vm/guest-app.js';
import { benchKey, openIfValid, trustedBy, type BenchKey } from './bench-key.js';
import { LINKS, type Link } from './link.js';

export const BASE_NAME = 'bench-first-response';
/** What the first request asks the app to read: 8 MiB of memory, 4 MiB of disk at 40 MiB. */
export const WORK: AppWork = { memMb: 8, diskMb: 4, diskOffMb: 40 };
export const RANDOM = { atMiB: 48, mib: 16 };
export const PROFILE_RUNS = 3;

export interface LocalRun {
  resumeMs: number;
  firstResponseMs: number;
}

// ---------------------------------------------------------------- parameters

export function positiveEnv(name: string, fallback: number): number {
  const v = Number(process.env[name] ?? fallback);
  if (!Number.isSafeInteger(v) || v < 1)
    throw new VmsynthError('VMS_USAGE', `${name} must be a positive integer, got "${process.env[name]}"`);
  return v;
}

export function chosenLinks(): Link[] {
  const names = (process.env.BENCH_LINKS ?? 'wifi,lan')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return names.map((n) => {
    const link = LINKS[n];
    if (!link)
      throw new VmsynthError(
        'VMS_USAGE',
        `BENCH_LINKS: unknown link "${n}"; choose from ${Object.keys(LINKS).join(', ')}`,
      );
    return link;
  });
}

// ---------------------------------------------------------------- base, key, overlays

async function customizationScript(): Promise<string> {
  const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
  return `${demo}
# bench: ${RANDOM.mib} MiB of incompressible data the first request does not read,
# so the overlay is large enough for streaming to matter.
dd if=/dev/urandom of=/dev/vda bs=1M seek=${RANDOM.atMiB} count=${RANDOM.mib} conv=fsync 2>/dev/null
`;
}

function cacheKey(base: Base, script: string, keyId: string): string {
  const m = base.manifest;
  const what = {
    memory: m.memory.sha256,
    disk: m.disk.sha256,
    deviceState: m.deviceState.sha256,
    script,
    keyId,
    work: WORK,
  };
  return createHash('sha256').update(JSON.stringify(what)).digest('hex').slice(0, 16);
}

/** Removes cached overlays made for other bases or scripts. */
async function pruneCache(root: string, keep: string): Promise<void> {
  for (const name of await fsp.readdir(root).catch(() => [] as string[])) {
    if (name !== keep && name !== 'keys') await fsp.rm(path.join(root, name), { recursive: true, force: true });
  }
}

export interface Prepared {
  base: Base;
  key: BenchKey;
  overlay: Overlay;
  cached: boolean;
  createMs: number | null;
  profiled: { overlay: Overlay; cached: boolean; ms: number | null } | { error: string } | null;
}

export async function prepare(signal: AbortSignal, opts: { profile?: boolean } = {}): Promise<Prepared> {
  const root = path.join(cacheDir(), 'bench', 'first-response');
  const guest = await buildGuest();
  const { base } = await ensureGuestBase(guest, BASE_NAME, signal);
  const key = await benchKey(root);
  const script = await customizationScript();
  const id = cacheKey(base, script, key.keyId);
  await pruneCache(root, id);
  const out = path.join(root, id, 'overlay');
  let overlay = await openIfValid(out, key, { tables: true });
  const cached = overlay !== null;
  let createMs: number | null = null;
  if (!overlay) {
    process.stderr.write(`bench: customizing base "${base.name}" into the bench overlay\n`);
    await fsp.mkdir(path.dirname(out), { recursive: true });
    const t0 = performance.now();
    await createOverlay({ base: base.name, out, script, key: key.file, force: true, signal });
    createMs = Math.round(performance.now() - t0);
    overlay = await Overlay.open(out, { trusted: trustedBy(key) });
  }
  const profiled =
    opts.profile === false || process.env.BENCH_PROFILE === '0'
      ? null
      : await ensureProfiled(overlay, key, path.join(root, id, 'profiled'), signal);
  return { base, key, overlay, cached, createMs, profiled };
}

/**
 * A second app over the demo's base (the store bench's partial row): it
 * installs the demo's software 20 MiB + 4 KiB into the disk, after a block of
 * its own, and writes 2 MiB of data of its own, so it shares most of the
 * demo's chunks but no segment. Kept with the demo overlay (same key, same
 * base), built when missing.
 */
export async function prepareDemoB(p: Prepared, signal: AbortSignal): Promise<Overlay> {
  const script = (await customizationScript())
    .replace('dd of=/dev/vda bs=1M seek=40 conv=fsync', 'dd of=/dev/vda bs=4096 seek=5121 conv=fsync')
    .concat(
      'dd if=/dev/urandom of=/dev/vda bs=4096 seek=5120 count=1 conv=fsync 2>/dev/null\n',
      'dd if=/dev/urandom of=/dev/vda bs=1M seek=30 count=2 conv=fsync 2>/dev/null\n',
    );
  if (!script.includes('seek=5121'))
    throw new VmsynthError('VMS_INTERNAL', 'the demo customization changed: B cannot move its install');
  const tag = createHash('sha256').update(script).digest('hex').slice(0, 12);
  const out = path.join(path.dirname(p.overlay.dir), `b-${tag}`);
  const hit = await openIfValid(out, p.key, { tables: true });
  if (hit) return hit;
  process.stderr.write(`bench: customizing base "${p.base.name}" into the demo's second app (partial row)\n`);
  await createOverlay({ base: p.base.name, out, script, key: p.key.file, force: true, signal });
  return Overlay.open(out, { trusted: trustedBy(p.key) });
}

/** The access-ordered overlay, or why there is none (profiling must not stop the rest). */
async function ensureProfiled(
  overlay: Overlay,
  key: BenchKey,
  out: string,
  signal: AbortSignal,
): Promise<Prepared['profiled']> {
  const hit = await openIfValid(out, key, { tables: true });
  if (hit) return { overlay: hit, cached: true, ms: null };
  try {
    process.stderr.write(`bench: profiling the overlay (${PROFILE_RUNS} runs)\n`);
    const r = await profileOverlay({
      overlay: overlay.dir,
      out,
      runs: PROFILE_RUNS,
      work: WORK,
      key: key.file,
      trust: [key.pubFile],
      force: true,
      signal,
    });
    return { overlay: await Overlay.open(out, { trusted: trustedBy(key) }), cached: false, ms: r.ms.total };
  } catch (err) {
    if (signal.aborted) throw abortReason(signal);
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`bench: profiling failed, skipping the profiled variant: ${message}\n`);
    return { error: message };
  }
}

// ---------------------------------------------------------------- measurements

export interface Local {
  runs: LocalRun[];
  reply: Record<string, unknown>;
}

/** The launch VM fully local: applied to `<tmp>/launch` (returned), for resumeLocal. */
export async function applyLocal(p: Prepared, tmp: string, signal: AbortSignal): Promise<string> {
  const launch = path.join(tmp, 'launch');
  process.stderr.write('bench: applying the overlay locally for the floor\n');
  await applyOverlay({ overlay: p.overlay.dir, out: launch, trust: [p.key.pubFile], verifyBase: false, signal });
  return launch;
}

/** One resume of the locally applied launch VM, and its first response. */
export async function resumeLocal(
  launch: string,
  signal: AbortSignal,
): Promise<LocalRun & { reply: Record<string, unknown> }> {
  const r = await resumeBase({ base: launch, verify: false, work: WORK, signal });
  return { resumeMs: r.resumeMs, firstResponseMs: r.firstResponseMs, reply: r.reply };
}

/** The launch VM fully local: applied to a temp directory, resumed `runs` times. */
export async function measureLocal(p: Prepared, tmp: string, runs: number, signal: AbortSignal): Promise<Local> {
  const launch = await applyLocal(p, tmp, signal);
  const out: LocalRun[] = [];
  let reply: Record<string, unknown> = {};
  for (let i = 0; i < runs; i++) {
    const r = await resumeLocal(launch, signal);
    out.push({ resumeMs: r.resumeMs, firstResponseMs: r.firstResponseMs });
    reply = r.reply;
    process.stderr.write(`local resume ${i + 1}/${runs}: first response ${r.firstResponseMs} ms\n`);
  }
  return { runs: out, reply };
}
