/**
 * The server against bad clients, on a real listener (libvirt connected, no
 * VM needed): oversized and malformed frames, messages out of order, a
 * foreign protocol, a wrong token, a tampered or untrusted manifest, an
 * unknown base, 40 copies of one segment, a client that goes silent after
 * `accepted`, an anonymous flood. Each gets its typed error as a fatal
 * error frame and a closed connection (the silent one: dropped, its session
 * ended after its grace period); the server keeps serving, and nothing is
 * left behind.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { drained, until } from '../helpers/wait.js';
import { channels } from '../../lib/core/diagnostics.js';
import { Overlay } from '../../lib/overlay/reader.js';
import net from 'node:net';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { runDir } from '../../lib/core/paths.js';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { packr } from '../../lib/core/msgpack.js';
import { MANIFEST_FILE } from '../../lib/overlay/format.js';
import { generateKey, loadSigningKey } from '../../lib/overlay/keys.js';
import { encodeFrame, FrameDecoder } from '../../lib/protocol/frames.js';
import { PROTOCOL } from '../../lib/protocol/messages.js';
import { SynthServer } from '../../lib/server/server.js';
import { loadBase } from '../../lib/vm/base.js';
import { generatePair } from '../helpers/images.js';

t.teardown(removeTestRoot);
const bases = process.env.VMSYNTH_BASE_DIR!;

await generatePair(bases, 'gen', path.join(testRoot, 'c1'), { memChunks: 256, diskChunks: 128, each: 4 });
await generatePair(bases, 'gone', path.join(testRoot, 'c2'), { memChunks: 256, diskChunks: 128, each: 4, seed: 99 });
await generateKey();
const otherKeys = path.join(testRoot, 'other-keys');
await generateKey(otherKeys);

async function overlayFor(base: string, out: string, keyDir?: string): Promise<Buffer> {
  await buildOverlay({
    base: baseInput(await loadBase(base)),
    custom: {
      memory: path.join(testRoot, base === 'gen' ? 'c1' : 'c2', 'memory.raw'),
      disk: path.join(testRoot, base === 'gen' ? 'c1' : 'c2', 'disk.raw'),
      deviceState: path.join(testRoot, base === 'gen' ? 'c1' : 'c2', 'device.state'),
    },
    appPort: 8000,
    key: await loadSigningKey(undefined, keyDir),
    out,
  });
  return fsp.readFile(path.join(out, MANIFEST_FILE));
}
const good = await overlayFor('gen', path.join(testRoot, 'ov-good'));
const untrusted = await overlayFor('gen', path.join(testRoot, 'ov-untrusted'), otherKeys);
const unknownBase = await overlayFor('gone', path.join(testRoot, 'ov-gone'));
await fsp.rm(path.join(bases, 'gone'), { recursive: true });
const env = packr.unpack(good) as { body: Uint8Array };
const body = Buffer.from(env.body);
body[body.length >> 1]! ^= 0x10;
const tampered = packr.pack({ ...env, body });

const server = await SynthServer.listen({ port: 0 });
t.teardown(() => server.close());

type Msg = Record<string, unknown>;
/** Connects, writes `bytes`, and collects the server's messages until it closes the connection. */
function converse(bytes: Buffer[], port = server.address().port): Promise<Msg[]> {
  return new Promise((resolve, reject) => {
    const out: Msg[] = [];
    const dec = new FrameDecoder();
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      for (const b of bytes) s.write(b);
    });
    s.on('data', (d: Buffer) => {
      for (const f of dec.push(d)) out.push(f.header);
    });
    s.on('close', () => resolve(out));
    s.on('error', reject);
    setTimeout(() => {
      s.destroy();
      reject(new Error(`no close; got ${JSON.stringify(out)}`));
    }, 20_000).unref();
  });
}
const frame = (h: Msg, payload?: Buffer) => Buffer.concat(encodeFrame(h as { type: string }, payload));
const hello = (token?: string) =>
  frame({ type: 'hello', protocol: PROTOCOL, client: 'test', ...(token ? { token } : {}) });
const session = (manifest: Buffer) => frame({ type: 'session', policy: 'early-start' }, manifest);
const lastError = (msgs: Msg[]) => msgs.at(-1);

t.test('framing: an oversized length and a malformed header', async (t) => {
  const big = Buffer.alloc(4);
  big.writeUInt32BE(0x7fffffff);
  t.match(lastError(await converse([big])), { type: 'error', code: 'VMS_FRAME_TOO_LARGE', fatal: true });
  const junk = Buffer.from([0, 0, 0, 5, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1]);
  t.match(lastError(await converse([junk])), { type: 'error', code: 'VMS_PROTOCOL', fatal: true });
  // A frame the size of a manifest is refused before hello: the cap depends on the stage.
  const early = Buffer.alloc(4);
  early.writeUInt32BE(1 << 20);
  t.match(lastError(await converse([early])), { code: 'VMS_FRAME_TOO_LARGE' });
});

