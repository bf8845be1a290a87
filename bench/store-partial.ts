/**
 * The store bench's partial rows (chunk lookaside): app B synthesized after
 * app A over the same base, A's segments in the store, against B cold (the
 * store emptied). Pairs (BENCH_STORE_PAIRS, default "demo,speech-ocr"):
 *   demo        the demo app, then its second app (bench/lib/demo-overlay.ts
 *               prepareDemoB: the same install moved, and data of its own);
 *   speech-ocr  the suite's speech app, then its ocr app (bench/suite.ts
 *               prepareApp; their access-ordered overlays).
 * Each round, per link: the store emptied; A (early start, every segment
 * enters the store); B (partial); the store emptied; B again (cold).
 *
 * Reports per pair and link: first response, completion and bytes over the
 * client's link (digest tables included), chunks taken from the store, and
 * the target: partial bytes ≤ 1.05 × B's unshared bytes, where unshared is
 * B's compressed bytes less its shared payload chunks' share of them
 * (lib/offline/share.ts, measured on the two overlays).
 */
import type { SynthesizeResult } from '../lib/client/client.js';
import { abortReason, throwIfAborted } from '../lib/core/scope.js';
import { overlayShare, type ShareReport } from '../lib/offline/share.js';
import type { Overlay } from '../lib/overlay/reader.js';
import type { SegmentStore } from '../lib/store/segment-store.js';
import type { SynthStats } from '../lib/synth/session.js';
import { workPath } from '../lib/vm/guest-app.js';
import type { BenchKey } from './lib/bench-key.js';
import { runClient, type ClientRequest } from './lib/client-run.js';
import { prepareDemoB, WORK, type Prepared } from './lib/demo-overlay.js';
import type { Link } from './lib/link.js';
import { p50, round } from './lib/stats.js';
import { prepareApp, suiteBase } from './lib/suite-app.js';

const MIB = 1 << 20;
const CLIENT_TIMEOUT_S = 600;
export const PAIRS = ['demo', 'speech-ocr'] as const;
export type PairName = (typeof PAIRS)[number];

interface App {
  overlay: Overlay;
  request: ClientRequest;
}
export interface Pair {
  name: PairName;
  a: App;
  b: App;
  share: ShareReport;
}

/** The pairs BENCH_STORE_PAIRS names (default all), prepared; `keys` gains the suite's key when a suite app is in. */
export async function preparePairs(demo: Prepared, keys: BenchKey[], signal: AbortSignal): Promise<Pair[]> {
  const names = (process.env.BENCH_STORE_PAIRS ?? PAIRS.join(','))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const pairs: Pair[] = [];
  for (const name of names) {
    if (!(PAIRS as readonly string[]).includes(name))
      throw new Error(`BENCH_STORE_PAIRS: unknown pair "${name}" (known: ${PAIRS.join(', ')})`);
    let a: App;
    let b: App;
    if (name === 'demo') {
      const req = { path: workPath(WORK) };
      a = { overlay: demo.overlay, request: req };
      b = { overlay: await prepareDemoB(demo, signal), request: req };
    } else {
      const { guest, base, key } = await suiteBase(signal);
      if (!keys.some((k) => k.keyId === key.keyId)) keys.push(key);
      const app = async (n: 'speech' | 'ocr'): Promise<App> => {
        const p = await prepareApp(n, guest, base, key, false, signal);
        return {
          overlay: p.profiled,
          request: { path: p.request.path, method: p.request.method, bodyFile: p.input.file },
        };
      };
      a = await app('speech');
      b = await app('ocr');
    }
    process.stderr.write(`store partial ${name}: measuring what B shares with A\n`);
    pairs.push({ name: name as PairName, a, b, share: await overlayShare(a.overlay.dir, b.overlay.dir) });
  }
  return pairs;
}

interface Sample {
  firstResponseMs: number;
  completeMs: number | null;
  /** Bytes the client sent: segments (thin ones as sent) and digest tables. */
  linkBytes: number;
  tableBytes: number;
  chunksFromStore: number;
  chunkBytesFromStore: number;
  segmentsFromStore: number;
}

function sampleOf(r: SynthesizeResult): Sample {
  const s = r.serverStats as unknown as Partial<SynthStats>;
  return {
    firstResponseMs: r.timeline.firstResponse!,
    completeMs: r.timeline.overlayComplete,
    linkBytes: r.bytesSent,
    tableBytes: r.lookaside?.tableBytes ?? 0,
    chunksFromStore: s.lookaside?.chunks ?? 0,
    chunkBytesFromStore: s.lookaside?.bytesSaved ?? 0,
    segmentsFromStore: s.segmentsFromStore ?? 0,
  };
}

export interface PartialCells {
  partial: Sample[];
  cold: Sample[];
  failures: string[];
}

export interface PartialContext {
  ns: string;
  server: string;
  store: SegmentStore;
  signal: AbortSignal;
}

