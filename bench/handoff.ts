/**
 * `npm run bench -- handoff`: a live handoff between two cloudlets, each a
 * `vmsynth serve` in a network namespace of its own, the client in a third
 * (bench/lib/topology.ts), the A-B link shaped to each link in turn (38
 * Mbit/s, 1 Gbit/s). B holds the overlay in its store already (a client
 * synthesized it there first: the fleet has it), so the A-B link carries
 * the handoff alone.
 *
 * Each run: the client synthesizes the demo overlay on A, builds state
 * (requests that write pages and disk blocks), then sends a steady stream of
 * small requests, one at a time; `vmsynth handoff` moves the VM to B (early
 * start, the default), and the client follows. Measured: bytes over A-B (the
 * source's count, frames included) against the compressed delta (passes,
 * last pass, device state); the whole handoff; the stop (stop to running on
 * B); the downtime the client saw, as the longest gap between replies.
 * Baselines in the same run: the safe mode (`--whole`: B resumes only once
 * it holds every chunk), and QEMU's own live migration of the same VM with
 * its disk, done as libvirt's `virsh migrate --live --copy-storage-all`
 * does it, over the same link (bench/lib/qemu-migration.ts), under the
 * same stream sent straight to the guest.
 *
 * Writes bench/results/handoff-<time>.json and an SVG of the request stream
 * across each handoff.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { packageRoot } from '../lib/core/paths.js';
import { Scope } from '../lib/core/scope.js';
import { detectAccel } from '../lib/vm/accel.js';
import type { Base } from '../lib/vm/base.js';
import { DOMAIN_PREFIX, Libvirt } from '../lib/vm/libvirt.js';
import { renderSvg, VEGA_LITE_SCHEMA, type TopLevelSpec } from './lib/chart.js';
import { prepare } from './lib/demo-overlay.js';
import { jsonLines } from './lib/child-io.js';
import { startCloudlet, VMSYNTH_CLI } from './lib/cloudlet-server.js';
import { LINKS, type Link } from './lib/link.js';
import { migrateUnderLoad, type MigrationUnderLoad } from './lib/qemu-migration.js';
import { percentile, round } from './lib/stats.js';
import { createTopology, netnsPath, removeStaleTopology, setLinks, type TopologyNode } from './lib/topology.js';

const run = promisify(execFile);
const CLI = VMSYNTH_CLI;
const PREFIX = 'vmshb-';
const TOKEN = 'vmsynth-bench-handoff';
const MODES = ['early', 'whole', 'migrate'] as const;
type Mode = (typeof MODES)[number];
const MODE_NAMES: Record<Mode, string> = {
  early: 'vmsynth handoff, early start',
  whole: 'vmsynth handoff, safe mode (--whole)',
  migrate: "QEMU's live migration with its disk (libvirt's way)",
};

interface Sample {
  /** ms since the handoff was asked for (negative: before). */
  at: number;
  latencyMs: number;
  on: 'A' | 'B';
}

interface RunResult {
  link: string;
  mode: Mode;
  bytesOverAB: number;
  deltaBytes: number;
  passes: number[];
  lastPassBytes: number;
  deviceStateBytes: number;
  totalMs: number;
  stoppedMs: number;
  downtimeMs: number;
  requests: number;
  countedOnce: boolean;
  demandFetches: number;
  samples: Sample[];
  /** The baseline's own figures (mode migrate): RAM and devices, and disk, as QEMU counted them. */
  migration?: {
    ramBytes: number;
    diskBytes: number;
    qemuDowntimeMs: number;
    answered: number;
    countAfter: number;
    /** Requests the VM ran whose replies were lost with the source's connection. */
    repliesLost: number;
  };
}

