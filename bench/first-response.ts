/**
 * Benchmark: time from a mobile client starting a synthesis to its first
 * offload response, per policy, over an emulated network link, with the real
 * server (lib/server, in this process, on the host) and the real client
 * (`vmsynth synth --json`, a child process inside a network namespace).
 *
 * Variants: early-start (resume at once, stream the rest in the background),
 * baseline (whole overlay, apply, then resume), demand-only (resume at once,
 * fetch only what the guest reads), and early-start with the overlay
 * re-packed in access order by `overlay profile` (skipped if profiling fails).
 *
 * The overlay: guest/examples/customize-demo.sh plus 16 MiB of random bytes
 * written to the disk at 48..64 MiB (the end of the 64 MiB test disk, over
 * the demo's trimmed scratch at 48..52; the first request reads 40..44), so
 * the overlay is ~17 MB and early start has something to hide. It is cached
 * in <cache>/bench/first-response/<hash of the base's manifest hashes, the
 * script and the key>, signed by a bench key kept there.
 *
 * The link: a veth pair between the host (server, 10.201.x.1/30) and a
 * network namespace (client, 10.201.x.2/30), both ends shaped with a tbf
 * qdisc, so the kernel's TCP sees a real bottleneck in each direction:
 *   wifi: 38 Mbit/s, burst 32 kbit, queue up to 50 ms (~240 KB, an AP-sized
 *         buffer); the effective 802.11n rate the brief asks for.
 *   lan:  1 Gbit/s, burst 256 KB (~2 ms of traffic: a smaller burst costs
 *         throughput at this rate), queue up to 10 ms.
 * No delay is added: this host's kernel has no netem (CONFIG_NET_SCH_NETEM
 * unset), so the RTT is the veth's (~0.05 ms). A real Wi-Fi hop adds 2-5 ms
 * per round trip; that mostly flatters demand-only (one round trip per
 * demand fetch) and is small against the seconds measured here.
 *
 * The floor: the physics bound for a first response = the bytes that must
 * cross the link (the manifest, plus the segments the guest needs, as
 * measured by demand-only's bytes sent before its first response, which are
 * all demanded) at the nominal link rate (TCP/IP headers ignored, so a true
 * lower bound), plus the first-response time of the same launch VM resumed
 * from a fully local copy (applyOverlay, then resumeBase; BENCH_RUNS runs).
 * That sum is not quite a bound: early start overlaps the segment transfer
 * with starting the VM. So the overlapped bound is reported too: manifest
 * transfer (the server needs it to start) + max(segment transfer, local
 * resume).
 *
 * Parameters (environment): BENCH_RUNS (default 10) sessions per link and
 * variant, interleaved round by round; BENCH_LINKS (default "wifi,lan");
 * BENCH_PROFILE=0 skips the profiled variant; BENCH_DROP_RUNS (default 5; 0
 * skips them) rounds of drops on the first link (bench/lib/drops.ts: early
 * start through a proxy that cuts the connection at 50% of the overlay and
 * keeps it down 1 s or 5 s, against the same proxy without a drop);
 * BENCH_KEEP_SESSIONS=0 runs the server without session keepers (images
 * mounted in the server process), to measure what the keeper costs.
 * Prints a table per link: p50/p90 of the client's timeline.firstResponse;
 * p50 of the VM resumed (client clock), of the segment bytes sent before
 * the first response (client count) and received before it (server count),
 * of blocked reads (server: guest reads that waited for a segment, whole
 * session: count / total ms) and of demand requests; replies whose memory and
 * disk digests equal the local VM's, of all sessions; the speedup
 * baseline/variant at p50; the floor and early-start's p50 against it.
 * Writes bench/results/first-response-<time>.json (summaries, every sample,
 * failures, load average) and a bar chart first-response-<time>.svg.
 *
 * Everything it creates (namespace, veth pair and its qdiscs, server,
 * temporary directories) is removed on the way out, on failure and on
 * Ctrl-C too; the namespace, veth and temporary directory of a killed run
 * are removed by the next (its VM and FUSE mount by the server's janitor).
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { SynthesizeResult } from '../lib/client/client.js';
import { attachLogger } from '../lib/core/log.js';
import { packageRoot } from '../lib/core/paths.js';
import { abortReason, Scope, throwIfAborted } from '../lib/core/scope.js';
import type { Policy } from '../lib/protocol/messages.js';
import { SynthServer } from '../lib/server/server.js';
import type { BlockedReadStats } from '../lib/synth/arrivals.js';
import { detectAccel } from '../lib/vm/accel.js';
import { workPath } from '../lib/vm/guest-app.js';
import {
  chosenLinks,
  measureLocal,
  positiveEnv,
  prepare,
  PROFILE_RUNS,
  RANDOM,
  WORK,
  type Local,
  type Prepared,
} from './lib/demo-overlay.js';
import { runClient } from './lib/client-run.js';
import {
  checkLinkTools,
  createLinkPair,
  netnsFor,
  removeStale,
  shape,
  tmpDirFor,
  type Link,
  type LinkNames,
  type Netns,
} from './lib/link.js';
import { measureRtt, printDrops, runDrops, summarizeDrops, type DropSummary, type DropVariant } from './lib/drops.js';
import { onSignals } from './lib/signals.js';
import { p50, percentile, round } from './lib/stats.js';
import { renderSvg } from './lib/chart.js';
import { firstResponseChart } from './lib/first-response-chart.js';

const MIB = 1 << 20;
const CLIENT_TIMEOUT_S = 300;
const NAMES: LinkNames = {
  ns: 'vmsfr-',
  dev: 'vfr',
  tmp: 'vmsynth-bench-first-response-',
  bench: 'first-response',
  octet: 201,
};

interface Variant {
  name: string;
  policy: Policy;
  overlay: string;
}

interface Sample {
  firstResponseMs: number;
  resumedMs: number | null;
  overlayCompleteMs: number | null;
  finishedMs: number | null;
  /** Counted by the client when handed to its socket; the kernel may still hold some of them. */
  bytesSentBeforeFirstResponse: number;
  /** Counted by the server as segments arrived. */
  serverBytesReceivedBeforeFirstResponse: number | null;
  overlayBytes: number;
  demandRequests: number;
  blockedReads: BlockedReadStats | null;
  outOfOrder: number | null;
  serverFirstResponseMs: number | null;
  /** The reply's memory and disk digests equal those of the fully local launch VM. */
  replyMatchesLocal: boolean;
}

