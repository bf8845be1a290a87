/**
 * VMs outlive their server, on the real stack: `vmsynth serve` (the CLI, a
 * process of its own) runs four sessions of the test guest, each with its
 * images served by a keeper process; the server is killed with SIGKILL.
 * While no server runs, every VM still answers on its forwarded port; a new
 * server on the same port adopts the sessions, all four clients resume them
 * (the same VMs: their app's uptime went on), and a steady stream of small
 * requests from one client shows how long requests went unanswered. A fifth
 * session, whose client never comes back, ends when its grace period does,
 * VM, mount, keeper and files. Then a session whose server never comes back
 * is ended by its keeper alone.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ClientSession } from '../../lib/client/session.js';
import { freePort } from '../../lib/core/net.js';
import { packageRoot, runDir } from '../../lib/core/paths.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { guestRequest } from '../../lib/vm/guest-app.js';
import { DOMAIN_PREFIX } from '../../lib/vm/libvirt.js';
import { cleanStale, CONTROL_SOCKET } from '../../lib/vm/janitor.js';
import { guestBase } from '../helpers/guest-base.js';
import { keepersUnder, leaks, NO_LEAKS, virshDomains } from '../helpers/leaks.js';

t.teardown(removeTestRoot);
await guestBase('rstbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 'rstbase', out: ov, script: demo, segmentBytes: 256 << 10 });

const cli = path.join(packageRoot(), 'dist', 'lib', 'cli', 'entry.cjs');
const GRACE_S = 12;
const children = new Set<ChildProcess>();
t.teardown(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  // Whatever a failed run left: keepers end their sessions on SIGTERM.
  for (const pid of await keepersUnder(runDir()))
    try {
      process.kill(Number(pid), 'SIGTERM');
    } catch {
      // gone meanwhile
    }
  await new Promise((r) => setTimeout(r, 3000));
  await cleanStale(null, { allInstances: true });
});

/** Starts `vmsynth serve` on `port`; resolves once it listens. */
async function serve(port: number): Promise<ChildProcess> {
  const { LOG_FORMAT: _f, ...env } = process.env;
  const child = spawn(
    process.execPath,
    [cli, 'serve', '--listen', `127.0.0.1:${port}`, '--grace', String(GRACE_S), '--no-verify-bases', '--json'],
    { env: { ...env, LOG_FORMAT: 'json', LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.add(child);
  let out = '';
  child.stderr.on('data', () => undefined);
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('"listening"')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`vmsynth serve exited with ${code}: ${out.slice(-2000)}`)));
  });
  return child;
}

function killed(child: ChildProcess): Promise<void> {
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  return gone;
}

/** The forwarded host port of session `id`'s app, from the record its server kept. */
async function hostPort(id: string): Promise<number> {
  const r = JSON.parse(await fsp.readFile(path.join(runDir(), id, 'synth.json'), 'utf8')) as { hostPort: number };
  return r.hostPort;
}

async function uptime(s: ClientSession): Promise<number> {
  const r = await s.offload({ method: 'GET', path: '/info' });
  return (JSON.parse(r.body.toString()) as { uptimeMs: number }).uptimeMs;
}