/** One round of a pair on the current link: A, then B partial, then B cold. */
export async function partialRound(ctx: PartialContext, pair: Pair, cells: PartialCells, tag: string): Promise<void> {
  const run = (app: App, label: string) =>
    runClient(ctx.ns, ctx.server, app.overlay.dir, 'early-start', app.request, CLIENT_TIMEOUT_S, ctx.signal, label);
  const step = async (what: 'A' | 'partial' | 'cold', app: App): Promise<void> => {
    throwIfAborted(ctx.signal);
    try {
      const r = await run(app, `${pair.name} ${what}`);
      if (what === 'A') return;
      const s = sampleOf(r);
      cells[what].push(s);
      process.stderr.write(
        `${tag} ${pair.name} ${what}: first response ${s.firstResponseMs} ms, complete ${s.completeMs} ms, ${(s.linkBytes / MIB).toFixed(2)} MiB over the link (tables ${(s.tableBytes / MIB).toFixed(2)}), ${s.chunksFromStore} chunks and ${s.segmentsFromStore} segments from the store\n`,
      );
    } catch (err) {
      if (ctx.signal.aborted) throw abortReason(ctx.signal);
      const message = err instanceof Error ? err.message : String(err);
      cells.failures.push(`${what}: ${message}`);
      process.stderr.write(`${tag} ${pair.name} ${what}: FAILED: ${message}\n`);
    }
  };
  await ctx.store.gc(0);
  await step('A', pair.a);
  await step('partial', pair.b);
  await ctx.store.gc(0);
  await step('cold', pair.b);
}

function summary(xs: Sample[]) {
  const done = xs.map((s) => s.completeMs).filter((x): x is number => x !== null);
  return {
    n: xs.length,
    firstResponseMs: round(p50(xs.map((s) => s.firstResponseMs))),
    completeMs: round(p50(done)),
    linkBytes: p50(xs.map((s) => s.linkBytes)),
    tableBytes: p50(xs.map((s) => s.tableBytes)),
    chunksFromStore: p50(xs.map((s) => s.chunksFromStore)),
    chunkBytesFromStore: p50(xs.map((s) => s.chunkBytesFromStore)),
    segmentsFromStore: p50(xs.map((s) => s.segmentsFromStore)),
  };
}

/** The partial row of a pair on a link, with its target. */
export function partialRow(pair: Pair, link: Link, cells: PartialCells) {
  const partial = summary(cells.partial);
  const cold = summary(cells.cold);
  const unshared = pair.b.overlay.segmentsBytes - pair.share.bytesSharedEstimate;
  return {
    pair: pair.name,
    link: link.name,
    a: { dir: pair.a.overlay.dir, segmentsBytes: pair.a.overlay.segmentsBytes },
    b: { dir: pair.b.overlay.dir, segmentsBytes: pair.b.overlay.segmentsBytes },
    share: {
      sharedChunks: pair.share.sharedChunks,
      payloadChunks: pair.share.b.payloadChunks,
      sharedFraction: +pair.share.sharedFraction.toFixed(4),
      bytesSharedEstimate: pair.share.bytesSharedEstimate,
      unsharedBytes: unshared,
    },
    partial,
    cold,
    failures: cells.failures,
    partialOverUnshared: partial.linkBytes === null ? null : +(partial.linkBytes / unshared).toFixed(3),
    partialOverCold:
      partial.linkBytes !== null && cold.linkBytes ? +(partial.linkBytes / cold.linkBytes).toFixed(3) : null,
    samples: cells,
  };
}
export type PartialRow = ReturnType<typeof partialRow>;

/** The console lines of a row. */
export function describeRow(r: PartialRow): string {
  const mib = (x: number | null) => ((x ?? 0) / MIB).toFixed(2);
  return [
    `  partial ${r.pair}: B shares ${r.share.sharedChunks} of ${r.share.payloadChunks} payload chunks with A (${(r.share.sharedFraction * 100).toFixed(1)}%; unshared ${mib(r.share.unsharedBytes)} of ${mib(r.b.segmentsBytes)} MiB)`,
    `    partial: first response p50 ${r.partial.firstResponseMs} ms, complete ${r.partial.completeMs} ms, over the link ${mib(r.partial.linkBytes)} MiB (tables ${mib(r.partial.tableBytes)}), ${r.partial.chunksFromStore} chunks (${mib(r.partial.chunkBytesFromStore)} MiB raw) from the store`,
    `    cold:    first response p50 ${r.cold.firstResponseMs} ms, complete ${r.cold.completeMs} ms, over the link ${mib(r.cold.linkBytes)} MiB`,
    `    partial / unshared bytes: ${r.partialOverUnshared}x (target ≤ 1.05); partial / cold bytes: ${r.partialOverCold}x${r.failures.length ? `; ${r.failures.length} FAILED` : ''}`,
  ].join('\n');
}
