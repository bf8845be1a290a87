/**
 * The server's ops guards on a real listener (libvirt connected; baseline
 * sessions, which start no VM until their overlay is complete, hold a slot):
 * named client tokens, sessions per client, the per-session memory cap, the
 * per-address connection rate, TLS (server certificate checked by the
 * client), and the health and metrics endpoint of the daemon. Every refusal
 * is a typed error frame; nothing is left behind.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { drained } from '../helpers/wait.js';
import { execFile } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { resolveConfig, tokenSha256 } from '../../lib/core/config.js';
import { runDir } from '../../lib/core/paths.js';
import { synthesize } from '../../lib/client/client.js';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { MANIFEST_FILE } from '../../lib/overlay/format.js';
import { generateKey, loadSigningKey } from '../../lib/overlay/keys.js';
import { encodeFrame, FrameDecoder } from '../../lib/protocol/frames.js';
import { PROTOCOL } from '../../lib/protocol/messages.js';
import { startDaemon } from '../../lib/server/daemon.js';
import { SynthServer } from '../../lib/server/server.js';
import { loadBase } from '../../lib/vm/base.js';
import { generatePair } from '../helpers/images.js';

const run = promisify(execFile);
t.teardown(removeTestRoot);
const bases = process.env.VMSYNTH_BASE_DIR!;

await generatePair(bases, 'gen', path.join(testRoot, 'c1'), { memChunks: 256, diskChunks: 128, each: 4 });
await generateKey();
const otherKeys = path.join(testRoot, 'other-keys');
await generateKey(otherKeys);
const custom = (f: string) => path.join(testRoot, 'c1', f);
async function overlay(out: string, keyDir?: string): Promise<Buffer> {
  await buildOverlay({
    base: baseInput(await loadBase('gen')),
    custom: { memory: custom('memory.raw'), disk: custom('disk.raw'), deviceState: custom('device.state') },
    appPort: 8000,
    key: await loadSigningKey(undefined, keyDir),
    out,
  });
  return fsp.readFile(path.join(out, MANIFEST_FILE));
}
const good = await overlay(path.join(testRoot, 'ov'));
const untrustedDir = path.join(testRoot, 'ov-untrusted');
await overlay(untrustedDir, otherKeys);

type Msg = Record<string, unknown>;
const frame = (h: Msg, payload?: Buffer) => Buffer.concat(encodeFrame(h as { type: string }, payload));
const hello = (token?: string) =>
  frame({ type: 'hello', protocol: PROTOCOL, client: 'test', ...(token ? { token } : {}) });
const session = (policy = 'baseline') => frame({ type: 'session', policy }, good);

interface Peer {
  socket: net.Socket;
  msgs: Msg[];
  /** Resolves with the first message of this type (or the error, or the close). */
  next(type: string): Promise<Msg>;
  closed: Promise<void>;
}

/** A raw client: writes `bytes`, collects the server's messages; the connection stays open until the server or the test closes it. */
function peer(port: number, bytes: Buffer[], secure?: tls.ConnectionOptions): Peer {
  const msgs: Msg[] = [];
  const dec = new FrameDecoder();
  const waiters: (() => void)[] = [];
  const socket: net.Socket = secure
    ? tls.connect({ host: '127.0.0.1', port, ...secure }, () => bytes.forEach((b) => socket.write(b)))
    : net.connect({ host: '127.0.0.1', port }, () => bytes.forEach((b) => socket.write(b)));
  socket.on('data', (d: Buffer) => {
    for (const f of dec.push(d)) msgs.push(f.header);
    waiters.splice(0).forEach((w) => w());
  });
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) =>
    socket.on('close', () => {
      waiters.splice(0).forEach((w) => w());
      resolve();
    }),
  );
  const next = (type: string) =>
    new Promise<Msg>((resolve, reject) => {
      const look = () => {
        const m = msgs.find((x) => x.type === type || x.type === 'error');
        if (m) return resolve(m);
        if (socket.destroyed) return reject(new Error(`closed without ${type}: ${JSON.stringify(msgs)}`));
        waiters.push(look);
      };
      look();
    });
  return { socket, msgs, next, closed };
}

t.test('named clients, sessions per client, and the memory cap per session', async (t) => {
  const server = await SynthServer.listen({
    port: 0,
    clients: [
      { name: 'phone-a', tokenSha256: tokenSha256('ta') },
      { name: 'phone-b', tokenSha256: tokenSha256('tb') },
    ],
    maxSessionsPerClient: 1,
    graceMs: 0, // a vanished client's session ends at once (resume.test.ts covers the grace period)
  });
  t.teardown(() => server.close());
  const port = server.address().port;
  t.match(await peer(port, [hello('tx')]).next('welcome'), { type: 'error', code: 'VMS_AUTH' }, 'an unknown token');
  const a1 = peer(port, [hello('ta'), session()]);
  t.match(await a1.next('accepted'), { type: 'accepted' }, 'phone-a opens a session');
  t.match(
    await peer(port, [hello('ta'), session()]).next('accepted'),
    { type: 'error', code: 'VMS_LIMIT', fatal: true },
    'phone-a is refused a second session (admission.test.ts asserts the details: limit maxSessionsPerClient)',
  );
  const b1 = peer(port, [hello('tb'), session()]);
  t.match(await b1.next('accepted'), { type: 'accepted' }, 'phone-b still gets its own');
  t.equal(server.sessionCount, 2);
  a1.socket.destroy();
  b1.socket.destroy();
  await drained(server);
  t.equal(server.sessionCount, 0);

  const small = await SynthServer.listen({ port: 0, sessionMemoryBytes: 2 << 20, maxInFlightBytes: 2 << 20 });
  t.teardown(() => small.close());
  t.match(
    await peer(small.address().port, [hello(), session()]).next('accepted'),
    { type: 'error', code: 'VMS_LIMIT', fatal: true },
    'a session over the memory cap is refused (admission.test.ts asserts the details: limit sessionMemory)',
  );
  await drained(small);
  t.same(await fsp.readdir(runDir()).catch(() => []), [], 'no session directories left');
});