t.test('conversation: out of order, unknown type, foreign protocol, wrong token', async (t) => {
  // An error frame carries only code and message, so these assert the code; which rule refused
  // each (details: stage, unknown-type, version, missing token) is asserted in connection.test.ts.
  t.match(lastError(await converse([session(good)])), { type: 'error', code: 'VMS_PROTOCOL', fatal: true });
  t.match(lastError(await converse([hello(), frame({ type: 'teleport' })])), {
    type: 'error',
    code: 'VMS_PROTOCOL',
    fatal: true,
  });
  t.match(
    lastError(await converse([frame({ type: 'hello', protocol: 'vmsynth/1', client: 'x' })])),
    { type: 'error', code: 'VMS_PROTOCOL', fatal: true },
    'a client of the previous version is refused',
  );
  t.match(lastError(await converse([hello(), frame({ type: 'segment', index: 0 }, Buffer.from('x'))])), {
    code: 'VMS_PROTOCOL',
  });

  const guarded = await SynthServer.listen({ port: 0, token: 'sesame' });
  t.teardown(() => guarded.close());
  const port = guarded.address().port;
  t.match(lastError(await converse([hello()], port)), { type: 'error', code: 'VMS_AUTH', fatal: true });
  t.match(lastError(await converse([hello('wrong')], port)), { code: 'VMS_AUTH' });
  const ok = await converse([hello('sesame'), frame({ type: 'finish' })], port);
  t.match(ok[0], { type: 'welcome', protocol: PROTOCOL }, 'the right token is welcome');
});

t.test('manifests: tampered, untrusted, unknown base', async (t) => {
  t.match(lastError(await converse([hello(), session(tampered)])), { code: 'VMS_BAD_SIGNATURE' });
  t.match(lastError(await converse([hello(), session(untrusted)])), { code: 'VMS_UNTRUSTED_KEY' });
  t.match(lastError(await converse([hello(), session(unknownBase)])), { code: 'VMS_BASE_NOT_FOUND' });
  t.match(lastError(await converse([hello(), session(Buffer.from('not a manifest'))])), {
    code: 'VMS_OVERLAY_CORRUPT',
  });
});

t.test('hostile sessions: copies of one segment, a client that goes silent, an anonymous flood', async (t) => {
  // 40 copies of segment 0 in one write: the first is being applied when the second arrives.
  const segs = await fsp.readFile(path.join(testRoot, 'ov-good', 'overlay.segments'));
  const ov = await Overlay.open(path.join(testRoot, 'ov-good'), { trusted: null });
  const s0 = ov.body.segments[0]!;
  const copy = frame({ type: 'segment', index: 0 }, segs.subarray(s0.offset, s0.offset + s0.bytes));
  const ended = new Promise<{ error?: { details?: Record<string, unknown> } }>((resolve) => {
    const on = (m: unknown) => {
      channels.sessionEnded.unsubscribe(on);
      resolve(m as { error?: { details?: Record<string, unknown> } });
    };
    channels.sessionEnded.subscribe(on);
  });
  const msgs = await new Promise<Msg[]>((resolve, reject) => {
    const out: Msg[] = [];
    const dec = new FrameDecoder();
    const sock = net.connect({ host: '127.0.0.1', port: server.address().port }, () => {
      sock.write(Buffer.concat([hello(), frame({ type: 'session', policy: 'baseline' }, good)]));
    });
    sock.on('data', (d: Buffer) => {
      for (const f of dec.push(d)) {
        out.push(f.header);
        // Asked for segment 0: 40 copies of it in one write.
        if (f.header.type === 'want' && (f.header.segments as number[]).includes(0) && !out.some((m) => m.sent))
          out.push({ type: 'local', sent: sock.write(Buffer.concat(Array.from({ length: 40 }, () => copy))) });
      }
    });
    sock.on('close', () => resolve(out));
    sock.on('error', reject);
  });
  t.match(lastError(msgs), { type: 'error', code: 'VMS_PROTOCOL', fatal: true }, '40 copies of one segment');
  t.equal(msgs.filter((m) => m.type === 'error').length, 1, 'one error, and nothing after it');
  const end = await Promise.race([ended, new Promise<null>((r) => setTimeout(() => r(null), 20_000).unref())]);
  t.match(end?.error?.details, { reason: 'duplicate-segment', segment: 0 }, 'refused as a second copy');
  // Its only segment had landed as the session closed: the baseline VM must not start after the
  // teardown (it did, and leaked its run directory, mount and worker threads).
  await new Promise((r) => setTimeout(r, 1500));
  t.same(await fsp.readdir(runDir()).catch(() => []), [], 'nothing started after the teardown');

  // A client that says nothing after `accepted`: dropped at the idle limit; its session ends with its grace period.
  const quiet = await SynthServer.listen({ port: 0, keepaliveMs: 100, idleMs: 400, graceMs: 300 });
  t.teardown(() => quiet.close());
  const silent = net.connect(quiet.address().port, '127.0.0.1');
  silent.on('error', () => undefined);
  silent.write(Buffer.concat([hello(), frame({ type: 'session', policy: 'baseline' }, good)]));
  await until(() => quiet.sessionCount === 1, 'the session');
  await drained(quiet, 10_000);
  t.pass('the silent client was dropped and its session ended after its grace period');
  silent.destroy();

  // An anonymous flood from one address does not lock out a client with a token behind it.
  const guarded = await SynthServer.listen({ port: 0, token: 'sesame', connectionsPerMinute: 5 });
  t.teardown(() => guarded.close());
  const port = guarded.address().port;
  for (let i = 0; i < 20; i++) await converse([hello()], port);
  t.match(lastError(await converse([hello()], port)), { code: 'VMS_RATE_LIMITED' }, 'the flood is rate limited');
  const ok = await converse([hello('sesame'), frame({ type: 'finish' })], port);
  t.match(ok[0], { type: 'welcome' }, 'the client with a token still gets in');
});

t.test('the server still serves, and nothing was left behind', async (t) => {
  const msgs = await converse([hello(), frame({ type: 'finish' })]);
  t.match(msgs, [{ type: 'welcome' }, { type: 'finished' }]);
  await drained(server);
  t.equal(server.connectionCount, 0, 'every connection closed');
  t.same(await fsp.readdir(runDir()).catch(() => []), [], 'no session directories');
});
