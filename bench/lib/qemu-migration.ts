/**
 * The handoff bench's baseline: QEMU's own live migration of a running
 * vmsynth VM, with its storage copied, done the way `virsh migrate --live
 * --copy-storage-all` does it (libvirt refuses a migration to the host it
 * runs on, and these machines have one libvirtd): the target is a domain
 * started waiting for incoming state, with an empty disk of the same size
 * exported over NBD; the source mirrors its disk into that export
 * (blockdev-mirror, sync full) until the mirror is ready, then migrates RAM
 * and devices (QMP migrate, pre-copy, QEMU's default 300 ms downtime limit,
 * no bandwidth cap: libvirt's defaults; `autoConverge`: QEMU throttles the
 * guest's CPUs while its dirty rate outruns the link, as `virsh migrate
 * --auto-converge` asks; a RAM phase that does not converge within
 * `ramLimitMs` is cancelled); once the migration completes, the
 * mirror is cancelled (its copy is complete), the target's NBD server
 * stopped, and the target continued.
 *
 * The source is a domain a `vmsynth serve` owns, so its monitor is reached
 * through libvirt (`virsh qemu-monitor-command`), as libvirt's own migration
 * reaches it; the target's is this process's. Both QEMUs run in libvirtd's
 * network namespace: both streams (NBD and migration) cross the shaped A-B
 * link through relays, a unix socket in A's namespace to a TCP connection to
 * B's, which counts the bytes.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { libvirtUri } from '../../lib/core/paths.js';
import { sleep, type Scope } from '../../lib/core/scope.js';
import { exec } from '../../lib/core/exec.js';
import { freePort } from '../../lib/core/net.js';
import type { Base } from '../../lib/vm/base.js';
import type { Libvirt } from '../../lib/vm/libvirt.js';
import { qemuLogPath, startVm } from '../../lib/vm/machine.js';
import type { QmpClient } from '../../lib/vm/qmp.js';
import { consoleTail, guestRequest } from '../../lib/vm/guest-app.js';
import { restoreSpec } from '../../lib/vm/restore.js';
import { RunDir } from '../../lib/vm/run-dir.js';
import { jsonLines, stopWith } from './child-io.js';
import { nodeScriptIn, type TopologyNode } from './topology.js';

const run = promisify(execFile);
/** A RAM phase this long has not converged: at 38 Mbit/s it has sent 1.4 GB, more than a 1 GiB VM's RAM. */
const RAM_LIMIT_MS = 300_000;

/** A QMP command to a libvirt domain's QEMU, through libvirt's monitor. */
export async function domainQmp<T = unknown>(domain: string, command: string, args?: object): Promise<T> {
  const msg = JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) });
  const { stdout } = await run('virsh', ['-q', '-c', libvirtUri(), 'qemu-monitor-command', domain, msg]);
  const r = JSON.parse(stdout) as { return?: T; error?: { desc: string } };
  if (r.error) throw new Error(`${command} on ${domain}: ${r.error.desc}`);
  return r.return as T;
}

/** The host port a vmsynth domain forwards to its guest's app, and its generation ID. */
export async function domainForward(domain: string): Promise<{ hostPort: number; genid: string | null }> {
  const { stdout } = await run('virsh', ['-q', '-c', libvirtUri(), 'dumpxml', domain]);
  const port = /hostfwd=tcp:127\.0\.0\.1:(\d+)-:/.exec(stdout);
  if (!port) throw new Error(`domain ${domain} has no host forward`);
  const genid = /<genid>([^<]+)<\/genid>/.exec(stdout);
  return { hostPort: Number(port[1]), genid: genid ? genid[1]! : null };
}

/** The relay's part, in a namespace: each `FROM=TO` pair listens on FROM and pipes each connection to TO. */
const RELAY = `
const net = await import('node:net');
const addr = (s) => s.startsWith('/') ? { path: s } : { host: s.slice(0, s.lastIndexOf(':')), port: Number(s.slice(s.lastIndexOf(':') + 1)) };
let up = 0, down = 0;
const ready = process.argv.slice(1).map((pair) => {
  const [from, to] = pair.split('=');
  const srv = net.createServer((c) => {
    const d = net.connect(addr(to));
    c.on('data', (b) => (up += b.length));
    d.on('data', (b) => (down += b.length));
    c.pipe(d);
    d.pipe(c);
    const fail = () => { c.destroy(); d.destroy(); };
    c.on('error', fail);
    d.on('error', fail);
  });
  return new Promise((r) => srv.listen(addr(from), r));
});
await Promise.all(ready);
process.stdout.write(JSON.stringify({ listening: true }) + '\\n');
process.stdin.on('data', () => process.stdout.write(JSON.stringify({ up, down }) + '\\n'));
process.stdin.on('end', () => process.exit(0));
`;