// ---------------------------------------------------------------- measurements

function sampleOf(r: SynthesizeResult, local: Local): Sample {
  const s = r.serverStats as {
    blockedReads?: BlockedReadStats;
    outOfOrder?: number;
    firstResponseMs?: number;
    bytesReceivedBeforeFirstResponse?: number | null;
  };
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(r.firstResponse.body) as Record<string, unknown>;
  } catch {
    // not JSON: it cannot match
  }
  return {
    firstResponseMs: r.timeline.firstResponse!,
    resumedMs: r.timeline.resumed,
    overlayCompleteMs: r.timeline.overlayComplete,
    finishedMs: r.timeline.finished,
    bytesSentBeforeFirstResponse: r.bytesSentBeforeFirstResponse,
    serverBytesReceivedBeforeFirstResponse: s.bytesReceivedBeforeFirstResponse ?? null,
    overlayBytes: r.overlayBytes,
    demandRequests: r.demandRequests,
    blockedReads: s.blockedReads ?? null,
    outOfOrder: s.outOfOrder ?? null,
    serverFirstResponseMs: s.firstResponseMs ?? null,
    replyMatchesLocal:
      r.firstResponse.status === 200 &&
      typeof local.reply.memDigest === 'string' &&
      typeof local.reply.diskDigest === 'string' &&
      body.memDigest === local.reply.memDigest &&
      body.diskDigest === local.reply.diskDigest,
  };
}

