/**
 * The connection state machine against a fake session and a fake admission
 * (a real TCP socket on loopback; no libvirt, no FUSE, no VM): every client
 * message in every stage of the conversation, the frame limit of each
 * stage, the handshake timeout, admission refusals, offload failures, and
 * every way a connection ends closing its session exactly once.
 */
import t, { type Test } from 'tap';
import net from 'node:net';
import { VmsynthError, type ErrorCode } from '../../lib/core/errors.js';
import type { Overlay } from '../../lib/overlay/reader.js';
import { encodeFrame, FrameDecoder } from '../../lib/protocol/frames.js';
import { FRAME_CAPS, PROTOCOL } from '../../lib/protocol/messages.js';
import type { Admitted } from '../../lib/server/admission.js';
import { Authenticator } from '../../lib/server/auth.js';
import { Connection } from '../../lib/server/connection.js';
import type { ServerContext, SessionHandle, SessionRequest } from '../../lib/server/context.js';
import type { Base } from '../../lib/vm/base.js';
import { tokenSha256 } from '../../lib/core/config.js';
import { until } from '../helpers/wait.js';

type Msg = Record<string, unknown> & { type: string };

class FakeSession implements SessionHandle {
  readonly id = 'fake0001';
  readonly domain = 'vmsynth-fake0001';
  runs = 0;
  closes = 0;
  received: number[] = [];
  offloads: string[] = [];
  /** What offload() does: answer, or fail with this code. */
  offloadFails: ErrorCode | null = null;
  constructor(readonly req: SessionRequest) {}
  run(): void {
    this.runs++;
  }
  receive(index: number): void {
    this.received.push(index);
  }
  async offload(
    method: string,
    path: string,
    body: Buffer,
  ): Promise<{ status: number; headers: Record<string, string>; body: Buffer }> {
    this.offloads.push(`${method} ${path}`);
    if (this.offloadFails) throw new VmsynthError(this.offloadFails, 'the fake says no');
    return { status: 200, headers: {}, body: Buffer.concat([Buffer.from('echo:'), body]) };
  }
  async close(): Promise<object> {
    this.closes++;
    return { fake: true };
  }
}

interface Rig {
  /** Sends frames in one write. */
  send(...frames: Buffer[]): void;
  /** The next message of `type` (or an error), in arrival order. */
  next(type: string): Promise<Msg>;
  /** Every message until the server closes the connection. */
  closed: Promise<Msg[]>;
  sessions: FakeSession[];
  conn: Connection;
  socket: net.Socket;
  /** Resolves when the connection reported itself gone. */
  gone: Promise<void>;
}

const frame = (h: Record<string, unknown>, payload?: Buffer): Buffer =>
  Buffer.concat(encodeFrame(h as { type: string }, payload));
const hello = (extra: Record<string, unknown> = {}) =>
  frame({ type: 'hello', protocol: PROTOCOL, client: 'test', ...extra });
const sessionMsg = () => frame({ type: 'session', policy: 'early-start' }, Buffer.from('manifest bytes'));
const segment = (index: number) => frame({ type: 'segment', index }, Buffer.from([1, 2, 3]));
const offload = (id: number) => frame({ type: 'offload', id, method: 'POST', path: '/run' }, Buffer.from('x'));
const finish = () => frame({ type: 'finish' });
const clientError = () => frame({ type: 'error', code: 'VMS_INTERRUPTED', message: 'bye' });

const admitted = {
  overlay: { body: { segments: [{}, {}, {}] }, segmentsBytes: 300 } as unknown as Overlay,
  base: { name: 'fakebase' } as unknown as Base,
};

interface RigOptions {
  admit?: (client: string, manifest: Buffer) => Promise<Admitted>;
  start?: (req: SessionRequest) => Promise<SessionHandle>;
  tokens?: string[];
  handshakeTimeoutMs?: number;
}