/** The client's part, in its namespace: JSON lines on stdout. */
const CLIENT = `
const { ClientSession } = await import(${JSON.stringify(pathToFileURL(path.join(packageRoot(), 'dist', 'lib', 'client', 'session.js')).href)});
const [overlay, from, to, token, mode] = process.argv.slice(1);
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const s = await ClientSession.open({ server: from, overlay, token });
await s.complete;
if (mode === 'warm') { await s.finish(); say({ warm: true }); process.exit(0); }
const add = async (q) => JSON.parse((await s.offload({ method: 'GET', path: '/state?' + q })).body.toString());
for (let i = 0; i < 5; i++) await add('add=1&touch_mb=4&disk_mb=1&disk_off_mb=56');
if (mode === 'hold') {
  say({ session: s.id });
  await new Promise((r) => process.stdin.once('data', r));
  await s.finish();
  process.exit(0);
}
let sent = 5, movedAt = null, askedAt = null;
const samples = [];
process.stdin.on('data', () => { askedAt ??= performance.now(); });
say({ session: s.id });
const until = performance.now() + 120000;
while (performance.now() < until && (movedAt === null || performance.now() - movedAt < 1500)) {
  const t = performance.now();
  await add('add=1');
  sent++;
  const now = performance.now();
  const on = s.server.host + ':' + s.server.port === to ? 'B' : 'A';
  if (on === 'B' && movedAt === null) movedAt = now;
  samples.push({ t: now, latencyMs: now - t, on });
}
const after = await add('');
const base = askedAt ?? samples[0].t;
say({ result: { sent, count: after.count, samples: samples.map((x) => ({ at: Math.round(x.t - base), latencyMs: Math.round(x.latencyMs), on: x.on })) } });
await s.finish();
process.exit(0);
`;

/** `vmsynth serve` in a node's namespace, trusting the bench key; resolves with its run directory once it listens. */
async function serve(scope: Scope, node: TopologyNode, tmp: string, trust: string): Promise<string> {
  const env = { VMSYNTH_TOKEN: TOKEN, VMSYNTH_HANDOFF_TOKEN: TOKEN, VMSYNTH_TRUST: trust };
  const c = await startCloudlet(scope, {
    name: node.name,
    dir: tmp,
    listen: { host: node.addr, port: 8021 },
    ns: node.ns,
    env,
  });
  return c.runDir;
}

/** The client script in its namespace; `onLine` sees each JSON line. */
function client(node: TopologyNode, args: string[], onLine: (o: Record<string, unknown>, c: ChildProcess) => void) {
  const c = spawn(
    'nsenter',
    [`--net=${netnsPath(node.ns)}`, process.execPath, '--input-type=module', '-e', CLIENT, ...args],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  let err = '';
  jsonLines(c.stdout, (o) => onLine(o, c));
  c.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise<void>((resolve, reject) =>
    c.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`the client exited ${code}: ${err.slice(-1500)}`)),
    ),
  );
}

async function oneRun(
  nodes: Record<'a' | 'b' | 'client', TopologyNode>,
  runDirA: string,
  overlay: string,
  link: Link,
  mode: Mode,
): Promise<RunResult> {
  let report: Record<string, unknown> | null = null;
  let result: { sent: number; count: number; samples: Sample[] } | null = null;
  let asked: Promise<void> = Promise.resolve();
  const b = `${nodes.b.addr}:8021`;
  await client(nodes.client, [overlay, `${nodes.a.addr}:8021`, b, TOKEN, 'run'], (o, c) => {
    if (typeof o.session === 'string') {
      const session = o.session;
      asked = (async () => {
        await new Promise((r) => setTimeout(r, 1500));
        c.stdin!.write('go\n');
        const args = [
          CLI,
          'handoff',
          '--session',
          session,
          '--to',
          b,
          '--json',
          ...(mode === 'whole' ? ['--whole'] : []),
        ];
        const { stdout } = await run(process.execPath, args, { env: { ...process.env, VMSYNTH_RUN_DIR: runDirA } });
        report = JSON.parse(stdout) as Record<string, unknown>;
      })();
      asked.catch(() => undefined); // (awaited below, once the client is done)
    }
    if (o.result) result = o.result as typeof result;
  });
  await asked;
  if (!report || !result) throw new Error('the run did not complete');
  const r = report as {
    bytesSent: number;
    passes: Array<{ bytes: number }>;
    final: { bytes: number; deviceStateBytes: number };
    totalMs: number;
    stoppedMs: number;
    demandFetches: number;
  };
  const res = result as { sent: number; count: number; samples: Sample[] };
  const gaps = res.samples.map((s, i) => (i === 0 ? s.latencyMs : s.at - res.samples[i - 1]!.at));
  const deltaBytes = r.passes.reduce((x, p) => x + p.bytes, 0) + r.final.bytes + r.final.deviceStateBytes;
  return {
    link: link.name,
    mode,
    bytesOverAB: r.bytesSent,
    deltaBytes,
    passes: r.passes.map((p) => p.bytes),
    lastPassBytes: r.final.bytes,
    deviceStateBytes: r.final.deviceStateBytes,
    totalMs: r.totalMs,
    stoppedMs: r.stoppedMs,
    downtimeMs: Math.max(...gaps),
    requests: res.sent,
    countedOnce: res.count === res.sent,
    demandFetches: r.demandFetches,
    samples: res.samples,
  };
}