interface Cell {
  samples: Sample[];
  failures: string[];
}

/** RUNS rounds over one link; each round runs every variant once, in an order rotated per round. */
async function runLink(
  n: Netns,
  port: number,
  link: Link,
  variants: Variant[],
  local: Local,
  runs: number,
  signal: AbortSignal,
): Promise<Record<string, Cell>> {
  const cells: Record<string, Cell> = Object.fromEntries(variants.map((v) => [v.name, { samples: [], failures: [] }]));
  for (let i = 0; i < runs; i++) {
    for (let k = 0; k < variants.length; k++) {
      const v = variants[(i + k) % variants.length]!;
      throwIfAborted(signal);
      const cell = cells[v.name]!;
      try {
        const s = sampleOf(
          await runClient(
            n.ns,
            `${n.hostAddr}:${port}`,
            v.overlay,
            v.policy,
            { path: workPath(WORK) },
            CLIENT_TIMEOUT_S,
            signal,
            v.name,
          ),
          local,
        );
        cell.samples.push(s);
        process.stderr.write(
          `${link.name} ${i + 1}/${runs} ${v.name}: first response ${s.firstResponseMs} ms, ${(s.bytesSentBeforeFirstResponse / MIB).toFixed(1)} MiB before${s.replyMatchesLocal ? '' : ', REPLY DIFFERS from the local VM'}\n`,
        );
      } catch (err) {
        if (signal.aborted) throw abortReason(signal);
        const message = err instanceof Error ? err.message : String(err);
        cell.failures.push(message);
        process.stderr.write(`${link.name} ${i + 1}/${runs} ${v.name}: FAILED: ${message}\n`);
      }
    }
  }
  return cells;
}

// ---------------------------------------------------------------- summary

function summarize(c: Cell) {
  const xs = c.samples;
  const br = xs.map((s) => s.blockedReads).filter((b): b is BlockedReadStats => b !== null);
  return {
    n: xs.length,
    failures: c.failures.length,
    firstResponseMs: {
      p50: round(p50(xs.map((s) => s.firstResponseMs))),
      p90: round(
        percentile(
          xs.map((s) => s.firstResponseMs),
          0.9,
        ),
      ),
    },
    resumedMs: round(p50(xs.flatMap((s) => (s.resumedMs === null ? [] : [s.resumedMs])))),
    bytesSentBeforeFirstResponse: round(p50(xs.map((s) => s.bytesSentBeforeFirstResponse))),
    serverBytesReceivedBeforeFirstResponse: round(
      p50(
        xs.flatMap((s) =>
          s.serverBytesReceivedBeforeFirstResponse === null ? [] : [s.serverBytesReceivedBeforeFirstResponse],
        ),
      ),
    ),
    overlayBytes: xs[0]?.overlayBytes ?? null,
    demandRequests: round(p50(xs.map((s) => s.demandRequests))),
    blockedReads: {
      count: round(p50(br.map((b) => b.count))),
      totalMs: round(p50(br.map((b) => b.totalMs))),
      maxMs: br.length ? Math.max(...br.map((b) => b.maxMs)) : null,
    },
    outOfOrder: round(p50(xs.flatMap((s) => (s.outOfOrder === null ? [] : [s.outOfOrder])))),
    repliesMatchingLocal: xs.filter((s) => s.replyMatchesLocal).length,
  };
}

type Summary = ReturnType<typeof summarize>;

interface Floor {
  neededBytes: number;
  neededFrom: string;
  manifestBytes: number;
  transferMs: number;
  localFirstResponseMs: number;
  /** transferMs + localFirstResponseMs. */
  floorMs: number;
  /** Manifest transfer + max(needed segments' transfer, local resume). */
  overlappedFloorMs: number;
  earlyStartOverFloor: number | null;
  earlyStartOverOverlappedFloor: number | null;
}

