/**
 * Access-order profiles (`vmsynth overlay profile`): learn the order in which
 * the launch VM first touches its disk and memory chunks, and re-pack the
 * overlay in that order, so that early-start synthesis streams first what
 * the app's first request needs.
 *
 * How: synthesize the launch VM offline into a work directory, resume it N
 * times through the FUSE images with a first-touch log (memory page faults and
 * disk reads alike), send the app's first request each time, and keep the
 * touches up to the reply. The runs are merged by one rule (rankTouches) and
 * the overlay is rebuilt from the synthesized images with that order: same
 * chunks, same base, new order, new signature.
 *
 * Unlike Elijah's single-run, memory-only reorder, disk and memory are ranked
 * together and several runs are merged.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import type { Touch } from '../fs/touch-log.js';
import type { AppRequest, AppWork } from '../vm/guest-app.js';
import { resumeBase } from '../vm/base-resume.js';
import { baseInput, buildOverlay, type BuildOrder, type BuildResult, type ChunkRef } from '../overlay/builder.js';
import { chunkKey, type Image } from '../overlay/format.js';
import { readRecord } from '../overlay/records.js';
import { loadSigningKey } from '../overlay/keys.js';
import { applyOverlay, baseFor, openTrusted, type TrustOptions } from './apply.js';
import { Overlay } from '../overlay/reader.js';
import { PhaseTimer } from '../core/scope.js';
import { claimOutput } from '../core/stale.js';

export const RANK_RULE =
  'min over runs of the normalized first-touch position (position / touches in that run); ties: touched in more runs first, then lower mean position; chunks no run touched follow in default order';

/**
 * Merges first-touch runs into one order. A chunk's key is the earliest
 * normalized position at which any run touched it, so a chunk needed early
 * by any run comes early; runs of different lengths weigh alike.
 */
export function rankTouches(runs: readonly (readonly Touch[])[]): ChunkRef[] {
  const acc = new Map<number, { image: number; index: number; min: number; sum: number; runs: number }>();
  for (const run of runs) {
    const n = run.length;
    const seen = new Set<number>();
    run.forEach((t, i) => {
      const key = chunkKey(t.image, t.index);
      if (seen.has(key)) return;
      seen.add(key);
      const p = i / n;
      const a = acc.get(key);
      if (!a) acc.set(key, { image: t.image, index: t.index, min: p, sum: p, runs: 1 });
      else {
        a.min = Math.min(a.min, p);
        a.sum += p;
        a.runs++;
      }
    });
  }
  return [...acc.values()]
    .sort(
      (x, y) =>
        x.min - y.min || y.runs - x.runs || x.sum / x.runs - y.sum / y.runs || x.image - y.image || x.index - y.index,
    )
    .map((a) => ({ image: a.image as Image, index: a.index }));
}

export interface PrefixNeeded {
  /** Overlay chunks among the touches. */
  chunks: number;
  /** Distinct segments holding them. */
  segments: number;
  /** Segments from the start up to the last one needed. */
  prefixSegments: number;
  /** Compressed bytes of that prefix: what an in-order stream must deliver before the touches are all served. */
  prefixBytes: number;
}

/** How much of an overlay, streamed in order, must arrive before every touched overlay chunk is present. */
export function prefixNeeded(overlay: Overlay, touches: readonly Touch[]): PrefixNeeded {
  const segmentOf = new Map<number, number>();
  overlay.body.segments.forEach((s, i) => {
    for (let k = 0; k < s.count; k++) {
      const r = readRecord(s.chunks, k);
      segmentOf.set(chunkKey(r.image, r.index), i);
    }
  });
  const hit = new Set<number>();
  let chunks = 0;
  let last = -1;
  for (const t of touches) {
    const seg = segmentOf.get(chunkKey(t.image, t.index));
    if (seg === undefined) continue;
    chunks++;
    hit.add(seg);
    last = Math.max(last, seg);
  }
  const segs = overlay.body.segments;
  return {
    chunks,
    segments: hit.size,
    prefixSegments: last + 1,
    prefixBytes: last < 0 ? 0 : segs[last]!.offset + segs[last]!.bytes,
  };
}