/** The session's domain on A: the one running whose run directory is in A's. */
async function sessionDomain(lv: Libvirt, runDirA: string): Promise<string> {
  for (const id of await fsp.readdir(runDirA))
    if (/^[0-9a-f]{12}$/.test(id) && (await lv.isActive(`${DOMAIN_PREFIX}${id}`))) return `${DOMAIN_PREFIX}${id}`;
  throw new Error(`no running session domain under ${runDirA}`);
}

/**
 * The baseline: the same VM, after the same requests, moved by QEMU's live migration with
 * its disk (bench/lib/qemu-migration.ts) over the same A-B link, under the same stream.
 */
async function migrateRun(
  nodes: Record<'a' | 'b' | 'client', TopologyNode>,
  runDirA: string,
  overlay: string,
  link: Link,
  lv: Libvirt,
  base: Base,
): Promise<RunResult> {
  const scope = new Scope();
  let m: MigrationUnderLoad | null = null;
  let said = 0;
  let moved: Promise<void> = Promise.resolve();
  try {
    await client(nodes.client, [overlay, `${nodes.a.addr}:8021`, '', TOKEN, 'hold'], (o, c) => {
      if (typeof o.session !== 'string') return;
      moved = (async () => {
        try {
          const domain = await sessionDomain(lv, runDirA);
          m = await migrateUnderLoad(scope, {
            lv,
            base,
            domain,
            a: nodes.a,
            b: nodes.b,
            path: '/state?add=1',
            countPath: '/state?',
            leadMs: 1500,
            tailMs: 1500,
            progress: (what) => {
              if (performance.now() - said < 2000 && !what.includes('failed')) return;
              said = performance.now();
              process.stderr.write(`bench: ${link.name} ${what}\n`);
            },
          });
        } finally {
          c.stdin!.write('go\n');
        }
      })();
      moved.catch(() => undefined); // (awaited below, once the client is done)
    });
    await moved;
  } finally {
    await scope.close();
  }
  const r = m as MigrationUnderLoad | null;
  if (!r) throw new Error('the migration did not complete');
  const gaps = r.samples.map((s, i) => (i === 0 ? s.latencyMs : s.at - r.samples[i - 1]!.at));
  return {
    link: link.name,
    mode: 'migrate',
    bytesOverAB: r.bytesOverAB,
    deltaBytes: r.ramBytes + r.diskBytes,
    passes: [],
    lastPassBytes: 0,
    deviceStateBytes: 0,
    totalMs: Math.round(r.totalMs),
    stoppedMs: r.qemuDowntimeMs,
    downtimeMs: Math.max(...gaps),
    requests: r.answered + 5,
    // Its state went on (the count includes every answered request); a request the source
    // ran but whose reply it never sent (the client's connection stays behind) counts too.
    countedOnce: r.countAfter >= r.answered + 5,
    demandFetches: 0,
    samples: r.samples,
    migration: {
      ramBytes: r.ramBytes,
      diskBytes: r.diskBytes,
      qemuDowntimeMs: r.qemuDowntimeMs,
      answered: r.answered,
      countAfter: r.countAfter,
      repliesLost: r.countAfter - (r.answered + 5),
    },
  };
}