function floorFor(link: Link, s: Record<string, Summary>, manifestBytes: number, localP50: number): Floor {
  const from = s['demand-only']?.bytesSentBeforeFirstResponse != null ? 'demand-only' : 'early-start';
  const neededBytes = s[from]?.bytesSentBeforeFirstResponse ?? 0;
  const ms = (bytes: number) => (bytes * 8) / (link.rateMbit * 1e3);
  const transferMs = ms(neededBytes + manifestBytes);
  const floorMs = transferMs + localP50;
  const overlappedFloorMs = ms(manifestBytes) + Math.max(ms(neededBytes), localP50);
  const es = s['early-start']?.firstResponseMs.p50 ?? null;
  return {
    neededBytes,
    neededFrom: `${from} p50 bytes sent before first response`,
    manifestBytes,
    transferMs: Math.round(transferMs),
    localFirstResponseMs: Math.round(localP50),
    floorMs: Math.round(floorMs),
    overlappedFloorMs: Math.round(overlappedFloorMs),
    earlyStartOverFloor: es === null ? null : +(es / floorMs).toFixed(2),
    earlyStartOverOverlappedFloor: es === null ? null : +(es / overlappedFloorMs).toFixed(2),
  };
}

function speedup(s: Record<string, Summary>, over: string): number | null {
  const b = s.baseline?.firstResponseMs.p50;
  const e = s[over]?.firstResponseMs.p50;
  return b == null || e == null || e === 0 ? null : +(b / e).toFixed(2);
}

const mib = (n: number | null) => (n === null ? '—' : (n / MIB).toFixed(2));
const num = (n: number | null) => (n === null ? '—' : String(n));

function printLink(
  link: Link,
  s: Record<string, Summary>,
  floor: Floor,
  speedups: Record<string, number | null>,
): void {
  console.log(
    `\nlink ${link.name}: tbf ${link.rateMbit} Mbit/s each way (burst ${link.burst}, queue ${link.latency}), no added delay`,
  );
  console.log(
    `${'variant'.padEnd(22)} ${'p50 ms'.padStart(7)} ${'p90 ms'.padStart(7)} ${'resumed'.padStart(8)} ${'MiB before'.padStart(10)} ${'(server)'.padStart(8)} ${'overlay MiB'.padStart(11)} ${'blocked n/ms'.padStart(13)} ${'demand'.padStart(6)} ${'ok/n'.padStart(6)}`,
  );
  for (const [name, v] of Object.entries(s)) {
    console.log(
      `${name.padEnd(22)} ${num(v.firstResponseMs.p50).padStart(7)} ${num(v.firstResponseMs.p90).padStart(7)} ${num(v.resumedMs).padStart(8)} ${mib(v.bytesSentBeforeFirstResponse).padStart(10)} ${mib(v.serverBytesReceivedBeforeFirstResponse).padStart(8)} ${mib(v.overlayBytes).padStart(11)} ${`${num(v.blockedReads.count)}/${num(v.blockedReads.totalMs)}`.padStart(13)} ${num(v.demandRequests).padStart(6)} ${`${v.repliesMatchingLocal}/${v.n + v.failures}`.padStart(6)}`,
    );
  }
  for (const [name, x] of Object.entries(speedups)) console.log(`speedup baseline/${name} at p50: ${x ?? '—'}x`);
  console.log(
    `floor: (${mib(floor.neededBytes)} MiB needed + ${mib(floor.manifestBytes)} MiB manifest) at ${link.rateMbit} Mbit/s = ${floor.transferMs} ms + local resume p50 ${floor.localFirstResponseMs} ms = ${floor.floorMs} ms; early-start p50 = ${floor.earlyStartOverFloor ?? '—'}x the floor`,
  );
  console.log(
    `overlapped bound: manifest + max(segments, local resume) = ${floor.overlappedFloorMs} ms; early-start p50 = ${floor.earlyStartOverOverlappedFloor ?? '—'}x it`,
  );
}

