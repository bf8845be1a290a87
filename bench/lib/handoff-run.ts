/**
 * One run of the handoff bench: a client in its namespace synthesizes an
 * app's overlay on cloudlet A, builds the app's state with a few requests,
 * then sends a steady stream of small requests that count on, one at a time,
 * while the VM moves to B, either by `vmsynth handoff` (the client follows)
 * or by QEMU's own live migration with its disk (the stream is sent straight
 * to the guest and turns to B's forward once B runs). Returns what the bench
 * reports of it: bytes over A-B, the whole move, the stop, the longest gap
 * between replies, and whether the app counted every request once.
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { packageRoot } from '../../lib/core/paths.js';
import { Scope } from '../../lib/core/scope.js';
import type { Base } from '../../lib/vm/base.js';
import { DOMAIN_PREFIX, type Libvirt } from '../../lib/vm/libvirt.js';
import { jsonLines } from './child-io.js';
import { VMSYNTH_CLI } from './cloudlet-server.js';
import type { Link } from './link.js';
import { migrateUnderLoad, type MigrationUnderLoad } from './qemu-migration.js';
import { nodeScriptIn, type TopologyNode } from './topology.js';

const run = promisify(execFile);

export const MODES = ['early', 'whole', 'migrate'] as const;
export type Mode = (typeof MODES)[number];

/** An app to hand off: its overlay, and the requests that build its state and then count on. */
export interface HandoffApp {
  name: string;
  /** The overlay's directory. */
  overlay: string;
  base: Base;
  /** Requests that build the app's state first, `times` of them; `counts`: each counts on the counter too. */
  build: { method: 'GET' | 'POST'; path: string; bodyFile?: string; times: number; counts: boolean };
  /** The stream's small request (counts on by one) and the counter's read (a JSON `{count}`). */
  stream: string;
  countPath: string;
}

export interface Sample {
  /** ms since the handoff was asked for (negative: before). */
  at: number;
  latencyMs: number;
  on: 'A' | 'B';
}

export interface RunResult {
  app: string;
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

export interface RunContext {
  nodes: Record<'a' | 'b' | 'client', TopologyNode>;
  /** A's run directory (a `vmsynth handoff` on A needs it), and both servers' HOST:PORT. */
  runDirA: string;
  addrA: string;
  addrB: string;
  token: string;
  lv: Libvirt;
  /** The baseline's options: QEMU's auto-converge (`virsh migrate --auto-converge`), and the bench's abort. */
  migration: { autoConverge: boolean; signal: AbortSignal };
}

/** The client's part, in its namespace: JSON lines on stdout. */
const CLIENT = `
const { ClientSession } = await import(${JSON.stringify(pathToFileURL(path.join(packageRoot(), 'dist', 'lib', 'client', 'session.js')).href)});
const { readFileSync } = await import('node:fs');
const [overlay, from, to, token, mode, appJson] = process.argv.slice(1);
const app = JSON.parse(appJson);
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const s = await ClientSession.open({ server: from, overlay, token });
await s.complete;
if (mode === 'warm') { await s.finish(); say({ warm: true }); process.exit(0); }
const get = async (p) => {
  const r = await s.offload({ method: 'GET', path: p });
  if (r.status !== 200) throw new Error('GET ' + p + ': HTTP ' + r.status + ' ' + r.body.toString().slice(0, 300));
  return JSON.parse(r.body.toString());
};
const body = app.build.bodyFile ? readFileSync(app.build.bodyFile) : undefined;
for (let i = 0; i < app.build.times; i++) {
  const r = await s.offload({ method: app.build.method, path: app.build.path, body });
  if (r.status !== 200) throw new Error('building state: HTTP ' + r.status + ' ' + r.body.toString().slice(0, 300));
}
if (mode === 'hold') {
  say({ session: s.id });
  await new Promise((r) => process.stdin.once('data', r));
  await s.finish();
  process.exit(0);
}
let sent = app.build.counts ? app.build.times : 0, movedAt = null, askedAt = null;
const samples = [];
process.stdin.on('data', () => { askedAt ??= performance.now(); });
say({ session: s.id });
const until = performance.now() + 180000;
while (performance.now() < until && (movedAt === null || performance.now() - movedAt < 1500)) {
  const t = performance.now();
  await get(app.stream);
  sent++;
  const now = performance.now();
  const on = s.server.host + ':' + s.server.port === to ? 'B' : 'A';
  if (on === 'B' && movedAt === null) movedAt = now;
  samples.push({ t: now, latencyMs: now - t, on });
}
const after = await get(app.countPath);
const base = askedAt ?? samples[0].t;
say({ result: { sent, count: after.count, samples: samples.map((x) => ({ at: Math.round(x.t - base), latencyMs: Math.round(x.latencyMs), on: x.on })) } });
await s.finish();
process.exit(0);
`;

/** The client script in its namespace; `onLine` sees each JSON line. */
export function client(
  node: TopologyNode,
  args: { overlay: string; from: string; to: string; token: string; mode: 'warm' | 'hold' | 'run'; app: HandoffApp },
  onLine: (o: Record<string, unknown>, c: ChildProcess) => void = () => undefined,
): Promise<void> {
  const { overlay, from, to, token, mode, app } = args;
  const spec = JSON.stringify({ build: app.build, stream: app.stream, countPath: app.countPath });
  const c = nodeScriptIn(node.ns, CLIENT, [overlay, from, to, token, mode, spec], ['pipe', 'pipe', 'pipe']);
  let err = '';
  jsonLines(c.stdout!, (o) => onLine(o, c));
  c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise<void>((resolve, reject) =>
    c.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`the client exited ${code}: ${err.slice(-1500)}`)),
    ),
  );
}

