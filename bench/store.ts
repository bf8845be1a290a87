/**
 * Benchmark: the cloudlet store, cold against warm, with the real server
 * (in this process, its store in a temporary directory) and the real client
 * (`vmsynth synth --json` in a network namespace, over a tc-shaped veth: the
 * first-response bench's links, wifi 38 Mbit/s and lan 1 Gbit/s).
 *
 * The overlay is the first-response bench's demo-app overlay
 * (bench/lib/demo-overlay.ts, shared cache). Each round, per link:
 *   cold  the store is emptied (gc to 0 bytes), then an early-start session:
 *         every segment crosses the client's link and enters the store;
 *   warm  the same overlay again: every segment comes from the store;
 *   s3    the store emptied again, and the client names the overlay by URL:
 *         the server fetches every segment from an object store (s3rver on
 *         the host's loopback, standing for a backhaul faster than the
 *         client's link) with ranged GETs, and the client sends none;
 *   partial  a second app after a first over the same base, and cold
 *         (bench/store-partial.ts: the demo app and its second app, and the
 *         suite's speech and ocr apps; BENCH_STORE_PAIRS).
 * The baseline, measured in the same run: the launch VM applied locally and
 * resumed once in every round (beside the sessions, so it sees the same
 * host), the cost of a first response with nothing to fetch. Target: warm first response p50 ≤ 1.1 × the local resume's p50.
 *
 * Reports per link and variant: first response and overlay completion (p50,
 * p90, client clock), segment bytes over the client's link (client count)
 * and segments taken from the store (server count), replies equal to the
 * local VM's. Writes bench/results/store-<time>.json and a bar chart
 * store-<time>.svg. BENCH_RUNS (default 5) rounds, BENCH_LINKS (default
 * "wifi,lan"). Everything it makes (namespace, veth, server, temporary
 * directory with the store) is removed on the way out.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { SynthesizeResult } from '../lib/client/client.js';
import { attachLogger } from '../lib/core/log.js';
import { packageRoot } from '../lib/core/paths.js';
import { abortReason, Scope, throwIfAborted } from '../lib/core/scope.js';
import { pushOverlay } from '../lib/offline/transfer.js';
import { SynthServer } from '../lib/server/server.js';
import { ObjectStore } from '../lib/store/object-store.js';
import { detectAccel } from '../lib/vm/accel.js';
import { workPath } from '../lib/vm/guest-app.js';
import { runClient } from './lib/client-run.js';
import {
  describeRow,
  partialRound,
  partialRow,
  preparePairs,
  type PartialCells,
  type PartialRow,
} from './store-partial.js';
import { applyLocal, chosenLinks, positiveEnv, prepare, resumeLocal, WORK, type Local } from './lib/demo-overlay.js';
import {
  checkLinkTools,
  createLinkPair,
  netnsFor,
  removeStale,
  shape,
  tmpDirFor,
  type Link,
  type LinkNames,
} from './lib/link.js';
import { BENCH_S3_CREDENTIALS, startBenchS3 } from './lib/s3-server.js';
import { onSignals } from './lib/signals.js';
import { p50, percentile, round } from './lib/stats.js';
import { groupedBars, renderSvg, stacked, type TopLevelSpec } from './lib/chart.js';

const MIB = 1 << 20;
const CLIENT_TIMEOUT_S = 300;
const NAMES: LinkNames = { ns: 'vmsto-', dev: 'vso', tmp: 'vmsynth-bench-store-', bench: 'store', octet: 203 };
const VARIANTS = ['cold', 'warm', 's3'] as const;
const BUCKET = 'vmsynth-bench';
type Variant = (typeof VARIANTS)[number];

interface Sample {
  /** The client's timeline: manifest accepted, VM resumed, first response, overlay complete. */
  acceptedMs: number | null;
  resumedMs: number | null;
  firstResponseMs: number;
  completeMs: number | null;
  /** Segment bytes the client sent (over its link). */
  linkBytes: number;
  segmentsFromStore: number;
  segmentsFromObjects: number;
  segments: number;
  replyMatchesLocal: boolean;
}

function sampleOf(r: SynthesizeResult, local: Local): Sample {
  const s = r.serverStats as { segmentsFromStore?: number; segmentsFromObjects?: number };
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(r.firstResponse.body) as Record<string, unknown>;
  } catch {
    // not JSON: it cannot match
  }
  return {
    acceptedMs: r.timeline.accepted,
    resumedMs: r.timeline.resumed,
    firstResponseMs: r.timeline.firstResponse!,
    completeMs: r.timeline.overlayComplete,
    linkBytes: r.sends.reduce((n, x) => n + x.bytes, 0),
    segmentsFromStore: s.segmentsFromStore ?? 0,
    segmentsFromObjects: s.segmentsFromObjects ?? 0,
    segments: r.segments,
    replyMatchesLocal:
      r.firstResponse.status === 200 &&
      body.memDigest === local.reply.memDigest &&
      body.diskDigest === local.reply.diskDigest,
  };
}