t.test('connections per minute from one address', async (t) => {
  const server = await SynthServer.listen({ port: 0, connectionsPerMinute: 2 });
  t.teardown(() => server.close());
  const port = server.address().port;
  for (let i = 0; i < 2; i++) t.match(await peer(port, [hello()]).next('welcome'), { type: 'welcome' });
  const third = peer(port, [hello()]);
  t.match(await third.next('welcome'), { type: 'error', code: 'VMS_RATE_LIMITED', fatal: true });
  await third.closed;
  t.pass('the refused connection is closed');
});

t.test('TLS: the client checks the server certificate; a plain client gets nowhere', async (t) => {
  const dir = path.join(testRoot, 'tls');
  await fsp.mkdir(dir);
  const [cert, key] = [path.join(dir, 'cert.pem'), path.join(dir, 'key.pem')];
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
    'subjectAltName=DNS:cloudlet.test,IP:127.0.0.1',
    '-keyout',
    key,
    '-out',
    cert,
  ]);
  const server = await SynthServer.listen({
    port: 0,
    tls: { cert: await fsp.readFile(cert), key: await fsp.readFile(key) },
    token: 'sesame',
  });
  t.teardown(() => server.close());
  const port = server.address().port;
  const ca = await fsp.readFile(cert);
  t.match(
    await peer(port, [hello('sesame'), frame({ type: 'finish' })], { ca, servername: 'cloudlet.test' }).next('welcome'),
    { type: 'welcome' },
    'hello and welcome over TLS',
  );
  const plain = peer(port, [hello('sesame')]);
  await plain.closed;
  t.same(plain.msgs, [], 'a plain-TCP client hears no protocol message');
  await t.rejects(
    synthesize({ server: `127.0.0.1:${port}`, overlay: untrustedDir, token: 'sesame', tls: true }),
    { code: 'VMS_CONNECT', details: { tls: true, reason: 'DEPTH_ZERO_SELF_SIGNED_CERT' } },
    'a certificate the client does not trust is refused',
  );
  await t.rejects(
    synthesize({
      server: `127.0.0.1:${port}`,
      overlay: untrustedDir,
      token: 'sesame',
      tls: { ca, servername: 'other.test' },
    }),
    { code: 'VMS_CONNECT', details: { tls: true, reason: 'ERR_TLS_CERT_ALTNAME_INVALID' } },
    'a certificate for another name is refused',
  );
  await t.rejects(
    synthesize({ server: `127.0.0.1:${port}`, overlay: untrustedDir, token: 'sesame', tls: { ca } }),
    { code: 'VMS_UNTRUSTED_KEY' },
    'with the right CA the conversation goes on to the manifest check',
  );
  await drained(server);
});

t.test('daemon: /healthz, /readyz, /metrics', async (t) => {
  const env = {
    CONFIGURATION_DIRECTORY: path.join(testRoot, 'no-config'),
    VMSYNTH_LISTEN: '127.0.0.1:0',
    VMSYNTH_METRICS_LISTEN: '127.0.0.1:0',
    VMSYNTH_TOKEN: 'sesame',
    VMSYNTH_MAX_SESSIONS: '1',
    VMSYNTH_GRACE_S: '0', // a vanished client's session ends at once
  };
  const d = await startDaemon(resolveConfig({ env }).config);
  let stopped = false;
  t.teardown(() => (stopped ? undefined : d.stop()));
  const port = d.server.address().port;
  const m = d.health!.address();
  const get = async (p: string) => {
    const r = await fetch(`http://127.0.0.1:${m.port}${p}`);
    return { status: r.status, body: await r.text() };
  };
  t.same(await get('/healthz'), { status: 200, body: 'ok\n' });
  t.same(await get('/readyz'), { status: 200, body: 'ready\n' });
  t.equal((await get('/nope')).status, 404);
  t.match(await peer(port, [hello('wrong')]).next('welcome'), { code: 'VMS_AUTH' });
  const held = peer(port, [hello('sesame'), session()]);
  await held.next('accepted');
  const busy = await get('/readyz');
  t.same(
    busy,
    { status: 503, body: 'not ready: running its limit of 1 sessions\n' },
    'a full server is not ready for more',
  );
  held.socket.destroy();
  await drained(d.server);
  const metrics = (await get('/metrics')).body;
  for (const name of [
    'vmsynth_first_response_seconds',
    'vmsynth_blocked_read_seconds',
    'vmsynth_segment_bytes_total',
    'vmsynth_out_of_order_fetches_total',
    'vmsynth_active_sessions',
    'vmsynth_nodejs_eventloop_lag_seconds',
  ]) {
    t.match(metrics, new RegExp(`^# TYPE ${name} `, 'm'), `${name} is exported`);
  }
  t.match(metrics, /^vmsynth_connections_refused_total\{code="VMS_AUTH"\} 1$/m, 'the refused token was counted');
  t.match(
    metrics,
    /^vmsynth_sessions_total\{outcome="VMS_PEER_GONE"\} 1$/m,
    'the session whose client vanished was counted',
  );
  t.match(metrics, /^vmsynth_active_sessions 0$/m);
  t.same(await d.stop(), { forced: false });
  stopped = true;
  await t.rejects(get('/healthz'), 'the endpoint is closed after stop');
});
