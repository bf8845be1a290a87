/**
 * Concurrency (ops issue): 8 early-start syntheses at once against one server
 * on this 2-core TCG machine all succeed. Eight clients, each in a process of
 * its own (test/helpers/synth-child.ts), start together, each paced to
 * 2 Mbit/s so that its stream overlaps the resume of its VM; each must get the
 * right first response (the app read the customization's disk bytes), and
 * all eight VMs must be up at the same time: every client keeps its VM
 * running after its first response until all eight have theirs. Then all
 * finish, and nothing is left behind.
 *
 * Timeouts are generous (eight TCG guests share two cores), but a client
 * error, a wrong answer or a session that never comes up fails the test.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { drained } from '../helpers/wait.js';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { SynthesizeResult } from '../../lib/client/client.js';
import { channels } from '../../lib/core/diagnostics.js';
import { packageRoot, runDir } from '../../lib/core/paths.js';
import { appDigest, hex64 } from '../../lib/guest/patterns.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { SynthServer } from '../../lib/server/server.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS, qemuProcessesFor, virshDomains } from '../helpers/leaks.js';
import { SessionWatch } from '../helpers/sessions.js';

const CLIENTS = 8;
/**
 * The server runs in this process, and its FUSE reads and libvirt calls share
 * libuv's thread pool: 8 domain starts at once, each waiting for FUSE reads,
 * would hold all 4 default threads and starve the reads they wait for (the
 * server and libvirtd hang). The vmsynth executable sets 64 threads
 * (lib/cli/entry.cts) and so does `npm test`; a test process cannot raise it
 * itself (the module loader has started the pool by then).
 */
const POOL = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
if (POOL < 2 * CLIENTS)
  throw new Error(
    `UV_THREADPOOL_SIZE is ${POOL}: run this file with UV_THREADPOOL_SIZE=64, as npm test does (see POOL)`,
  );
/** Per phase (all up; all finished): eight TCG guests on two cores are slow, not this slow. */
const PHASE_MS = 10 * 60_000;
const T0 = performance.now();
t.teardown(removeTestRoot);