// ---------------------------------------------------------------- the bench

function variantsOf(p: Prepared): Variant[] {
  const v: Variant[] = (['early-start', 'baseline', 'demand-only'] as const).map((policy) => ({
    name: policy,
    policy,
    overlay: p.overlay.dir,
  }));
  if (p.profiled && 'overlay' in p.profiled)
    v.push({ name: 'early-start+profile', policy: 'early-start', overlay: p.profiled.overlay.dir });
  return v;
}

export async function benchFirstResponse(): Promise<void> {
  const detach = attachLogger({ level: process.env.LOG_LEVEL ?? 'warn' });
  const controller = new AbortController();
  const signal = controller.signal;
  const offSignals = onSignals(controller, NAMES.bench);
  const scope = new Scope();
  try {
    const loadAtStart = os.loadavg().map((x) => +x.toFixed(2));
    const runs = positiveEnv('BENCH_RUNS', 10);
    const links = chosenLinks();
    await checkLinkTools(NAMES);
    await removeStale(NAMES);
    const { accel } = await detectAccel();
    const prepared = await prepare(signal);
    const tmp = tmpDirFor(process.pid, NAMES);
    await fsp.mkdir(tmp);
    scope.defer(`remove ${tmp}`, () => fsp.rm(tmp, { recursive: true, force: true }));
    const local = await measureLocal(prepared, tmp, runs, signal);
    const localP50 = p50(local.runs.map((r) => r.firstResponseMs))!;

    const n = netnsFor(process.pid, NAMES);
    await createLinkPair(scope, n);
    const server = await SynthServer.listen({
      host: n.hostAddr,
      port: 0,
      trust: [prepared.key.pubFile],
      verifyBases: true,
      keepSessions: process.env.BENCH_KEEP_SESSIONS !== '0',
    });
    scope.defer('close the synthesis server', () => server.close());
    const port = server.address().port;
    const variants = variantsOf(prepared);

    const perLink: {
      link: Link;
      summary: Record<string, Summary>;
      floor: Floor;
      speedup: Record<string, number | null>;
      cells: Record<string, Cell>;
    }[] = [];
    for (const link of links) {
      await shape(n, link);
      const cells = await runLink(n, port, link, variants, local, runs, signal);
      const summary = Object.fromEntries(Object.entries(cells).map(([k, c]) => [k, summarize(c)]));
      const floor = floorFor(link, summary, prepared.overlay.manifestBytes, localP50);
      const speedups = Object.fromEntries(
        variants.filter((v) => v.name !== 'baseline').map((v) => [v.name, speedup(summary, v.name)]),
      );
      perLink.push({ link, summary, floor, speedup: speedups, cells });
    }
    // Drops: on the first link, BENCH_DROP_RUNS rounds (default 5; 0 skips them).
    let drops: ReportInput['drops'] = null;
    const dropRuns = Number(process.env.BENCH_DROP_RUNS ?? 5);
    if (dropRuns > 0 && links[0]) {
      await shape(n, links[0]);
      const rttMs = await measureRtt(n);
      const variants = await runDrops({
        n,
        server: { host: n.hostAddr, port },
        overlay: prepared.overlay.dir,
        overlayBytes: prepared.overlay.segmentsBytes,
        path: workPath(WORK),
        runs: dropRuns,
        timeoutS: CLIENT_TIMEOUT_S,
        linkName: links[0].name,
        signal,
      });
      drops = { link: links[0].name, rttMs, runs: dropRuns, variants, summary: summarizeDrops(variants, rttMs) };
    }
    await report({ loadAtStart, accel, runs, prepared, local, perLink, drops });
  } finally {
    await scope.close();
    offSignals();
    detach();
  }
}

