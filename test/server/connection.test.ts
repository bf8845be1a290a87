/**
 * The connection state machine against a fake session and a fake admission
 * (a real TCP socket on loopback; no libvirt, no FUSE, no VM): every client
 * message in every stage of the conversation, the frame limit of each
 * stage, the handshake timeout, admission refusals, offload failures, and
 * every way a connection ends closing its session exactly once.
 */
import t from 'tap';
import { VmsynthError } from '../../lib/core/errors.js';
import { FRAME_CAPS, PROTOCOL } from '../../lib/protocol/messages.js';
import {
  ack,
  at,
  clientError,
  fatal,
  FakeSession,
  finish,
  frame,
  hello,
  offload,
  ping,
  resume,
  rig,
  segment,
  sessionMsg,
} from '../helpers/connection-rig.js';
import { until } from '../helpers/wait.js';

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
    { stage: 'greeting', name: 'finish', send: finish, expect: stageError('finish', 'greeting') },
    { stage: 'greeting', name: 'ping', send: ping, expect: stageError('ping', 'greeting') },
    { stage: 'greeting', name: 'resume', send: resume, expect: stageError('resume', 'greeting') },
    { stage: 'greeting', name: 'error', send: clientError, expect: 'silent-close' },
    { stage: 'open', name: 'hello', send: () => hello(), expect: stageError('hello', 'open') },
    { stage: 'open', name: 'session', send: sessionMsg, expect: 'accepted' },
    { stage: 'open', name: 'segment', send: () => segment(0), expect: stageError('segment', 'open') },
    { stage: 'open', name: 'offload', send: () => offload(1), expect: stageError('offload', 'open') },
    { stage: 'open', name: 'finish', send: finish, expect: 'finished' },
    { stage: 'open', name: 'ack', send: ack, expect: stageError('ack', 'open') },
    { stage: 'open', name: 'error', send: clientError, expect: 'silent-close' },
    { stage: 'session', name: 'hello', send: () => hello(), expect: stageError('hello', 'attached') },
    { stage: 'session', name: 'session', send: sessionMsg, expect: stageError('session', 'attached') },
    { stage: 'session', name: 'resume', send: resume, expect: stageError('resume', 'attached') },
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
  t.match(
    await r.next('reply'),
    { type: 'error', id: 1, code: 'VMS_GUEST_TIMEOUT', fatal: false },
    'a timeout is not fatal, and names its request',
  );
  r.sessions[0]!.offloadFails = null;
  r.send(offload(2));
  t.match(await r.next('reply'), { type: 'reply', id: 2 }, 'the next request is served');
  r.sessions[0]!.offloadFails = 'VMS_QEMU_DIED';
  r.send(offload(3));
  t.match(
    await r.next('reply'),
    { type: 'error', id: 3, code: 'VMS_QEMU_DIED', fatal: false },
    "the request's outcome",
  );
  t.match(await r.next('never'), fatal('VMS_QEMU_DIED'), 'a dead VM is fatal');
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
  await until(() => r.sessions[0]!.closes === 1, 'the session to close (no grace period)');
  await r.conn.shutdown(new VmsynthError('VMS_SHUTTING_DOWN', 'stopping'));
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
  await until(() => r.conn.starting, 'the session to be starting');
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