const { base } = await guestBase('concbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const custom = path.join(testRoot, 'custom');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: base.name, out: ov, script: demo, keepCustom: custom });
// The first request reads 4 MiB at 40 MiB of the disk: where the customization installed its software.
const installedDigest = hex64(
  appDigest((await fsp.readFile(path.join(custom, 'disk.raw'))).subarray(40 << 20, 44 << 20)),
);
await fsp.rm(custom, { recursive: true, force: true });

const server = await SynthServer.listen({ port: 0, maxSessions: CLIENTS });
t.teardown(() => server.close());
const watch = new SessionWatch();
t.teardown(() => watch.close());
let live = 0;
let maxLive = 0;
const onStart = () => {
  maxLive = Math.max(maxLive, ++live);
};
const onEnd = () => {
  live--;
};
channels.sessionStarted.subscribe(onStart);
channels.sessionEnded.subscribe(onEnd);
t.teardown(() => {
  channels.sessionStarted.unsubscribe(onStart);
  channels.sessionEnded.unsubscribe(onEnd);
});

t.test("eight guests fit in this machine's memory", async (t) => {
  const MiB = 2 ** 20;
  const guest = base.manifest.memory.bytes;
  // Guest RAM is a private mapping of the FUSE image: at most the guest's size each, plus QEMU's own (~150 MiB under TCG).
  const need = CLIENTS * (guest + 150 * MiB);
  t.ok(
    need <= os.totalmem() / 2,
    `${CLIENTS} x (${guest / MiB} MiB guest + 150 MiB QEMU) = ${need / MiB} MiB, at most half of ${Math.round(os.totalmem() / 2 ** 30)} GiB`,
  );
});

interface Child {
  proc: ChildProcessWithoutNullStreams;
  next(): Promise<Record<string, unknown>>;
  stderr: string[];
}

function startChild(): Child {
  const { host, port } = server.address();
  const opts = {
    server: `${host}:${port}`,
    overlay: ov,
    policy: 'early-start',
    timeoutMs: 2 * PHASE_MS,
    request: { method: 'GET', path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' },
    // 2 Mbit/s: the ~1.6 MB overlay takes ~6 s, so the stream overlaps the eight resumes (guest reads wait for segments).
    maxBytesPerSecond: 250_000,
  };
  const script = fileURLToPath(new URL('../helpers/synth-child.ts', import.meta.url));
  const proc = spawn(process.execPath, [...process.execArgv, script, JSON.stringify(opts)], {
    env: process.env,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const queue: Array<Record<string, unknown>> = [];
  const waiting: Array<(m: Record<string, unknown>) => void> = [];
  const stderr: string[] = [];
  createInterface({ input: proc.stdout }).on('line', (line) => {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // not ours
    }
    const w = waiting.shift();
    if (w) w(m);
    else queue.push(m);
  });
  proc.stderr.on('data', (d: Buffer) => stderr.push(d.toString()));
  proc.once('exit', (code) => {
    for (const w of waiting.splice(0)) w({ exited: code, stderr: stderr.join('').slice(-2000) });
    queue.push({ exited: code, stderr: stderr.join('').slice(-2000) });
  });
  return {
    proc,
    stderr,
    next: () => (queue.length ? Promise.resolve(queue.shift()!) : new Promise((resolve) => waiting.push(resolve))),
  };
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const children = Array.from({ length: CLIENTS }, () => startChild());
t.teardown(() => {
  for (const c of children) if (c.proc.exitCode === null) c.proc.kill('SIGKILL');
});

t.test(`${CLIENTS} early-start syntheses at once all succeed`, async (t) => {
  const ready = await within(Promise.all(children.map((c) => c.next())), 120_000, 'the clients to load');
  if (
    !t.ok(
      ready.every((m) => m.ready === true),
      'every client process loaded',
    )
  ) {
    t.comment(JSON.stringify(ready.filter((m) => m.ready !== true)));
    return;
  }
  const go = performance.now();
  for (const c of children) c.proc.stdin.write('go\n');

  // Phase 1: every client has its first response (and the whole overlay); its VM stays up meanwhile.
  const up = await within(
    Promise.all(children.map((c) => c.next().then((m) => ({ m, at: performance.now() })))),
    PHASE_MS,
    'every first response',
  );
  const upMs = Math.round(Math.max(...up.map((u) => u.at)) - go);
  const failed = up.filter((u) => !u.m.up);
  if (
    !t.same(
      failed.map((u) => u.m),
      [],
      'every client got its first response with its VM up',
    )
  )
    return;
  const sessions = up.map((u) => (u.m.up as { session: string }).session);
  const domains = sessions.map(SessionWatch.domain);
  const liveDomains = await virshDomains();
  t.same(
    domains.filter((d) => !liveDomains.includes(d)),
    [],
    `all ${CLIENTS} VMs ran at the same time (${upMs} ms after the start)`,
  );
  t.equal(live, CLIENTS, `the server had ${CLIENTS} sessions open at once`);
  let rssKiB = 0;
  for (const d of domains) {
    for (const pid of await qemuProcessesFor(d)) {
      const status = await fsp.readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
      rssKiB += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    }
  }
  t.comment(
    `${CLIENTS} QEMUs resident: ${Math.round(rssKiB / 1024)} MiB in all; host memory available ${Math.round(os.freemem() / 2 ** 20)} MiB of ${Math.round(os.totalmem() / 2 ** 20)} MiB`,
  );

  // Phase 2: all finish.
  for (const c of children) c.proc.stdin.write('finish\n');
  const done = await within(Promise.all(children.map((c) => c.next())), PHASE_MS, 'every client to finish');
  const wallMs = Math.round(performance.now() - go);
  const results: SynthesizeResult[] = [];
  for (const [i, m] of done.entries()) {
    if (
      !t.ok(
        m.result,
        `client ${i} finished (${m.error ? JSON.stringify(m.error) : m.exited !== undefined ? `exited ${String(m.exited)}: ${String(m.stderr)}` : 'ok'})`,
      )
    )
      continue;
    const r = m.result as SynthesizeResult;
    results.push(r);
    t.equal(r.session, sessions[i], `client ${i}: session ${r.session}`);
    t.equal(r.firstResponse.status, 200, `client ${i}: first response 200 after ${r.timeline.firstResponse} ms`);
    t.equal(
      (JSON.parse(r.firstResponse.body) as { diskDigest: string }).diskDigest,
      installedDigest,
      `client ${i}: the app read the customization's disk bytes`,
    );
    t.ok(
      r.timeline.resumed !== null && r.timeline.overlayComplete !== null && r.timeline.finished !== null,
      `client ${i}: resumed ${r.timeline.resumed} ms, overlay complete ${r.timeline.overlayComplete} ms, torn down ${r.timeline.finished} ms`,
    );
  }
  const fr = results.map((r) => r.timeline.firstResponse!).sort((a, b) => a - b);
  t.comment(
    `first response per session (ms since its start): ${results.map((r) => r.timeline.firstResponse).join(', ')}`,
  );
  t.comment(
    `first response: min ${fr[0]} ms, p50 ${fr[Math.floor(fr.length / 2)]} ms, max ${fr.at(-1)} ms; all up after ${upMs} ms; all finished after ${wallMs} ms`,
  );
  t.comment(
    `guest reads that waited for a segment, per session: ${results.map((r) => (r.serverStats as { blockedReads: { count: number } }).blockedReads.count).join(', ')}; demand fetches: ${results.map((r) => r.demandRequests).join(', ')}; overlay ${results[0]?.overlayBytes} bytes in ${results[0]?.segments} segments`,
  );

  // Every session was torn down; nothing is left.
  for (const s of sessions) {
    const e = await watch.waitEnded(s, 30_000);
    t.ok(e && e.error === null, `session ${s} ended cleanly`);
  }
  t.equal(maxLive, CLIENTS, `at most ${maxLive} sessions were open at once`);
  await drained(server);
  t.equal(server.connectionCount, 0, 'the server holds no connection');
  t.same(await leaks(domains, runDir()), NO_LEAKS, 'no domain, QEMU process, mount or file is left');
  const exits = await Promise.all(
    children.map((c) =>
      c.proc.exitCode !== null ? Promise.resolve(c.proc.exitCode) : new Promise((r) => c.proc.once('exit', r)),
    ),
  );
  t.same(
    exits,
    children.map(() => 0),
    'every client process exited cleanly',
  );
  t.comment(`file wall time ${Math.round(performance.now() - T0)} ms`);
});