export interface ProfileOptions extends TrustOptions {
  overlay: string;
  out: string;
  base?: string;
  /** Runs to merge (default 3). */
  runs?: number;
  /** The test guest app's first request. */
  work?: AppWork;
  /** The first request of another app (overrides `work`). */
  request?: AppRequest;
  /** Signing key for the re-packed overlay (default: the only key in the key directory). */
  key?: string;
  /** Default: the overlay's own. */
  segmentBytes?: number;
  threads?: number;
  /** Per run: how long the app may take to answer. */
  timeoutMs?: number;
  force?: boolean;
  signal?: AbortSignal;
}

export interface ProfileRun {
  domain: string;
  firstResponseMs: number;
  touches: { memory: number; disk: number };
  /** The input overlay (its order) vs the re-packed one, for this run's touches. */
  before: PrefixNeeded;
  after: PrefixNeeded;
}

export interface ProfileResult {
  dir: string;
  base: string;
  runs: ProfileRun[];
  rank: string;
  /** Distinct chunks ranked (touched in some run; overlay chunks or not). */
  ranked: number;
  build: BuildResult;
  ms: { apply: number; runs: number; build: number; total: number };
}

export async function profileOverlay(opts: ProfileOptions): Promise<ProfileResult> {
  const timer = new PhaseTimer<'apply' | 'runs' | 'build'>();
  const runs = opts.runs ?? 3;
  if (!Number.isInteger(runs) || runs < 1)
    throw new VmsynthError('VMS_USAGE', `runs must be a positive integer, got ${runs}`);
  const key = await loadSigningKey(opts.key);
  const input = await openTrusted(opts.overlay, opts);
  const base = await baseFor(input, opts.base);
  const out = path.resolve(opts.out);
  if (path.resolve(opts.overlay) === out)
    throw new VmsynthError('VMS_USAGE', 'the profiled overlay must go to a new directory (--out), not over its input');
  const work = await claimOutput(out, 'work', opts.force);
  try {
    const launch = path.join(work, 'launch');
    publish('progress', { step: `overlay profile: synthesizing the launch VM from base "${base.name}"` });
    await applyOverlay({
      overlay: opts.overlay,
      base: base.dir,
      out: launch,
      trust: opts.trust,
      threads: opts.threads,
      signal: opts.signal,
    });
    timer.lap('apply');

    const results: Array<{ domain: string; firstResponseMs: number; touches: Touch[] }> = [];
    for (let i = 0; i < runs; i++) {
      publish('progress', {
        step: `overlay profile: run ${i + 1} of ${runs}: resume through tracing FUSE images, first request`,
      });
      const r = await resumeBase({
        base: launch,
        verify: false,
        trace: true,
        work: opts.work,
        request: opts.request,
        timeoutMs: opts.timeoutMs,
        signal: opts.signal,
      });
      results.push({
        domain: r.domain,
        firstResponseMs: r.firstResponseMs,
        touches: r.touchesBeforeFirstResponse ?? [],
      });
    }
    timer.lap('runs');

    const chunks = rankTouches(results.map((r) => r.touches));
    const order: BuildOrder = { chunks, runs, rank: RANK_RULE };
    const body = input.body;
    publish('progress', { step: `overlay profile: re-packing ${chunks.length} ranked chunks in access order` });
    const build = await buildOverlay({
      base: baseInput(base),
      custom: {
        memory: path.join(launch, 'memory.raw'),
        disk: path.join(launch, 'disk.raw'),
        deviceState: path.join(launch, 'device.state'),
      },
      appPort: body.vm.appPort,
      trimmedChunks: body.stats.trimmedChunks,
      order,
      segmentBytes: opts.segmentBytes ?? body.segmentBytes,
      zstdLevel: body.compression.level,
      key,
      out,
      force: opts.force,
      signal: opts.signal,
    });
    const repacked = await Overlay.open(out, { trusted: new Map([[key.keyId, key.publicKeyRaw]]) });
    timer.lap('build');
    return {
      dir: build.dir,
      base: base.name,
      runs: results.map((r) => ({
        domain: r.domain,
        firstResponseMs: r.firstResponseMs,
        touches: {
          memory: r.touches.filter((t) => t.image === 0).length,
          disk: r.touches.filter((t) => t.image === 1).length,
        },
        before: prefixNeeded(input, r.touches),
        after: prefixNeeded(repacked, r.touches),
      })),
      rank: RANK_RULE,
      ranked: chunks.length,
      build,
      ms: timer.ms(),
    };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}
