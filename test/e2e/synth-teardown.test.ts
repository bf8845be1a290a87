/**
 * Teardown on the real stack: a client killed mid-stream, and a server
 * stopped with SIGTERM mid-session. A vanished client's session waits out its
 * grace period for a resume, then goes; SIGTERM ends it at once. Either way
 * the VM is destroyed, the FUSE mount is gone and the session files are
 * removed; after a vanished client the server goes on serving.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { until } from '../helpers/wait.js';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { synthesize } from '../../lib/client/client.js';
import { channels } from '../../lib/core/diagnostics.js';
import { packageRoot, runDir } from '../../lib/core/paths.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { SynthServer } from '../../lib/server/server.js';
import { DOMAIN_PREFIX } from '../../lib/vm/libvirt.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS, virshDomains } from '../helpers/leaks.js';

t.teardown(removeTestRoot);
await guestBase('tdbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
await createOverlay({
  base: 'tdbase',
  out: ov,
  script: await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8'),
});
const cli = path.join(packageRoot(), 'dist', 'lib', 'cli', 'entry.cjs');
const request = { method: 'GET' as const, path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' };

t.test(
  'a client killed mid-stream: its session waits out its grace period, then goes; the server serves the next',
  async (t) => {
    const GRACE_MS = 3000;
    const server = await SynthServer.listen({ port: 0, graceMs: GRACE_MS });
    t.teardown(() => server.close());
    const { host, port } = server.address();
    const running = new Promise<string>((resolve) => {
      const on = (m: unknown) => {
        channels.domainRunning.unsubscribe(on);
        resolve((m as { name: string }).name);
      };
      channels.domainRunning.subscribe(on);
    });
    // 1 Mbit/s: the client is still streaming when it dies.
    const child = spawn(
      process.execPath,
      [cli, 'synth', '--server', `${host}:${port}`, '--overlay', ov, '--max-rate-mbit', '1', '--json'],
      { env: process.env, stdio: 'ignore' },
    );
    const domain = await running;
    t.ok((await virshDomains()).includes(domain), 'the VM runs');
    const ended = new Promise<{ error?: { details?: Record<string, unknown> } }>((resolve) => {
      const on = (m: unknown) => {
        channels.sessionEnded.unsubscribe(on);
        resolve(m as { error?: { details?: Record<string, unknown> } });
      };
      channels.sessionEnded.subscribe(on);
    });
    child.kill('SIGKILL');
    const killedAt = performance.now();
    await until(() => server.connectionCount === 0, 'the server to drop the connection');
    t.equal(server.sessionCount, 1, 'the session waits for a resume');
    t.ok((await virshDomains()).includes(domain), 'with its VM running');
    const end = await ended;
    t.ok(performance.now() - killedAt >= GRACE_MS, 'it ended only after its grace period');
    t.match(end.error, { code: 'VMS_PEER_GONE', details: { reason: 'grace-expired', graceMs: GRACE_MS } });
    t.same(await leaks([domain], runDir()), NO_LEAKS, 'VM, mount and files are gone');

    const r = await synthesize({ server: `${host}:${port}`, overlay: ov, request });
    t.equal(r.firstResponse.status, 200, 'the next client is served');
    t.same(await leaks([`${DOMAIN_PREFIX}${r.session}`], runDir()), NO_LEAKS);
  },
);

t.test('without keepers, SIGTERM ends every session cleanly and tells the client why', async (t) => {
  // Without keepers: with them, SIGTERM leaves running sessions for the next server (restart.test.ts).
  const child = spawn(process.execPath, [cli, 'serve', '--listen', '127.0.0.1:0', '--json'], {
    env: { ...process.env, VMSYNTH_KEEP_SESSIONS: 'false' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const addr = await new Promise<{ host: string; port: number }>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.includes('"listening"'));
      if (line) resolve((JSON.parse(line) as { listening: { host: string; port: number } }).listening);
    });
    child.once('exit', () => reject(new Error(`serve exited early: ${out}`)));
  });
  let session = '';
  const outcome = synthesize({
    server: `${addr.host}:${addr.port}`,
    overlay: ov,
    request,
    maxBytesPerSecond: 125_000,
    onEvent: (e) => {
      if (e.type === 'accepted') session = e.session;
      if (e.type === 'timeline' && e.step === 'resumed') child.kill('SIGTERM');
    },
  });
  await t.rejects(outcome, { code: 'VMS_SHUTTING_DOWN' }, 'the client hears that the server is stopping');
  t.equal(await exited, 0, 'the server exits cleanly');
  t.ok(session, 'a session had been accepted');
  t.same(await leaks([`${DOMAIN_PREFIX}${session}`], runDir()), NO_LEAKS, 'VM, mount and files are gone');
});