/** The request stream across the first handoff of each link and mode: reply latency against time. */
export function handoffChart(runs: Array<Pick<RunResult, 'link' | 'mode' | 'samples'>>): TopLevelSpec {
  const first = runs.filter((r, i) => runs.findIndex((x) => x.link === r.link && x.mode === r.mode) === i);
  const values = first.flatMap((r) =>
    r.samples
      .filter((s) => s.at > -1000 && s.at < (r.samples.find((x) => x.on === 'B')?.at ?? 4500) + 1500)
      .map((s) => ({
        at: s.at,
        latencyMs: s.latencyMs,
        on: s.on,
        run: `A-B ${r.link}, ${MODE_NAMES[r.mode]}`,
      })),
  );
  return {
    $schema: VEGA_LITE_SCHEMA,
    title: {
      text: 'Requests across a handoff (one at a time): each reply, when it came and how long it took',
      anchor: 'start',
    },
    data: { values },
    // Each run on its own time axis: QEMU's migration takes far longer than a handoff.
    resolve: { scale: { x: 'independent' } },
    facet: {
      row: {
        field: 'run',
        type: 'nominal',
        title: null,
        header: { labelAngle: 0, labelAlign: 'left', labelOrient: 'top', labelFontSize: 11 },
      },
    },
    spec: {
      width: 640,
      height: 90,
      mark: { type: 'line', strokeWidth: 1 },
      encoding: {
        x: { field: 'at', type: 'quantitative', title: 'ms since the handoff was asked for' },
        y: { field: 'latencyMs', type: 'quantitative', title: 'reply ms', scale: { type: 'log' } },
        color: { field: 'on', type: 'nominal', title: 'served by', scale: { domain: ['A', 'B'] } },
      },
    },
  };
}