interface Relay {
  /** Bytes relayed so far: toward the target (up) and back (down). */
  count(): Promise<{ up: number; down: number }>;
}

async function relay(scope: Scope, node: TopologyNode, pairs: string[]): Promise<Relay> {
  const c = nodeScriptIn(node.ns, RELAY, pairs, ['pipe', 'pipe', 'inherit']);
  stopWith(scope, `the relay in ${node.ns}`, c);
  const lines: Array<(l: Record<string, unknown>) => void> = [];
  jsonLines(c.stdout!, (o) => lines.shift()?.(o));
  const next = () =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      lines.push(resolve);
      c.once('exit', (code) => reject(new Error(`the relay in ${node.ns} exited ${code}`)));
    });
  await next();
  return {
    count: async () => {
      const n = next();
      c.stdin!.write('?\n');
      return (await n) as { up: number; down: number };
    },
  };
}

export interface MigrationResult {
  /** Bytes over A-B, both streams, both directions. */
  bytesOverAB: number;
  /** Of which QEMU counted for RAM and devices, and the disk mirror copied. */
  ramBytes: number;
  diskBytes: number;
  /** From starting the target to the target running. */
  totalMs: number;
  /** QEMU's own downtime figure (source stop to migration complete). */
  qemuDowntimeMs: number;
  /** The target's generation ID and app port, to talk to it after. */
  target: { hostPort: number };
}

export interface MigrationOptions {
  lv: Libvirt;
  base: Base;
  /** The running source domain (a vmsynth session's). */
  domain: string;
  a: TopologyNode;
  b: TopologyNode;
  /** Called when the target runs (the client's stream moves there). */
  onTargetRunning?: (hostPort: number, logs: string[]) => void;
  /** Where the migration is, now and then (each poll). */
  progress?: (what: string) => void;
  /** QEMU's auto-converge capability (`virsh migrate --auto-converge`); default off, as libvirt's. */
  autoConverge?: boolean;
  /** The RAM phase's limit: past it the migration is cancelled, as one that does not converge (default 5 min). */
  ramLimitMs?: number;
  /** Aborts the migration (cancelled on the source) at the next poll. */
  signal?: AbortSignal;
}

interface BlockInfo {
  device: string;
  inserted?: { 'node-name': string; ro: boolean };
}

/** The node name of the VM's (one, writable) disk. */
function diskNode(blocks: BlockInfo[]): string {
  const d = blocks.find((b) => b.inserted && !b.inserted.ro);
  if (!d) throw new Error('the VM has no writable disk');
  return d.inserted!['node-name'];
}