async function until(what: string, check: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

t.test('four sessions live through kill -9 of their server; an orphan ends with its grace period', async (t) => {
  const port = await freePort();
  const server = `127.0.0.1:${port}`;
  let first = await serve(port);
  // The fifth client does not reconnect: it is gone for good once the server dies.
  const sessions = await Promise.all(
    Array.from({ length: 5 }, (_, i) => ClientSession.open({ server, overlay: ov, reconnect: i < 4 })),
  );
  await Promise.all(sessions.map((s) => s.complete));
  const before = await Promise.all(sessions.map(uptime));
  const ids = sessions.map((s) => s.id);
  const orphan = sessions.pop()!;
  orphan.failed.catch(() => undefined);

  // A steady stream of small requests from the first client, across the restart.
  const replies: number[] = [];
  let streaming = true;
  const stream = (async () => {
    while (streaming) {
      await sessions[0]!.offload({ method: 'GET', path: '/health' });
      replies.push(performance.now());
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  await new Promise((r) => setTimeout(r, 1000));

  await killed(first);
  const killedAt = performance.now();
  t.same((await keepersUnder(runDir())).length, 5, 'with the server gone, a keeper per session still runs');
  const live = await virshDomains();
  t.ok(
    ids.every((id) => live.includes(`${DOMAIN_PREFIX}${id}`)),
    'every domain still runs',
  );
  for (const id of ids) {
    const r = await guestRequest(await hostPort(id), 'GET', '/info', 10_000);
    t.equal(r.status, 200, `VM ${id} answers on its own port while no server runs`);
  }

  first = await serve(port);
  const restartedAt = performance.now();
  t.comment(`the server was down ${Math.round(restartedAt - killedAt)} ms (kill -9 to listening again)`);
  const after = await Promise.all(sessions.map(uptime));
  for (const [i, s] of sessions.entries()) {
    t.ok(s.reconnects.length >= 1, `client ${i} reconnected and resumed its session`);
    t.ok(
      after[i]! > before[i]!,
      `client ${i}'s VM is the same VM: its app's uptime went on (${before[i]} -> ${after[i]} ms)`,
    );
  }
  streaming = false;
  await stream;
  let gap = 0;
  for (let i = 1; i < replies.length; i++) gap = Math.max(gap, replies[i]! - replies[i - 1]!);
  t.ok(
    replies.some((at) => at > restartedAt),
    'the stream went on after the restart',
  );
  t.comment(`longest gap between replies in the stream across the restart: ${Math.round(gap)} ms`);

  // The orphan's client never resumed: the new server ends it at the end of its grace period.
  const orphanDomain = `${DOMAIN_PREFIX}${orphan.id}`;
  await until('the orphan is ended', async () => !(await virshDomains()).includes(orphanDomain), (GRACE_S + 30) * 1000);
  await until(
    "the orphan's files are gone",
    async () => !(await fsp.stat(path.join(runDir(), orphan.id)).catch(() => null)),
    10_000,
  );
  t.pass('the orphan whose grace period ended was cleaned: domain and run directory');

  await Promise.all(sessions.map((s) => s.finish()));
  first.kill('SIGTERM');
  await new Promise((r) => first.once('exit', r));
  t.same(
    await leaks(
      ids.map((id) => `${DOMAIN_PREFIX}${id}`),
      runDir(),
    ),
    NO_LEAKS,
    'nothing left behind',
  );
});

t.test('a session whose server never comes back is ended by its keeper at the end of its grace period', async (t) => {
  const port = await freePort();
  const server = await serve(port);
  const s = await ClientSession.open({ server: `127.0.0.1:${port}`, overlay: ov, reconnect: false });
  s.failed.catch(() => undefined);
  await s.complete;
  await uptime(s); // the VM runs (a session killed while its VM resumes is not kept: its VM does not survive)
  const domain = `${DOMAIN_PREFIX}${s.id}`;
  await killed(server);
  t.ok((await virshDomains()).includes(domain), 'the VM runs on without its server');
  const t0 = Date.now();
  await until(
    'the keeper has ended the session',
    async () => (await keepersUnder(runDir())).length === 0,
    (GRACE_S + 30) * 1000,
  );
  t.ok(Date.now() - t0 >= (GRACE_S - 3) * 1000, 'not before the grace period ended');
  t.same(
    await leaks([domain], runDir()),
    { ...NO_LEAKS, files: [path.join(runDir(), CONTROL_SOCKET)] },
    "domain, mount, keeper and files are gone; the killed server's control socket alone is left",
  );
  await cleanStale(null);
  t.same(await leaks([domain], runDir()), NO_LEAKS, 'and the janitor of the next start removes it');
});