interface Cell {
  samples: Sample[];
  failures: string[];
}

function summarize(c: Cell) {
  const xs = c.samples;
  const fr = xs.map((s) => s.firstResponseMs);
  const done = xs.map((s) => s.completeMs).filter((x): x is number => x !== null);
  return {
    n: xs.length,
    failed: c.failures.length,
    firstResponseMs: { p50: round(p50(fr)), p90: round(percentile(fr, 0.9)) },
    acceptedMs: round(p50(xs.map((s) => s.acceptedMs).filter((x): x is number => x !== null))),
    resumedMs: round(p50(xs.map((s) => s.resumedMs).filter((x): x is number => x !== null))),
    completeMs: { p50: round(p50(done)), p90: round(percentile(done, 0.9)) },
    linkBytes: p50(xs.map((s) => s.linkBytes)),
    segmentsFromStore: p50(xs.map((s) => s.segmentsFromStore)),
    segmentsFromObjects: p50(xs.map((s) => s.segmentsFromObjects)),
    segments: xs[0]?.segments ?? null,
    repliesMatchingLocal: xs.filter((s) => s.replyMatchesLocal).length,
  };
}
type Summary = ReturnType<typeof summarize>;

const COLORS = {
  local: '#888888',
  cold: '#d62728',
  warm: '#2ca02c',
  s3: '#1f77b4',
  partial: '#ff7f0e',
  unshared: '#9467bd',
};

/** What the chart reads of a result (so a saved result can be plotted again: --plot). */
interface Plotted {
  accel: string;
  runs: number;
  overlay: { segmentsBytes: number };
  localResume: { firstResponseMs: { p50: number | null } };
  links: { link: Link; summary: Record<Variant, Summary> }[];
  partial?: PartialRow[];
}

/** The store bench's chart: first response per link and variant; then, per pair and link, partial against cold (bytes, first response). */
export function storeChart(r: Plotted): TopLevelSpec {
  const group = (l: Link) => `${l.name}, ${l.rateMbit} Mbit/s`;
  const local = r.localResume.firstResponseMs.p50 ?? 0;
  const panels = [
    groupedBars({
      title: 'cold, warm, from the object store, against a local resume',
      yTitle: 'first response p50, ms',
      series: (['local', ...VARIANTS] as const).map((name) => ({ name, color: COLORS[name] })),
      bars: r.links.flatMap((l) => [
        { group: group(l.link), series: 'local', value: local },
        ...VARIANTS.map((v) => ({ group: group(l.link), series: v, value: l.summary[v].firstResponseMs.p50 ?? 0 })),
      ]),
    }),
  ];
  const partial = r.partial ?? [];
  if (partial.length > 0) {
    const where = (p: PartialRow) => `${p.pair}, ${p.link}`;
    panels.push(
      groupedBars({
        title: 'partial: a second app after a first, against it cold and its unshared bytes',
        yTitle: "bytes over the client's link, MB",
        digits: 1,
        series: (['cold', 'partial', 'unshared'] as const).map((name) => ({ name, color: COLORS[name] })),
        bars: partial.flatMap((p) => [
          { group: where(p), series: 'cold', value: (p.cold.linkBytes ?? 0) / 1e6 },
          { group: where(p), series: 'partial', value: (p.partial.linkBytes ?? 0) / 1e6 },
          { group: where(p), series: 'unshared', value: p.share.unsharedBytes / 1e6 },
        ]),
      }),
      groupedBars({
        title: 'partial: first response',
        yTitle: 'first response p50, s',
        digits: 2,
        series: (['cold', 'partial'] as const).map((name) => ({ name, color: COLORS[name] })),
        bars: partial.flatMap((p) => [
          { group: where(p), series: 'cold', value: (p.cold.firstResponseMs ?? 0) / 1000 },
          { group: where(p), series: 'partial', value: (p.partial.firstResponseMs ?? 0) / 1000 },
        ]),
      }),
    );
  }
  return stacked(
    `store bench, ${r.accel.toUpperCase()}, ${r.runs} rounds, p50; demo overlay ${(r.overlay.segmentsBytes / MIB).toFixed(1)} MiB`,
    panels,
  );
}