/** Migrates `domain`, disk and all, to a new domain; the target is left running, destroyed with `scope`. */
export async function migrateLive(
  scope: Scope,
  o: MigrationOptions,
  source?: { genid: string | null },
): Promise<MigrationResult> {
  const t0 = performance.now();
  const runDir = await RunDir.create(scope);
  const disk = runDir.file('disk.qcow2');
  await exec('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(o.base.manifest.disk.bytes)]);
  const { genid } = source ?? (await domainForward(o.domain));
  const hostPort = await freePort();
  const spec = restoreSpec(o.base, runDir, {
    disk: { path: disk, format: 'qcow2' },
    memory: { path: null, share: false },
    hostPort,
    ...(genid ? { genid } : {}),
  });
  const vm = await startVm(o.lv, spec, scope);
  const q: QmpClient = vm.qmp;
  const nbdIn = runDir.file('nbd.sock');
  const migIn = runDir.file('migrate.sock');
  const targetNode = diskNode(await q.execute<BlockInfo[]>('query-block'));
  // As libvirt does: the target starts only when told (libvirt's -S; here `stop` while it waits for
  // incoming state clears QEMU's autostart), and activates its disk only then (late-block-activate):
  // while the NBD export holds the disk for writing, the guest's device may not take it.
  await q.execute('stop');
  await q.execute('migrate-set-capabilities', {
    capabilities: [{ capability: 'late-block-activate', state: true }],
  });
  await q.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdIn } } });
  await q.execute('block-export-add', { type: 'nbd', id: 'migrate', 'node-name': targetNode, writable: true });
  await q.execute('migrate-incoming', { uri: `unix:${migIn}` });
  // The A-B link: QEMU on A writes to a unix socket in A's namespace; B's relay hands it to the target's.
  const [nbdPort, migPort] = [10809, 10810];
  const nbdOut = runDir.file('nbd-a.sock');
  const migOut = runDir.file('migrate-a.sock');
  await relay(scope, o.b, [`${o.b.addr}:${nbdPort}=${nbdIn}`, `${o.b.addr}:${migPort}=${migIn}`]);
  const counter = await relay(scope, o.a, [`${nbdOut}=${o.b.addr}:${nbdPort}`, `${migOut}=${o.b.addr}:${migPort}`]);

  const src = <T>(cmd: string, args?: object) => domainQmp<T>(o.domain, cmd, args);
  const sourceNode = diskNode(await src<BlockInfo[]>('query-block'));
  await src('migrate-set-capabilities', {
    capabilities: [
      { capability: 'x-ignore-shared', state: false },
      { capability: 'auto-converge', state: o.autoConverge === true },
    ],
  });
  await src('migrate-set-parameters', { 'max-bandwidth': Number.MAX_SAFE_INTEGER });
  await src('blockdev-add', {
    driver: 'nbd',
    'node-name': 'migrate-target',
    server: { type: 'unix', path: nbdOut },
    export: targetNode,
  });
  await src('blockdev-mirror', {
    'job-id': 'migrate-disk',
    device: sourceNode,
    target: 'migrate-target',
    sync: 'full',
  });
  for (;;) {
    const jobs = await src<Array<{ device: string; ready: boolean; offset: number; len: number }>>('query-block-jobs');
    const j = jobs.find((x) => x.device === 'migrate-disk');
    if (!j) throw new Error('the disk mirror ended before it was ready');
    if (j.ready) break;
    if (o.signal?.aborted) {
      await src('block-job-cancel', { device: 'migrate-disk', force: true }).catch(() => undefined);
      throw o.signal.reason;
    }
    o.progress?.(`disk mirror ${j.offset} of ${j.len} bytes`);
    await sleep(100);
  }
  await src('migrate', { uri: `unix:${migOut}` });
  const ramFrom = performance.now();
  let info: {
    status: string;
    downtime?: number;
    'expected-downtime'?: number;
    ram?: { transferred: number; remaining: number };
    'error-desc'?: string;
  };
  for (;;) {
    info = await src('query-migrate');
    const over = performance.now() - ramFrom > (o.ramLimitMs ?? RAM_LIMIT_MS);
    if ((over || o.signal?.aborted) && info.status === 'active') {
      await src('migrate_cancel');
      if (o.signal?.aborted) throw o.signal.reason;
      throw new Error(
        `QEMU's migration did not converge in ${Math.round((o.ramLimitMs ?? RAM_LIMIT_MS) / 1000)} s of RAM phase: cancelled (RAM sent ${info.ram?.transferred ?? 0} bytes, ${info.ram?.remaining ?? '?'} remaining; expected downtime ${info['expected-downtime'] ?? '?'} ms against the 300 ms limit)`,
      );
    }
    o.progress?.(
      `migration ${info.status}, RAM sent ${info.ram?.transferred ?? 0}, remaining ${info.ram?.remaining ?? '?'}`,
    );
    if (info.status === 'completed') {
      // (QEMU sets its downtime figure just after it reports the status.)
      await sleep(100);
      info = await src('query-migrate');
      break;
    }
    if (info.status === 'failed' || info.status === 'cancelled')
      throw new Error(`the migration ${info.status}: ${info['error-desc'] ?? ''}`);
    await sleep(20);
  }
  // Source stopped, mirror in step: cancelling a ready mirror leaves the copy complete.
  type Job = { device: string; offset: number };
  const mirror = async () => (await src<Job[]>('query-block-jobs')).find((x) => x.device === 'migrate-disk');
  const diskBytes = (await mirror())?.offset ?? 0;
  await src('block-job-cancel', { device: 'migrate-disk' });
  while (await mirror()) await sleep(10);
  await src('blockdev-del', { 'node-name': 'migrate-target' });
  // (As libvirt does: stopping the NBD server ends its export and the source's connection.)
  await q.execute('nbd-server-stop');
  const deadline = performance.now() + 30_000;
  for (;;) {
    const { status } = await q.execute<{ status: string }>('query-status');
    if (status === 'running') break;
    if (status === 'paused' || status === 'prelaunch') await q.execute('cont');
    if (performance.now() > deadline) {
      const there = await q.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      throw new Error(
        `the target is ${status} 30 s after the source completed (its migration: ${JSON.stringify(there)}; relayed ${JSON.stringify(await counter.count())})`,
      );
    }
    await sleep(5);
  }
  const totalMs = performance.now() - t0;
  o.onTargetRunning?.(hostPort, [runDir.file('console.log'), qemuLogPath(spec.name)]);
  const bytes = await counter.count();
  return {
    bytesOverAB: bytes.up + bytes.down,
    ramBytes: info.ram?.transferred ?? 0,
    diskBytes,
    totalMs,
    qemuDowntimeMs: info.downtime ?? 0,
    target: { hostPort },
  };
}