const longestGap = (samples: Sample[]) =>
  Math.max(...samples.map((s, i) => (i === 0 ? s.latencyMs : s.at - samples[i - 1]!.at)));

/** A `vmsynth handoff` (early start, or `--whole`) under the client's stream. */
export async function handoffRun(
  ctx: RunContext,
  app: HandoffApp,
  link: Link,
  mode: 'early' | 'whole',
): Promise<RunResult> {
  let report: Record<string, unknown> | null = null;
  let result: { sent: number; count: number; samples: Sample[] } | null = null;
  let asked: Promise<void> = Promise.resolve();
  const args = { overlay: app.overlay, from: ctx.addrA, to: ctx.addrB, token: ctx.token, mode: 'run' as const, app };
  await client(ctx.nodes.client, args, (o, c) => {
    if (typeof o.session === 'string') {
      const session = o.session;
      asked = (async () => {
        await new Promise((r) => setTimeout(r, 1500));
        c.stdin!.write('go\n');
        const cli = [VMSYNTH_CLI, 'handoff', '--session', session, '--to', ctx.addrB, '--json'];
        if (mode === 'whole') cli.push('--whole');
        const { stdout } = await run(process.execPath, cli, {
          env: { ...process.env, VMSYNTH_RUN_DIR: ctx.runDirA },
        });
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
  const deltaBytes = r.passes.reduce((x, p) => x + p.bytes, 0) + r.final.bytes + r.final.deviceStateBytes;
  return {
    app: app.name,
    link: link.name,
    mode,
    bytesOverAB: r.bytesSent,
    deltaBytes,
    passes: r.passes.map((p) => p.bytes),
    lastPassBytes: r.final.bytes,
    deviceStateBytes: r.final.deviceStateBytes,
    totalMs: r.totalMs,
    stoppedMs: r.stoppedMs,
    downtimeMs: longestGap(res.samples),
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
export async function migrateRun(
  ctx: RunContext,
  app: HandoffApp,
  link: Link,
  progress: (what: string) => void,
): Promise<RunResult> {
  const scope = new Scope();
  let m: MigrationUnderLoad | null = null;
  let said = 0;
  let moved: Promise<void> = Promise.resolve();
  const built = app.build.counts ? app.build.times : 0;
  try {
    const args = { overlay: app.overlay, from: ctx.addrA, to: '', token: ctx.token, mode: 'hold' as const, app };
    await client(ctx.nodes.client, args, (o, c) => {
      if (typeof o.session !== 'string') return;
      moved = (async () => {
        try {
          const domain = await sessionDomain(ctx.lv, ctx.runDirA);
          m = await migrateUnderLoad(scope, {
            lv: ctx.lv,
            base: app.base,
            domain,
            a: ctx.nodes.a,
            b: ctx.nodes.b,
            path: app.stream,
            countPath: app.countPath,
            leadMs: 1500,
            tailMs: 1500,
            ...ctx.migration,
            progress: (what) => {
              if (performance.now() - said < 5000 && !what.includes('failed')) return;
              said = performance.now();
              progress(what);
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
  return {
    app: app.name,
    link: link.name,
    mode: 'migrate',
    bytesOverAB: r.bytesOverAB,
    deltaBytes: r.ramBytes + r.diskBytes,
    passes: [],
    lastPassBytes: 0,
    deviceStateBytes: 0,
    totalMs: Math.round(r.totalMs),
    stoppedMs: r.qemuDowntimeMs,
    downtimeMs: longestGap(r.samples),
    requests: r.answered + built,
    // Its state went on (the count includes every answered request); a request the source
    // ran but whose reply it never sent (the client's connection stays behind) counts too.
    countedOnce: r.countAfter >= r.answered + built,
    demandFetches: 0,
    samples: r.samples,
    migration: {
      ramBytes: r.ramBytes,
      diskBytes: r.diskBytes,
      qemuDowntimeMs: r.qemuDowntimeMs,
      answered: r.answered,
      countAfter: r.countAfter,
      repliesLost: r.countAfter - (r.answered + built),
    },
  };
}
