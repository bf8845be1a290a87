/**
 * The client's session object against a scripted server (real TCP, no VM):
 * open() resolves at `accepted`, offload() may be called any number of times
 * (each reply acknowledged), requests() is the session's log with bodies and
 * outcomes, replay() sends a log again in order, and finish() resolves with
 * the server's stats.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import net from 'node:net';
import path from 'node:path';
import { ClientSession, replay } from '../../lib/client/client.js';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { generateKey, loadSigningKey } from '../../lib/overlay/keys.js';
import { encodeFrame, FrameDecoder } from '../../lib/protocol/frames.js';
import { parseClientMessage, PROTOCOL, type ClientMessage } from '../../lib/protocol/messages.js';
import { loadBase } from '../../lib/vm/base.js';
import { generatePair } from '../helpers/images.js';

t.teardown(removeTestRoot);
await generatePair(process.env.VMSYNTH_BASE_DIR!, 'gen', path.join(testRoot, 'c1'), {
  memChunks: 256,
  diskChunks: 128,
  each: 4,
});
await generateKey();
const ov = path.join(testRoot, 'ov');
const custom = (f: string) => path.join(testRoot, 'c1', f);
await buildOverlay({
  base: baseInput(await loadBase('gen')),
  custom: { memory: custom('memory.raw'), disk: custom('disk.raw'), deviceState: custom('device.state') },
  appPort: 8000,
  key: await loadSigningKey(),
  out: ov,
});

const frame = (h: Record<string, unknown>, payload?: Buffer) =>
  Buffer.concat(encodeFrame(h as { type: string }, payload));

t.test('offload, requests, replay, finish', async (t) => {
  const got: ClientMessage[] = [];
  const server = net.createServer((socket) => {
    const dec = new FrameDecoder({ maxFrameBytes: 64 << 20 });
    socket.on('data', (d: Buffer) => {
      for (const f of dec.push(d)) {
        const m = parseClientMessage(f);
        got.push(m);
        if (m.type === 'hello')
          socket.write(frame({ type: 'welcome', protocol: PROTOCOL, server: 's', keepaliveMs: 10_000, graceMs: 0 }));
        else if (m.type === 'session')
          socket.write(
            frame({
              type: 'accepted',
              session: 's1',
              secret: Buffer.alloc(32),
              base: 'gen',
              segments: 1,
              policy: m.policy,
            }),
          );
        else if (m.type === 'offload')
          socket.write(
            frame({ type: 'reply', id: m.id, status: 200 + m.id }, Buffer.from(`${m.path}:${m.body.toString()}`)),
          );
        else if (m.type === 'finish') {
          socket.write(frame({ type: 'finished', stats: { fine: true } }));
          socket.end();
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const s = await ClientSession.open({
    server: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    overlay: ov,
  });
  t.equal(s.id, 's1');
  const [a, b] = await Promise.all([
    s.offload({ method: 'POST', path: '/a', body: Buffer.from('x') }),
    s.offload({ method: 'GET', path: '/b' }),
  ]);
  t.match(a, { status: 201 });
  t.equal(a.body.toString(), '/a:x');
  t.match(b, { status: 202 }, 'two requests in flight, each answered under its id');
  const log = s.requests();
  t.match(log, [
    { id: 1, method: 'POST', path: '/a', status: 201 },
    { id: 2, method: 'GET', path: '/b', status: 202 },
  ]);
  t.ok(log[0]!.body?.equals(Buffer.from('x')), 'the log keeps bodies');
  const again = await replay(s, log);
  t.same(
    again.map((r) => r.status),
    [203, 204],
    'replayed in order, under new ids',
  );
  t.same(await s.finish(), { fine: true });
  const acks = got.filter((m) => m.type === 'ack').flatMap((m) => (m.type === 'ack' ? m.ids : []));
  t.same(acks.sort(), [1, 2, 3, 4], 'every reply was acknowledged');
  const offloads = got.filter((m) => m.type === 'offload').map((m) => (m.type === 'offload' ? m.path : ''));
  t.same(offloads, ['/a', '/b', '/a', '/b']);
});

t.test('a drop between finish and finished: the session is over, as asked; only its stats are lost', async (t) => {
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    const dec = new FrameDecoder({ maxFrameBytes: 64 << 20 });
    socket.on('data', (d: Buffer) => {
      for (const f of dec.push(d)) {
        const m = parseClientMessage(f);
        if (m.type === 'hello')
          socket.write(frame({ type: 'welcome', protocol: PROTOCOL, server: 's', keepaliveMs: 10_000, graceMs: 5000 }));
        else if (m.type === 'session')
          socket.write(
            frame({
              type: 'accepted',
              session: 's1',
              secret: Buffer.alloc(32),
              base: 'gen',
              segments: 1,
              policy: m.policy,
            }),
          );
        else if (m.type === 'finish')
          socket.resetAndDestroy(); // torn down, and the link died before `finished`
        else if (m.type === 'resume') {
          socket.write(frame({ type: 'error', code: 'VMS_SESSION_GONE', message: 'it was finished', fatal: true }));
          socket.end();
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const s = await ClientSession.open({
    server: `127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    overlay: ov,
  });
  t.same(await s.finish(), { statsLost: true });
  t.equal(connections, 2, 'it reconnected to learn how the session ended');
});
