/**
 * `vmsynth serve` as systemd runs it, on the real stack: configured from a
 * config file (TLS, a named client token, metrics), talking sd_notify to a
 * socket the test opens. READY=1 comes only once the listener accepts
 * connections, then watchdog pings; a synthesis over TLS with the client's
 * token is answered; /metrics and the JSON log tell what happened, each
 * session line carrying its session id and domain; a VM killed mid-session
 * ends its session at once (the watchdog on QEMU), not at the next request;
 * SIGTERM sends STOPPING=1, exits 0 and leaves nothing behind.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import net from 'node:net';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { synthesize } from '../../lib/client/client.js';
import { tokenSha256 } from '../../lib/core/config.js';
import { packageRoot, runDir } from '../../lib/core/paths.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { DOMAIN_PREFIX } from '../../lib/vm/libvirt.js';
import { guestBase } from '../helpers/guest-base.js';
import { until } from '../helpers/wait.js';
import { leaks, NO_LEAKS, qemuProcessesFor } from '../helpers/leaks.js';
import { listen } from '../helpers/notify-listener.js';

const run = promisify(execFile);
t.teardown(removeTestRoot);
await guestBase('svcbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
await createOverlay({
  base: 'svcbase',
  out: ov,
  script: await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8'),
});
const cli = path.join(packageRoot(), 'dist', 'lib', 'cli', 'entry.cjs');
const request = { method: 'GET' as const, path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' };

const [cert, key] = [path.join(testRoot, 'cert.pem'), path.join(testRoot, 'key.pem')];
await run('openssl', [
  'req',
  '-x509',
  '-newkey',
  'ec',
  '-pkeyopt',
  'ec_paramgen_curve:prime256v1',
  '-nodes',
  '-days',
  '1',
  '-subj',
  '/CN=cloudlet.test',
  '-addext',
  'subjectAltName=IP:127.0.0.1',
  '-keyout',
  key,
  '-out',
  cert,
]);
const ca = await fsp.readFile(cert);
const token = 'phone-token-for-tests';
const configFile = path.join(testRoot, 'vmsynth.json');
await fsp.writeFile(
  configFile,
  JSON.stringify({
    listen: '127.0.0.1:0',
    metricsListen: '127.0.0.1:0',
    tlsCert: cert,
    tlsKey: key,
    clients: [{ name: 'phone', tokenSha256: tokenSha256(token) }],
    logLevel: 'info',
  }),
);

t.test('serve under a systemd-like supervisor', async (t) => {
  const notify = await listen(path.join(testRoot, 'notify.sock'));
  t.teardown(() => notify.close());
  const { LOG_FORMAT: _f, LOG_LEVEL: _l, ...env } = process.env;
  const child = spawn(process.execPath, [cli, 'serve', '--config', configFile, '--json'], {
    env: { ...env, NOTIFY_SOCKET: path.join(testRoot, 'notify.sock'), WATCHDOG_USEC: '2000000' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));

  // Datagrams until READY=1: a STATUS while the bases are hashed, then READY with the address.
  let readyMsg = '';
  const seen: string[] = [];
  while (!readyMsg) {
    const m = await notify.next(120_000);
    seen.push(m);
    if (m.split('\n').includes('READY=1')) readyMsg = m;
  }
  t.match(seen[0], /^STATUS=verifying bases/m, 'a status while starting');
  t.match(readyMsg, new RegExp(`^MAINPID=${child.pid}$`, 'm'), 'READY names the main PID');
  const port = Number(/^STATUS=listening on 127\.0\.0\.1:(\d+)$/m.exec(readyMsg)?.[1]);
  t.ok(port > 0, `READY=1 tells the address (port ${port})`);
  await new Promise<void>((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve();
    });
    s.once('error', reject);
  });
  t.pass('when READY=1 arrives, the listener already accepts connections');
  t.equal(await notify.next(5000), 'WATCHDOG=1\n', 'then the watchdog pings (WATCHDOG_USEC 2 s: every second)');

  const lines = () =>
    out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  for (let i = 0; i < 100 && !lines().some((l) => 'listening' in l); i++) await new Promise((r) => setTimeout(r, 50));
  const addr = lines().find((l) => 'listening' in l) as { metrics: { port: number } };
  const metrics = async () => (await fetch(`http://127.0.0.1:${addr.metrics.port}/metrics`)).text();
  t.equal((await fetch(`http://127.0.0.1:${addr.metrics.port}/readyz`)).status, 200, '/readyz is 200');

  await t.rejects(
    synthesize({ server: `127.0.0.1:${port}`, overlay: ov, request, tls: { ca } }),
    { code: 'VMS_AUTH' },
    'no token, no session',
  );
  const r = await synthesize({ server: `127.0.0.1:${port}`, overlay: ov, request, token, tls: { ca } });
  t.equal(r.firstResponse.status, 200, "synthesized over TLS with the client's token");
  const m1 = await metrics();
  t.match(m1, /^vmsynth_first_response_seconds_count\{policy="early-start"\} 1$/m, 'the first response was measured');
  const laneBytes = [...m1.matchAll(/^vmsynth_segment_bytes_total\{lane="(\w+)"\} (\d+)$/gm)].reduce(
    (n, x) => n + Number(x[2]),
    0,
  );
  t.equal(laneBytes, r.overlayBytes, 'segment bytes by lane add up to the overlay');
  t.match(m1, /^vmsynth_sessions_total\{outcome="ok"\} 1$/m);
  t.match(m1, /^vmsynth_connections_refused_total\{code="VMS_AUTH"\} 1$/m);

  const domain = `${DOMAIN_PREFIX}${r.session}`;
  const mine = lines().filter((l) => l.session === r.session);
  t.same(
    ['sessionStarted', 'sessionResumed', 'firstResponse', 'sessionEnded'].filter(
      (e) => !mine.some((l) => l.event === e),
    ),
    [],
    "the session's lines are in the log",
  );
  t.ok(
    mine.every((l) => l.domain === domain && l.client === 'phone' && typeof l.msg === 'string'),
    'each carries the session, its domain, the client and a message',
  );
  t.same(await leaks([domain], runDir()), NO_LEAKS);

  // The watchdog on QEMU: a VM killed while the client waits ends the session now.
  let killedAt = 0;
  let session = '';
  const dying = synthesize({
    server: `127.0.0.1:${port}`,
    overlay: ov,
    request,
    token,
    tls: { ca },
    onEvent: (e) => {
      if (e.type === 'accepted') session = e.session;
    },
    whileRunning: async () => {
      for (const pid of await qemuProcessesFor(`${DOMAIN_PREFIX}${session}`)) process.kill(Number(pid), 'SIGKILL');
      killedAt = Date.now();
      await new Promise((resolve) => setTimeout(resolve, 60_000).unref());
    },
  });
  await t.rejects(dying, { code: 'VMS_QEMU_DIED' }, 'the client hears that the VM died');
  t.ok(
    killedAt > 0 && Date.now() - killedAt < 5000,
    `within ${Date.now() - killedAt} ms of the kill, without another request`,
  );
  for (let i = 0; i < 100 && !/^vmsynth_vm_deaths_total 1$/m.test(await metrics()); i++)
    await new Promise((r) => setTimeout(r, 50));
  t.match(await metrics(), /^vmsynth_vm_deaths_total 1$/m, 'the death was counted');
  // The client hears of the death before the server's teardown, which follows at once.
  const gone = async () =>
    JSON.stringify(await leaks([`${DOMAIN_PREFIX}${session}`], runDir())) === JSON.stringify(NO_LEAKS);
  await until(gone, "the dead VM's session to be torn down", 15_000).catch(() => undefined);
  t.same(await leaks([`${DOMAIN_PREFIX}${session}`], runDir()), NO_LEAKS, "the dead VM's session left nothing");

  child.kill('SIGTERM');
  let stoppingMsg = '';
  while (!stoppingMsg) {
    const m = await notify.next(30_000);
    if (m.includes('STOPPING=1')) stoppingMsg = m;
  }
  t.pass('SIGTERM: STOPPING=1');
  t.equal(await exited, 0, `the server exits 0 (stderr: ${err.slice(-300)})`);
  t.same(await leaks([], runDir()), NO_LEAKS, 'nothing left under the run directory');
});

// Without keepers (keepSessions false) a forced stop leaves a session's state for the janitor;
// with them, the next server adopts it (test/e2e/restart.test.ts).
t.test('without keepers, a second signal forces the stop; the next start cleans what was left', async (t) => {
  const { LOG_FORMAT: _f, LOG_LEVEL: _l, ...env } = process.env;
  const start = () => {
    const child = spawn(process.execPath, [cli, 'serve', '--listen', '127.0.0.1:0', '--json'], {
      env: { ...env, VMSYNTH_KEEP_SESSIONS: 'false' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.resume();
    const exited = new Promise<number | string | null>((resolve) =>
      child.once('exit', (code, signal) => resolve(code ?? signal)),
    );
    const lines = () =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    const listening = (async () => {
      for (let i = 0; i < 2400; i++) {
        const l = lines().find((x) => 'listening' in x) as { listening: { port: number } } | undefined;
        if (l) return l.listening.port;
        if (child.exitCode !== null) throw new Error(`serve exited early: ${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error('serve did not listen within 120 s');
    })();
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    return { child, exited, lines, listening };
  };

  const first = start();
  const port = await first.listening;
  let session = '';
  const outcome = synthesize({
    server: `127.0.0.1:${port}`,
    overlay: ov,
    request,
    maxBytesPerSecond: 125_000,
    onEvent: (e) => {
      if (e.type === 'accepted') session = e.session;
      // Pause the guest first: QEMU must survive its FUSE server's death, as a VM of a crashed vmsynth would.
      if (e.type === 'timeline' && e.step === 'resumed') {
        void run('virsh', [
          '-c',
          process.env.LIBVIRT_URI ?? 'qemu:///system',
          'suspend',
          `${DOMAIN_PREFIX}${session}`,
        ]).finally(() => {
          first.child.kill('SIGTERM');
          setTimeout(() => first.child.kill('SIGTERM'), 20);
        });
      }
    },
  });
  await t.rejects(outcome, 'the client loses its session');
  t.equal(await first.exited, 'SIGTERM', 'the second SIGTERM ends the process at once, by that signal');
  const domain = `${DOMAIN_PREFIX}${session}`;
  const left = await leaks([domain], runDir());
  t.comment(`left by the forced stop: ${JSON.stringify(left)}`);
  // The process died 20 ms into its graceful stop, long before that stop's domain destroy (1.5-2 s
  // on TCG) let it unmount: its FUSE mount and session directory are always left for the janitor.
  t.ok(left.mounts.length > 0, "the forced stop left the session's FUSE mount");
  t.ok(left.files.length > 0, 'and its session directory');

  const second = start();
  await second.listening;
  t.same(
    await leaks([domain], runDir()),
    NO_LEAKS,
    'the next start removed the domain, the mount and the session directory before it listened',
  );
  const cleaned = second
    .lines()
    .filter((l) => l.event === 'staleCleaned')
    .map((l) => l.kind);
  // The domain may be gone already (libvirtd finishes a destroy its dead client had asked for): not asserted here.
  t.ok(cleaned.includes('mount'), 'the stale mount was logged (staleCleaned)');
  t.ok(cleaned.includes('run-dir'), 'the stale session directory was logged (staleCleaned, kind run-dir)');
  second.child.kill('SIGTERM');
  t.equal(await second.exited, 0);
});