/** `--plot RESULT.json`: draws a saved result's chart again, beside it (RESULT.svg). */
async function replot(file: string): Promise<void> {
  const r = JSON.parse(await fsp.readFile(file, 'utf8')) as Plotted;
  const svg = file.replace(/\.json$/, '') + '.svg';
  await fsp.writeFile(svg, await renderSvg(storeChart(r)));
  console.log(`plot: ${svg}`);
}

export async function benchStore(argv: string[] = []): Promise<void> {
  if (argv.length > 0) {
    if (argv.length !== 2 || argv[0] !== '--plot' || !argv[1]!.endsWith('.json'))
      throw new Error(`the store bench takes no options but --plot RESULT.json (got: ${argv.join(' ')})`);
    return replot(argv[1]!);
  }
  const detach = attachLogger({ level: process.env.LOG_LEVEL ?? 'warn' });
  const controller = new AbortController();
  const signal = controller.signal;
  const offSignals = onSignals(controller, NAMES.bench);
  const scope = new Scope();
  try {
    const loadAtStart = os.loadavg().map((x) => +x.toFixed(2));
    const runs = positiveEnv('BENCH_RUNS', 5);
    const links = chosenLinks();
    await checkLinkTools(NAMES);
    await removeStale(NAMES);
    const { accel } = await detectAccel();
    const prepared = await prepare(signal, { profile: false });
    const keys = [prepared.key];
    const pairs = await preparePairs(prepared, keys, signal);
    const tmp = tmpDirFor(process.pid, NAMES);
    await fsp.mkdir(tmp);
    scope.defer(`remove ${tmp}`, () => fsp.rm(tmp, { recursive: true, force: true }));
    const launch = await applyLocal(prepared, tmp, signal);
    // One local resume first (its reply is what the sessions' replies must equal), then one per round.
    const first = await resumeLocal(launch, signal);
    const local: Local = { runs: [], reply: first.reply };

    const s3 = await startBenchS3(path.join(tmp, 's3'), BUCKET);
    scope.defer('stop the object store', () => s3.close());
    const objects = new ObjectStore({ endpoint: s3.endpoint, credentials: BENCH_S3_CREDENTIALS });
    const overlayUrl = `s3://${BUCKET}/demo`;
    await pushOverlay(prepared.overlay.dir, overlayUrl, { objects, signal });
    objects.close();

    const n = netnsFor(process.pid, NAMES);
    await createLinkPair(scope, n);
    const server = await SynthServer.listen({
      host: n.hostAddr,
      port: 0,
      trust: keys.map((k) => k.pubFile),
      verifyBases: true,
      store: { dir: path.join(tmp, 'store'), maxBytes: 4 * 2 ** 30 },
      objects: { endpoint: s3.endpoint, credentials: BENCH_S3_CREDENTIALS, sources: [`s3://${BUCKET}`] },
    });
    scope.defer('close the synthesis server', () => server.close());
    const store = server.store!;
    const port = server.address().port;

    const perLink: { link: Link; summary: Record<Variant, Summary>; cells: Record<Variant, Cell> }[] = [];
    const partialRows: PartialRow[] = [];
    for (const link of links) {
      await shape(n, link);
      const cells = Object.fromEntries(
        VARIANTS.map((v): [Variant, Cell] => [v, { samples: [], failures: [] }]),
      ) as Record<Variant, Cell>;
      const partial = pairs.map((): PartialCells => ({ partial: [], cold: [], failures: [] }));
      for (let i = 0; i < runs; i++) {
        // The baseline in every round, beside the sessions, so it sees the same host.
        const l = await resumeLocal(launch, signal);
        local.runs.push({ resumeMs: l.resumeMs, firstResponseMs: l.firstResponseMs });
        process.stderr.write(`${link.name} ${i + 1}/${runs} local resume: first response ${l.firstResponseMs} ms\n`);
        await store.gc(0);
        for (const v of VARIANTS) {
          throwIfAborted(signal);
          if (v === 's3') await store.gc(0);
          try {
            const r = await runClient(
              n.ns,
              `${n.hostAddr}:${port}`,
              prepared.overlay.dir,
              'early-start',
              { path: workPath(WORK), ...(v === 's3' ? { overlayUrl } : {}) },
              CLIENT_TIMEOUT_S,
              signal,
              v,
            );
            const s = sampleOf(r, local);
            cells[v].samples.push(s);
            process.stderr.write(
              `${link.name} ${i + 1}/${runs} ${v}: first response ${s.firstResponseMs} ms, complete ${s.completeMs} ms, ${(s.linkBytes / MIB).toFixed(1)} MiB over the link, ${s.segmentsFromStore}/${s.segments} segments from the store, ${s.segmentsFromObjects} from the object store${s.replyMatchesLocal ? '' : ', REPLY DIFFERS from the local VM'}\n`,
            );
          } catch (err) {
            if (signal.aborted) throw abortReason(signal);
            const message = err instanceof Error ? err.message : String(err);
            cells[v].failures.push(message);
            process.stderr.write(`${link.name} ${i + 1}/${runs} ${v}: FAILED: ${message}\n`);
          }
        }
        const ctx = { ns: n.ns, server: `${n.hostAddr}:${port}`, store, signal };
        for (const [k, pair] of pairs.entries())
          await partialRound(ctx, pair, partial[k]!, `${link.name} ${i + 1}/${runs}`);
      }
      for (const [k, pair] of pairs.entries()) partialRows.push(partialRow(pair, link, partial[k]!));
      const summary = Object.fromEntries(VARIANTS.map((v) => [v, summarize(cells[v])])) as Record<Variant, Summary>;
      perLink.push({ link, summary, cells });
    }

    const localP50 = p50(local.runs.map((r) => r.firstResponseMs))!;
    const ov = prepared.overlay;
    const result = {
      bench: 'store',
      at: new Date().toISOString(),
      accel,
      cpus: os.cpus().length,
      loadAtStart,
      runs,
      request: workPath(WORK),
      overlay: { segmentsBytes: ov.segmentsBytes, manifestBytes: ov.manifestBytes, segments: ov.body.segments.length },
      localResume: {
        firstResponseMs: {
          p50: round(localP50),
          p90: round(
            percentile(
              local.runs.map((r) => r.firstResponseMs),
              0.9,
            ),
          ),
        },
        runs: local.runs,
      },
      links: perLink.map((p) => ({
        link: p.link,
        summary: p.summary,
        warmOverLocal:
          p.summary.warm.firstResponseMs.p50 === null
            ? null
            : +(p.summary.warm.firstResponseMs.p50 / localP50).toFixed(3),
        coldOverWarm:
          p.summary.warm.firstResponseMs.p50 && p.summary.cold.firstResponseMs.p50
            ? +(p.summary.cold.firstResponseMs.p50 / p.summary.warm.firstResponseMs.p50).toFixed(2)
            : null,
        samples: p.cells,
      })),
      partial: partialRows,
      storeStats: store.stats(),
    };
    const outDir = path.join(packageRoot(), 'bench', 'results');
    await fsp.mkdir(outDir, { recursive: true });
    const stamp = result.at.replace(/[:.]/g, '-');
    const file = path.join(outDir, `store-${stamp}.json`);
    const svg = path.join(outDir, `store-${stamp}.svg`);
    await fsp.writeFile(file, JSON.stringify(result, null, 2) + '\n');
    await fsp.writeFile(svg, await renderSvg(storeChart(result)));
    console.log(
      `store benchmark (${accel.toUpperCase()}, ${os.cpus().length} CPUs, ${runs} rounds per link, overlay ${(ov.segmentsBytes / MIB).toFixed(1)} MiB in ${ov.body.segments.length} segments)`,
    );
    console.log(`local resume of the launch VM (the baseline): first response p50 ${round(localP50)} ms`);
    for (const l of result.links) {
      console.log(`\n${l.link.name} (${l.link.rateMbit} Mbit/s)`);
      for (const v of VARIANTS) {
        const s = l.summary[v];
        console.log(
          `  ${v.padEnd(5)} first response p50 ${s.firstResponseMs.p50} ms (p90 ${s.firstResponseMs.p90}; accepted ${s.acceptedMs}, resumed ${s.resumedMs}), complete p50 ${s.completeMs.p50} ms, over the link ${((s.linkBytes ?? 0) / MIB).toFixed(2)} MiB, from the store ${s.segmentsFromStore}/${s.segments} segments, from the object store ${s.segmentsFromObjects}, replies matching ${s.repliesMatchingLocal}/${s.n}${s.failed ? `, ${s.failed} FAILED` : ''}`,
        );
      }
      console.log(`  warm / local resume: ${l.warmOverLocal}x (target ≤ 1.1); cold / warm: ${l.coldOverWarm}x`);
      for (const r of partialRows.filter((r) => r.link === l.link.name)) console.log(describeRow(r));
    }
    console.log(`\nresults: ${file}\nplot: ${svg}`);
  } finally {
    await scope.close();
    offSignals();
    detach();
  }
}