export interface StreamSample {
  /** ms since the migration was asked for (negative: before). */
  at: number;
  latencyMs: number;
  on: 'A' | 'B';
}

export interface MigrationUnderLoad extends MigrationResult {
  samples: StreamSample[];
  /** Requests answered, and the app's count after (state kept: it counts on from A's). */
  answered: number;
  countAfter: number;
}

/**
 * The client's view of the baseline: a steady stream of small requests, one at a
 * time, straight to the guest's app (nothing moves a client's connection in
 * QEMU's migration: the stream turns to the target's forward once it runs, a
 * request left hanging on the stopped source is dropped and sent again there),
 * migrated after `leadMs`, and on for `tailMs` after.
 */
export async function migrateUnderLoad(
  scope: Scope,
  o: MigrationOptions & { path: string; countPath: string; leadMs: number; tailMs: number },
): Promise<MigrationUnderLoad> {
  const source = await domainForward(o.domain);
  let port = source.hostPort;
  let targetLogs: string[] = [];
  const targetTail = async () => (await Promise.all(targetLogs.map((f) => consoleTail(f, 8000)))).join(' | ');
  let turned = new AbortController();
  let askedAt = 0;
  let done = false;
  let answered = 0;
  const samples: Array<{ t: number; latencyMs: number; on: 'A' | 'B' }> = [];
  const stream = (async () => {
    let stalled = 0;
    while (!done) {
      const t = performance.now();
      const on = port === source.hostPort ? 'A' : 'B';
      try {
        await guestRequest(port, 'GET', o.path, 5_000, undefined, turned.signal);
        stalled = 0;
      } catch (err) {
        if (on === 'A' && port !== source.hostPort) continue;
        // A stall is what the client sees: it asks again (up to a minute), as a client would.
        stalled += performance.now() - t + 100;
        if (stalled < 1000)
          o.progress?.(
            `a request to the VM on ${on} failed after ${Math.round(performance.now() - t)} ms: ${(err as Error).message}`,
          );
        if (stalled < 60_000) {
          await sleep(100);
          continue;
        }
        throw new Error(
          `the VM on ${on} did not answer for ${Math.round(stalled)} ms: ${(err as Error).message}${on === 'B' ? `; its console and QEMU log: ${await targetTail()}` : ''}`,
          { cause: err },
        );
      }
      const now = performance.now();
      answered++;
      samples.push({ t: now, latencyMs: now - t, on });
    }
  })();
  try {
    await sleep(o.leadMs);
    askedAt = performance.now();
    const r = await migrateLive(
      scope,
      {
        ...o,
        onTargetRunning: (p, logs) => {
          targetLogs = logs;
          port = p;
          turned.abort();
          turned = new AbortController();
        },
      },
      source,
    );
    await sleep(o.tailMs);
    done = true;
    await stream;
    const after = await guestRequest(r.target.hostPort, 'GET', o.countPath, 10_000).catch(async (err: Error) => {
      throw new Error(`the VM on B did not answer: ${err.message}; its console and QEMU log: ${await targetTail()}`, {
        cause: err,
      });
    });
    const countAfter = (JSON.parse(after.body.toString()) as { count: number }).count;
    return {
      ...r,
      answered,
      countAfter,
      samples: samples.map((s) => ({ at: Math.round(s.t - askedAt), latencyMs: Math.round(s.latencyMs), on: s.on })),
    };
  } finally {
    done = true;
    turned.abort();
    await stream.catch(() => undefined);
  }
}