async function rig(t: Test, o: RigOptions = {}): Promise<Rig> {
  const sessions: FakeSession[] = [];
  const ctx: ServerContext = {
    auth: new Authenticator((o.tokens ?? []).map((tok, i) => ({ name: `c${i}`, tokenSha256: tokenSha256(tok) }))),
    admit: o.admit ?? (async () => admitted),
    startSession:
      o.start ??
      (async (req) => {
        const s = new FakeSession(req);
        sessions.push(s);
        return s;
      }),
    handshakeTimeoutMs: o.handshakeTimeoutMs ?? 10_000,
  };
  let conn!: Connection;
  let goneResolve!: () => void;
  const gone = new Promise<void>((r) => (goneResolve = r));
  const server = net.createServer((socket) => {
    conn = new Connection(socket, ctx, goneResolve);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const socket = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise<void>((r) => socket.once('connect', r));
  t.teardown(() => socket.destroy());
  await until(() => conn !== undefined, 'the connection');
  const msgs: Msg[] = [];
  const waiters: (() => void)[] = [];
  const decoder = new FrameDecoder();
  socket.on('data', (d: Buffer) => {
    for (const f of decoder.push(d)) msgs.push(f.header);
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise<Msg[]>((r) => socket.on('close', () => r(msgs)));
  let read = 0;
  const next = async (type: string): Promise<Msg> => {
    for (;;) {
      while (read < msgs.length) {
        const m = msgs[read++]!;
        if (m.type === type || m.type === 'error') return m;
      }
      const more = new Promise<void>((r) => waiters.push(r));
      const end = await Promise.race([more.then(() => false), closed.then(() => true)]);
      if (end && read >= msgs.length) throw new Error(`the connection closed before a ${type} message`);
    }
  };
  return { send: (...frames) => socket.write(Buffer.concat(frames)), next, closed, sessions, conn, gone, socket };
}

/** Drives a rig to `stage`: greeting (nothing sent), open (after welcome) or session (after accepted). */
async function at(t: Test, stage: 'greeting' | 'open' | 'session', o: RigOptions = {}): Promise<Rig> {
  const r = await rig(t, o);
  if (stage === 'greeting') return r;
  r.send(hello());
  t.match(await r.next('welcome'), { type: 'welcome', protocol: PROTOCOL });
  if (stage === 'open') return r;
  r.send(sessionMsg());
  t.match(await r.next('accepted'), {
    type: 'accepted',
    session: 'fake0001',
    base: 'fakebase',
    segments: 3,
    policy: 'early-start',
  });
  return r;
}

const fatal = (code: string) => ({ type: 'error', code, fatal: true });

t.test('every message in every stage', async (t) => {
  // What each message does in each stage: the reply it gets, or the typed refusal.
  const stageError = (type: string, stage: string) => ({ code: 'VMS_PROTOCOL', reason: 'stage', type, stage });
  const cases: Array<{
    stage: 'greeting' | 'open' | 'session';
    send: () => Buffer;
    name: string;
    expect: 'welcome' | 'accepted' | 'finished' | 'silent-close' | 'reply' | 'receive' | ReturnType<typeof stageError>;
  }> = [
    { stage: 'greeting', name: 'hello', send: () => hello(), expect: 'welcome' },
    { stage: 'greeting', name: 'session', send: sessionMsg, expect: stageError('session', 'greeting') },
    { stage: 'greeting', name: 'segment', send: () => segment(0), expect: stageError('segment', 'greeting') },
    { stage: 'greeting', name: 'offload', send: () => offload(1), expect: stageError('offload', 'greeting') },
    { stage: 'greeting', name: 'finish', send: finish, expect: 'finished' },
    { stage: 'greeting', name: 'error', send: clientError, expect: 'silent-close' },
    { stage: 'open', name: 'hello', send: () => hello(), expect: stageError('hello', 'open') },
    { stage: 'open', name: 'session', send: sessionMsg, expect: 'accepted' },
    { stage: 'open', name: 'segment', send: () => segment(0), expect: stageError('segment', 'open') },
    { stage: 'open', name: 'offload', send: () => offload(1), expect: stageError('offload', 'open') },
    { stage: 'open', name: 'finish', send: finish, expect: 'finished' },
    { stage: 'open', name: 'error', send: clientError, expect: 'silent-close' },
    { stage: 'session', name: 'hello', send: () => hello(), expect: stageError('hello', 'session') },
    { stage: 'session', name: 'session', send: sessionMsg, expect: stageError('session', 'session') },
    { stage: 'session', name: 'segment', send: () => segment(2), expect: 'receive' },
    { stage: 'session', name: 'offload', send: () => offload(7), expect: 'reply' },
    { stage: 'session', name: 'finish', send: finish, expect: 'finished' },
    { stage: 'session', name: 'error', send: clientError, expect: 'silent-close' },
  ];
  for (const c of cases) {
    await t.test(`${c.name} at ${c.stage}`, async (t) => {
      const r = await at(t, c.stage);
      r.send(c.send());
      if (typeof c.expect === 'object') {
        t.match(await r.next('never'), { type: 'error', code: c.expect.code, fatal: true }, 'a fatal typed error');
        await r.gone;
        t.match(
          r.conn.endedWith?.details,
          { reason: c.expect.reason, type: c.expect.type, stage: c.expect.stage },
          'its details say which rule',
        );
        await r.closed;
      } else if (c.expect === 'welcome' || c.expect === 'accepted') {
        t.match(await r.next(c.expect), { type: c.expect });
        if (c.expect === 'accepted') t.equal(r.sessions[0]!.runs, 1, 'the session was started and run');
      } else if (c.expect === 'finished') {
        t.match(
          await r.next('finished'),
          { type: 'finished', stats: c.stage === 'session' ? { fake: true } : {} },
          "finished, with the session's stats",
        );
        await r.closed;
      } else if (c.expect === 'silent-close') {
        const msgs = await r.closed;
        t.notOk(
          msgs.some((m) => m.type === 'error' || m.type === 'finished'),
          'a client that gave up is not answered',
        );
      } else if (c.expect === 'receive') {
        await until(() => r.sessions[0]!.received.length === 1, 'the segment');
        t.same(r.sessions[0]!.received, [2], 'the segment went to the session');
      } else {
        const m = await r.next('reply');
        t.match(m, { type: 'reply', id: 7, status: 200, payloadBytes: 6 }, 'the reply carries the request id');
        t.same(r.sessions[0]!.offloads, ['POST /run']);
      }
      if (c.stage === 'session' && c.expect !== 'receive' && c.expect !== 'reply') {
        await r.gone;
        t.equal(r.sessions[0]!.closes, 1, 'the session was closed exactly once');
      }
      if (c.stage === 'session' && (c.expect === 'receive' || c.expect === 'reply'))
        t.equal(r.sessions[0]!.closes, 0, 'the session goes on');
    });
  }
});

t.test('a client of another protocol version is told both versions', async (t) => {
  const r = await rig(t);
  r.send(hello({ protocol: 'vmsynth/1' }));
  t.match(await r.next('welcome'), fatal('VMS_PROTOCOL'));
  await r.gone;
  t.match(r.conn.endedWith?.details, { reason: 'version', server: PROTOCOL, client: 'vmsynth/1' });
});

t.test('an unknown message type is refused, and said to be one', async (t) => {
  const r = await at(t, 'open');
  r.send(frame({ type: 'teleport' }));
  t.match(await r.next('never'), fatal('VMS_PROTOCOL'));
  await r.gone;
  t.match(r.conn.endedWith?.details, { reason: 'unknown-type', type: 'teleport' });
});

t.test('tokens: none given, a wrong one, the right one', async (t) => {
  for (const [token, code, reason] of [
    [undefined, 'VMS_AUTH', 'missing'],
    ['wrong', 'VMS_AUTH', 'invalid'],
    ['sesame', null, null],
  ] as const) {
    const r = await rig(t, { tokens: ['sesame'] });
    r.send(hello(token === undefined ? {} : { token }));
    const m = await r.next('welcome');
    if (code) {
      t.match(m, fatal(code), `token ${token ?? '(none)'}: refused`);
      await r.gone;
      t.match(r.conn.endedWith?.details, { reason }, `token ${token ?? '(none)'}: refused as ${reason}`);
    } else t.match(m, { type: 'welcome' }, 'the right token is welcome');
  }
});

t.test('an admission refusal ends the connection before any session starts', async (t) => {
  for (const code of ['VMS_BUSY', 'VMS_LIMIT', 'VMS_UNTRUSTED_KEY', 'VMS_BASE_NOT_FOUND'] as const) {
    let started = 0;
    const r = await at(t, 'open', {
      admit: async () => {
        throw new VmsynthError(code, 'no');
      },
      start: async () => {
        started++;
        throw new Error('must not start');
      },
    });
    r.send(sessionMsg());
    t.match(await r.next('accepted'), fatal(code), `${code} is told`);
    await r.closed;
    t.equal(started, 0, `${code}: no session was started`);
  }
});

t.test('the handshake timeout ends a connection that opens no session', async (t) => {
  const r = await rig(t, { handshakeTimeoutMs: 150 });
  r.send(hello());
  t.match(await r.next('welcome'), { type: 'welcome' });
  t.match(await r.next('accepted'), fatal('VMS_PROTOCOL'));
  await r.gone;
  t.match(r.conn.endedWith?.details, { reason: 'handshake-timeout', ms: 150 });
});

t.test('an open session is not ended by the handshake timeout', async (t) => {
  const r = await at(t, 'session', { handshakeTimeoutMs: 150 });
  await new Promise((res) => setTimeout(res, 400));
  r.send(offload(1));
  t.match(await r.next('reply'), { type: 'reply', id: 1 }, 'still served after the timeout passed');
  t.equal(r.sessions[0]!.closes, 0);
});

t.test('frame limits follow the stage', async (t) => {
  // Before hello, a frame over the greeting cap is refused as soon as its length arrives.
  const prefix = (n: number) => Buffer.from([(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
  const r1 = await rig(t);
  r1.send(prefix(FRAME_CAPS.greeting + 1));
  t.match(await r1.next('welcome'), fatal('VMS_FRAME_TOO_LARGE'), 'over the greeting cap before hello');
  // After hello, a manifest far over the greeting cap is fine.
  const r2 = await at(t, 'open');
  r2.send(frame({ type: 'session', policy: 'baseline' }, Buffer.alloc(FRAME_CAPS.greeting * 4, 7)));
  t.match(await r2.next('accepted'), { type: 'accepted' }, 'a 256 KiB manifest is accepted once the client said hello');
  t.equal(r2.sessions[0]!.req.policy, 'baseline');
  // hello and a big manifest in one write: the manifest is cut under the cap hello raised, however TCP
  // joins the two (it was checked against the greeting cap and refused with VMS_FRAME_TOO_LARGE).
  const r4 = await rig(t);
  r4.send(hello(), frame({ type: 'session', policy: 'early-start' }, Buffer.alloc(FRAME_CAPS.greeting * 4, 7)));
  t.match(await r4.next('welcome'), { type: 'welcome' });
  t.match(await r4.next('accepted'), { type: 'accepted' }, 'hello and a 256 KiB manifest pipelined in one write');
  // During the session, a frame over the streaming cap is refused, and the session closed.
  const r3 = await at(t, 'session');
  r3.send(prefix(FRAME_CAPS.streaming + 1));
  t.match(await r3.next('never'), fatal('VMS_FRAME_TOO_LARGE'), 'over the streaming cap in a session');
  await r3.gone;
  t.equal(r3.sessions[0]!.closes, 1);
});

t.test('offload failures: a slow app is reported, a dead VM ends the session', async (t) => {
  const r = await at(t, 'session');
  r.sessions[0]!.offloadFails = 'VMS_GUEST_TIMEOUT';
  r.send(offload(1));
  t.match(await r.next('reply'), { type: 'error', code: 'VMS_GUEST_TIMEOUT', fatal: false }, 'a timeout is not fatal');
  r.sessions[0]!.offloadFails = null;
  r.send(offload(2));
  t.match(await r.next('reply'), { type: 'reply', id: 2 }, 'the next request is served');
  r.sessions[0]!.offloadFails = 'VMS_QEMU_DIED';
  r.send(offload(3));
  t.match(await r.next('reply'), fatal('VMS_QEMU_DIED'), 'a dead VM is fatal');
  await r.gone;
  t.equal(r.sessions[0]!.closes, 1);
});

t.test('session events become messages; a failed session ends the connection', async (t) => {
  const r = await at(t, 'session');
  const ev = r.sessions[0]!.req.events;
  ev.want('background', [0, 1]);
  ev.want('demand', [2]);
  ev.hurry([1]);
  ev.ready(123);
  ev.complete(456);
  t.match(await r.next('want'), { type: 'want', lane: 'background', segments: [0, 1] });
  t.match(await r.next('want'), { type: 'want', lane: 'demand', segments: [2] });
  t.match(await r.next('hurry'), { type: 'hurry', segments: [1] });
  t.match(await r.next('ready'), { type: 'ready', resumedMs: 123 });
  t.match(await r.next('complete'), { type: 'complete', appliedMs: 456 });
  ev.failed(new VmsynthError('VMS_OVERLAY_CORRUPT', 'twice bad'));
  t.match(await r.next('never'), fatal('VMS_OVERLAY_CORRUPT'));
  await r.gone;
  t.equal(r.sessions[0]!.closes, 1);
});

t.test('the client vanishing mid-session closes the session once', async (t) => {
  const r = await at(t, 'session');
  r.send(segment(0));
  await until(() => r.sessions[0]!.received.length === 1, 'the segment');
  r.socket.destroy();
  await r.gone;
  t.equal(r.conn.endedWith?.code, 'VMS_PEER_GONE');
  await r.conn.end(null);
  t.equal(r.sessions[0]!.closes, 1, 'a later end closes nothing again');
});

t.test('a connection that ends while its session starts closes that session, and never accepts', async (t) => {
  let release!: () => void;
  const slow = new Promise<void>((res) => (release = res));
  const made: FakeSession[] = [];
  const r = await at(t, 'open', {
    start: async (req) => {
      await slow;
      const s = new FakeSession(req);
      made.push(s);
      return s;
    },
  });
  r.send(sessionMsg());
  await until(() => r.conn.hasSession, 'the session to be starting');
  const ending = r.conn.shutdown(new VmsynthError('VMS_SHUTTING_DOWN', 'stopping'));
  release();
  await ending;
  const msgs = await r.closed;
  t.notOk(
    msgs.some((m) => m.type === 'accepted'),
    'no accepted',
  );
  t.match(msgs.at(-1), fatal('VMS_SHUTTING_DOWN'), 'the client is told why');
  t.equal(made[0]!.closes, 1, 'the session set up meanwhile was closed');
  t.equal(made[0]!.runs, 0, 'and never run');
});