export async function benchHandoff(): Promise<void> {
  const runs = Math.max(1, Number(process.env.BENCH_HANDOFF_RUNS) || 3);
  const links = (process.env.BENCH_HANDOFF_LINKS ?? 'wifi,lan')
    .split(',')
    .map((n) => LINKS[n]!)
    .filter(Boolean);
  const modes = (process.env.BENCH_HANDOFF_MODES ?? MODES.join(','))
    .split(',')
    .filter((m): m is Mode => (MODES as readonly string[]).includes(m));
  const scope = new Scope();
  const ac = new AbortController();
  try {
    const accel = (await detectAccel()).accel;
    const p = await prepare(ac.signal, { profile: false });
    const lv = await Libvirt.connect();
    scope.defer('close libvirt', () => lv.close());
    await removeStaleTopology(PREFIX);
    const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-bench-handoff-'));
    scope.defer(`remove ${tmp}`, () => fsp.rm(tmp, { recursive: true, force: true }));
    const topo = await createTopology(scope, {
      prefix: PREFIX,
      octet: 204,
      links: { clientA: LINKS.lan!, clientB: LINKS.lan!, ab: links[0]! },
    });
    const runDirA = await serve(scope, topo.nodes.a, tmp, p.key.pubFile);
    await serve(scope, topo.nodes.b, tmp, p.key.pubFile);
    const overlay = p.overlay.dir;
    // B's store takes the overlay first: what crosses A-B in a handoff is then the delta alone.
    await client(topo.nodes.client, [overlay, `${topo.nodes.b.addr}:8021`, '', TOKEN, 'warm'], () => undefined);
    const results: RunResult[] = [];
    const failures: Array<{ link: string; mode: Mode; run: number; error: string }> = [];
    for (const link of links) {
      await setLinks(topo, { ...topo.links, ab: link });
      for (let i = 0; i < runs; i++)
        for (const mode of modes) {
          if (mode === 'migrate') {
            // QEMU's migration left the guest dead on B in some runs (docs/benchmarks.md): counted, not fatal.
            const got = await migrateRun(topo.nodes, runDirA, overlay, link, lv, p.base).catch((err: Error) => {
              failures.push({ link: link.name, mode, run: i + 1, error: err.message.slice(0, 4000) });
              process.stderr.write(
                `bench: handoff ${link.name} ${mode} #${i + 1} failed: ${err.message.slice(0, 300)}\n`,
              );
              return null;
            });
            if (!got) continue;
            results.push(got);
          } else results.push(await oneRun(topo.nodes, runDirA, overlay, link, mode));
          const r = results.at(-1)!;
          process.stderr.write(
            `bench: handoff ${link.name} ${mode} #${i + 1}: downtime ${Math.round(r.downtimeMs)} ms, stop ${r.stoppedMs} ms, total ${r.totalMs} ms, ${r.bytesOverAB} bytes over A-B (delta ${r.deltaBytes})\n`,
          );
        }
    }
    const summary = links.flatMap((l) =>
      modes.map((mode) => {
        const rs = results.filter((r) => r.link === l.name && r.mode === mode);
        const q = (f: (r: RunResult) => number, pct = 0.5) => round(percentile(rs.map(f), pct));
        return {
          link: l.name,
          rateMbit: l.rateMbit,
          mode,
          n: rs.length,
          failed: failures.filter((f) => f.link === l.name && f.mode === mode).length,
          downtimeMs: { p50: q((r) => r.downtimeMs), p90: q((r) => r.downtimeMs, 0.9) },
          stoppedMs: q((r) => r.stoppedMs),
          totalMs: q((r) => r.totalMs),
          bytesOverAB: q((r) => r.bytesOverAB),
          deltaBytes: q((r) => r.deltaBytes),
          bytesOverDelta: round(
            percentile(
              rs.map((r) => r.bytesOverAB / r.deltaBytes),
              0.5,
            ),
            3,
          ),
          countedOnce: rs.every((r) => r.countedOnce),
        };
      }),
    );
    const at = new Date().toISOString();
    const out = {
      bench: 'handoff',
      at,
      accel,
      cpus: os.cpus().length,
      runs,
      overlayBytes: p.overlay.segmentsBytes,
      summary,
      failures,
      results,
    };
    const dir = path.join(packageRoot(), 'bench', 'results');
    await fsp.mkdir(dir, { recursive: true });
    const stamp = at.replace(/[:.]/g, '-');
    const file = path.join(dir, `handoff-${stamp}.json`);
    const svg = path.join(dir, `handoff-${stamp}.svg`);
    await fsp.writeFile(file, JSON.stringify(out, null, 2) + '\n');
    await fsp.writeFile(svg, await renderSvg(handoffChart(results)));
    console.log(
      `handoff benchmark (${accel.toUpperCase()}, ${os.cpus().length} CPUs, ${runs} runs per link and mode; A-B link shaped, B holding the overlay)`,
    );
    for (const l of links) {
      console.log(`\n${l.name} (${l.rateMbit} Mbit/s A-B)`);
      for (const s of summary.filter((x) => x.link === l.name))
        console.log(
          `  ${s.mode.padEnd(7)} downtime p50 ${s.downtimeMs.p50} ms (p90 ${s.downtimeMs.p90}), stop ${s.stoppedMs} ms, total ${s.totalMs} ms, over A-B ${s.bytesOverAB} bytes` +
            (s.mode === 'migrate'
              ? ` (QEMU counted ${s.deltaBytes} for RAM, devices and disk), the app's state went on: ${s.countedOnce}; the guest died on B in ${s.failed} of ${s.n + s.failed} runs`
              : ` = ${s.bytesOverDelta}x the compressed delta (target ≤ 1.2), every request once: ${s.countedOnce}`),
        );
      const e = summary.find((x) => x.link === l.name && x.mode === 'early');
      const w = summary.find((x) => x.link === l.name && x.mode === 'whole');
      const m = summary.find((x) => x.link === l.name && x.mode === 'migrate');
      if (e?.downtimeMs.p50 && w?.downtimeMs.p50)
        console.log(
          `  early start / safe mode downtime: ${round(e.downtimeMs.p50 / w.downtimeMs.p50, 2)}x (target downtime ≤ 1000 ms)`,
        );
      if (m?.bytesOverAB && e?.bytesOverAB && m.totalMs && e.totalMs && m.downtimeMs.p50 && e.downtimeMs.p50)
        console.log(
          `  QEMU's migration / early start: ${round(m.bytesOverAB / e.bytesOverAB, 1)}x the bytes, ${round(m.totalMs / e.totalMs, 1)}x the time, ${round(m.downtimeMs.p50 / e.downtimeMs.p50, 2)}x the downtime (target ≥ 10x bytes and time at 38 Mbit/s)`,
        );
    }
    console.log(`\nresults: ${file}\nplot: ${svg}`);
  } finally {
    await scope.close();
  }
}