interface ReportInput {
  drops: {
    link: string;
    rttMs: number | null;
    runs: number;
    variants: DropVariant[];
    summary: DropSummary[];
  } | null;
  loadAtStart: number[];
  accel: string;
  runs: number;
  prepared: Prepared;
  local: Local;
  perLink: {
    link: Link;
    summary: Record<string, Summary>;
    floor: Floor;
    speedup: Record<string, number | null>;
    cells: Record<string, Cell>;
  }[];
}

async function report({ loadAtStart, accel, runs, prepared, local, perLink, drops }: ReportInput): Promise<void> {
  const ov = prepared.overlay;
  const profiled = prepared.profiled;
  const result = {
    bench: 'first-response',
    at: new Date().toISOString(),
    accel,
    cpus: os.cpus().length,
    loadavg: { atStart: loadAtStart, atEnd: os.loadavg().map((x) => +x.toFixed(2)) },
    runs,
    request: workPath(WORK),
    base: prepared.base.name,
    overlay: {
      dir: ov.dir,
      segmentsBytes: ov.segmentsBytes,
      manifestBytes: ov.manifestBytes,
      segments: ov.body.segments.length,
      cached: prepared.cached,
      createMs: prepared.createMs,
      randomDisk: RANDOM,
    },
    profiled:
      profiled === null
        ? null
        : 'error' in profiled
          ? profiled
          : { dir: profiled.overlay.dir, cached: profiled.cached, ms: profiled.ms, runs: PROFILE_RUNS },
    localResume: {
      firstResponseMs: {
        p50: round(p50(local.runs.map((r) => r.firstResponseMs))),
        p90: round(
          percentile(
            local.runs.map((r) => r.firstResponseMs),
            0.9,
          ),
        ),
      },
      resumeMs: { p50: round(p50(local.runs.map((r) => r.resumeMs))) },
      samples: local.runs,
    },
    links: Object.fromEntries(
      perLink.map((p) => [
        p.link.name,
        {
          link: { ...p.link, delay: 'none (no netem in this kernel)' },
          summary: p.summary,
          speedupBaselineOver: p.speedup,
          floor: p.floor,
          samples: Object.fromEntries(Object.entries(p.cells).map(([k, c]) => [k, c.samples])),
          failures: Object.fromEntries(
            Object.entries(p.cells)
              .filter(([, c]) => c.failures.length)
              .map(([k, c]) => [k, c.failures]),
          ),
        },
      ]),
    ),
    drops,
  };
  const outDir = path.join(packageRoot(), 'bench', 'results');
  await fsp.mkdir(outDir, { recursive: true });
  const stamp = result.at.replace(/[:.]/g, '-');
  const file = path.join(outDir, `first-response-${stamp}.json`);
  const svg = path.join(outDir, `first-response-${stamp}.svg`);
  await fsp.writeFile(file, JSON.stringify(result, null, 2) + '\n');
  await fsp.writeFile(
    svg,
    await renderSvg(
      firstResponseChart(
        `first response, ${accel.toUpperCase()}, n=${runs} per bar, overlay ${mib(ov.segmentsBytes)} MiB`,
        perLink,
      ),
    ),
  );

  console.log(
    `first-response benchmark (${accel.toUpperCase()}, ${os.cpus().length} CPUs, ${runs} sessions per link and variant, request ${result.request})`,
  );
  console.log(
    `overlay ${mib(ov.segmentsBytes)} MiB in ${ov.body.segments.length} segments + ${mib(ov.manifestBytes)} MiB manifest${prepared.cached ? ' (cached)' : ''}; profiled variant: ${profiled === null ? 'off' : 'error' in profiled ? `failed (${profiled.error})` : 'yes'}`,
  );
  console.log(
    `local resume of the launch VM (the floor's VM part): first response p50 ${result.localResume.firstResponseMs.p50} ms, p90 ${result.localResume.firstResponseMs.p90} ms`,
  );
  for (const p of perLink) printLink(p.link, p.summary, p.floor, p.speedup);
  if (drops) printDrops(drops.link, drops.rttMs, drops.summary);
  console.log(`\nresults: ${file}\nplot: ${svg}`);
}
