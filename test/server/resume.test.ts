/**
 * Sessions that outlive their connection, against fake sessions (no VM): a
 * resume with the secret from another connection, the replies the client
 * has not acknowledged replayed, requests run once whatever number of times
 * they arrive, the per-session cap on requests, wrong secrets and unknown or
 * expired sessions refused, keepalives, idle and stalled connections
 * dropped while their session waits, a takeover by a new connection, and
 * the error told before the teardown.
 */
import t, { type Test } from 'tap';
import { VmsynthError } from '../../lib/core/errors.js';
import { PROTOCOL } from '../../lib/protocol/messages.js';
import {
  at,
  fatal,
  FakeSession,
  finish,
  frame,
  hello,
  offload,
  resume,
  rig,
  segment,
  type Rig,
  type RigOptions,
} from '../helpers/connection-rig.js';
import { until } from '../helpers/wait.js';

const GRACE = { timing: { graceMs: 5000 } } satisfies RigOptions;

/** A second connection to the same server (registry) as `first`, resuming its session. */
async function resumeFrom(t: Test, first: Rig, secret = first.accepted!.secret as Buffer, session = 'fake0001') {
  const r = await rig(t, { ...GRACE, sessions: first.ctx.sessions });
  r.send(hello(), resume(session, secret));
  t.match(await r.next('welcome'), { type: 'welcome', protocol: PROTOCOL, graceMs: 5000 });
  return r;
}

/** The first connection drops `missing` bytes short of the end of `whole` (a frame): the second resumes. */
async function dropMidFrame(t: Test, a: Rig, whole: Buffer, missing: number): Promise<Rig> {
  a.socket.write(whole.subarray(0, whole.length - missing));
  await new Promise((r) => setTimeout(r, 100));
  a.socket.destroy();
  await a.gone;
  return resumeFrom(t, a);
}

t.test('a dropped session is resumed from another connection; unacknowledged replies come again', async (t) => {
  const a = await at(t, 'session', GRACE);
  t.equal((a.accepted!.secret as Buffer).length, 32, 'accepted carries a 32-byte secret');
  a.sessions[0]!.wanted = { demand: [2], background: [0], tables: [], thin: [] };
  a.send(offload(1));
  t.match(await a.next('reply'), { type: 'reply', id: 1 });
  a.socket.destroy();
  await a.gone;
  t.equal(a.sessions[0]!.closes, 0, 'the drop does not end the session');
  t.equal(a.ctx.sessions.count(), 1, 'it waits in the registry');

  const b = await resumeFrom(t, a);
  const resumed = await b.next('resumed');
  t.match(resumed, {
    type: 'resumed',
    session: 'fake0001',
    base: 'fakebase',
    segments: 3,
    policy: 'early-start',
    resumedMs: 12,
    replies: [1],
    running: [],
  });
  t.notOk('appliedMs' in resumed, 'no appliedMs before the overlay is complete');
  t.match(await b.next('want'), { lane: 'demand', segments: [2] }, 'what it still wants, demand first');
  t.match(await b.next('want'), { lane: 'background', segments: [0] });
  t.match(await b.next('reply'), { type: 'reply', id: 1 }, 'the unacknowledged reply again');
  b.send(frame({ type: 'ack', ids: [1] }), offload(2));
  t.match(await b.next('reply'), { type: 'reply', id: 2 });
  t.same(a.sessions[0]!.offloads, ['POST /run', 'POST /run'], 'each request ran once');
  b.send(segment(1), finish());
  const fin = await b.next('finished');
  t.match(fin, { type: 'finished', stats: { fake: true, resumes: 1, requests: 2 } });
  t.same(a.sessions[0]!.received, [1], 'segments go to the same session');
  t.equal(a.sessions[0]!.closes, 1);
  t.equal(a.ctx.sessions.count(), 0);
});

t.test('a request sent again runs once: it joins the run, or gets the kept reply', async (t) => {
  let release!: () => void;
  const a = await at(t, 'session', GRACE);
  const s = a.sessions[0]!;
  const gate = new Promise<void>((r) => (release = r));
  const plain = s.offload.bind(s);
  s.offload = async (m, p, b) => {
    await gate;
    return plain(m, p, b);
  };
  a.send(offload(3), offload(3));
  await new Promise((r) => setTimeout(r, 50));
  release();
  t.match(await a.next('reply'), { type: 'reply', id: 3 });
  a.send(offload(3));
  t.match(await a.next('reply'), { type: 'reply', id: 3 }, 'sent again after the reply: the kept reply');
  t.same(s.offloads, ['POST /run'], 'the app saw it once');
  a.send(frame({ type: 'offload', id: 3, method: 'GET', path: '/other' }));
  t.match(await a.next('reply'), { type: 'error', id: 3, code: 'VMS_PROTOCOL', fatal: false }, 'an id used again');
  a.send(frame({ type: 'ack', ids: [3] }), offload(3));
  t.match(await a.next('reply'), { type: 'error', id: 3, code: 'VMS_PROTOCOL', fatal: false }, 'acknowledged: gone');
  a.send(offload(2));
  t.match(await a.next('reply'), { type: 'error', id: 2, fatal: false }, 'an id below the highest is refused');
  t.same(s.offloads, ['POST /run']);
});

t.test('requests running plus replies not acknowledged are capped per session', async (t) => {
  const a = await at(t, 'session', GRACE);
  const s = a.sessions[0]!;
  s.offload = () => new Promise(() => undefined); // never answers
  a.send(offload(1), offload(2), offload(3), offload(4), offload(5));
  t.match(await a.next('reply'), { type: 'error', id: 5, code: 'VMS_LIMIT', fatal: false });
  t.equal(s.closes, 0, 'the session goes on');
});

t.test('a wrong secret, an unknown session and an expired one are refused, typed', async (t) => {
  const a = await at(t, 'session', { timing: { graceMs: 300 } });
  const wrong = await resumeFrom(t, a, Buffer.alloc(32, 1));
  t.match(await wrong.next('resumed'), fatal('VMS_AUTH'));
  await wrong.gone;
  t.match(wrong.conn.endedWith?.details, { reason: 'resume-secret' });
  const unknown = await resumeFrom(t, a, a.accepted!.secret as Buffer, 'nosuchsession');
  t.match(await unknown.next('resumed'), fatal('VMS_SESSION_GONE'));
  await unknown.gone;
  t.match(unknown.conn.endedWith?.details, { reason: 'unknown' });
  a.socket.destroy();
  await until(() => a.sessions[0]!.closes === 1, 'the grace period to end the session');
  const late = await resumeFrom(t, a);
  t.match(await late.next('resumed'), fatal('VMS_SESSION_GONE'));
  await late.gone;
  t.match(late.conn.endedWith?.details, { reason: 'ended', error: 'VMS_PEER_GONE' });
  t.equal(a.sessions[0]!.closes, 1, 'closed once');
});

t.test('a resume takes the session over from a connection that still looks alive', async (t) => {
  const a = await at(t, 'session', GRACE);
  const b = await resumeFrom(t, a);
  t.match(await b.next('resumed'), { type: 'resumed' });
  const old = await a.closed;
  t.notOk(
    old.some((m) => m.type === 'error' || m.type === 'finished'),
    'the old connection is closed without a word',
  );
  b.send(offload(1));
  t.match(await b.next('reply'), { type: 'reply', id: 1 });
  t.equal(a.sessions[0]!.closes, 0);
});

t.test('keepalive: a quiet connection is pinged; a silent one is dropped and its session waits', async (t) => {
  const a = await at(t, 'session', { timing: { graceMs: 5000, keepaliveMs: 40, idleMs: 300 } });
  t.match(await a.next('ping'), { type: 'ping' }, 'the server pings a quiet client');
  const msgs = await a.closed; // the client never sends anything
  t.notOk(
    msgs.some((m) => m.type === 'error'),
    'dropped without an error: the session is not over',
  );
  t.match(a.conn.endedWith, { code: 'VMS_PEER_GONE', details: { reason: 'idle', idleMs: 300 } });
  t.equal(a.sessions[0]!.closes, 0);
  const b = await resumeFrom(t, a);
  t.match(await b.next('resumed'), { type: 'resumed' }, 'and it can be resumed');
});

t.test('a client that stops reading is dropped; its session waits', async (t) => {
  const a = await at(t, 'session', { timing: { graceMs: 5000, keepaliveMs: 40, idleMs: 400 } });
  a.socket.pause(); // reads nothing more: the server's writes pile up
  const s = a.sessions[0]!;
  const big = Buffer.alloc(1 << 20, 1);
  s.offload = async () => ({ status: 200, headers: {}, body: big });
  const pinger = setInterval(() => a.send(frame({ type: 'ping' })), 50); // it still sends
  t.teardown(() => clearInterval(pinger));
  for (let id = 1; id <= 4; id++) a.send(offload(id));
  await a.gone;
  clearInterval(pinger);
  t.match(a.conn.endedWith, { code: 'VMS_PEER_GONE', details: { reason: 'not-reading' } });
  t.equal(s.closes, 0, 'the session waits for a resume');
});

t.test('a fatal error reaches the client before the teardown, not after it', async (t) => {
  let closeDone = false;
  let releaseClose!: () => void;
  const a = await at(t, 'session', GRACE);
  const s = a.sessions[0]!;
  s.close = async () => {
    s.closes++;
    await new Promise<void>((r) => (releaseClose = r));
    closeDone = true;
    return {};
  };
  a.send(frame({ type: 'teleport' }));
  t.match(await a.next('never'), fatal('VMS_PROTOCOL'));
  t.equal(closeDone, false, 'told while the teardown is still running');
  releaseClose();
  await a.gone;
  t.equal(closeDone, true);
});

t.test('an internal error is told as one, without JavaScript internals', async (t) => {
  const a = await at(t, 'session', GRACE);
  const s: FakeSession = a.sessions[0]!;
  s.receive = () => {
    throw new TypeError("Cannot read properties of null (reading 'x')");
  };
  a.send(segment(0));
  const m = await a.next('never');
  t.match(m, fatal('VMS_INTERNAL'));
  t.notMatch(String(m.message), /Cannot read|TypeError|null/, 'no JavaScript internals');
});

t.test('over its rate limit, an address gets in only with a valid token', async (t) => {
  const limited = new VmsynthError('VMS_RATE_LIMITED', 'too many', { details: { limit: 1 } });
  const good = await rig(t, { tokens: ['sesame'] });
  good.conn.overRateLimit(limited, 2000);
  good.send(hello({ token: 'sesame' }));
  t.match(await good.next('welcome'), { type: 'welcome' }, 'a valid token gets in');
  const anon = await rig(t, { tokens: ['sesame'] });
  anon.conn.overRateLimit(limited, 2000);
  anon.send(hello());
  t.match(await anon.next('welcome'), fatal('VMS_RATE_LIMITED'), 'no token: rate limited');
  const slow = await rig(t, { tokens: ['sesame'] });
  slow.conn.overRateLimit(limited, 100);
  t.match(await slow.next('welcome'), fatal('VMS_RATE_LIMITED'), 'no hello in time: rate limited');
  const open = await rig(t);
  open.conn.overRateLimit(limited, 2000);
  open.send(hello());
  t.match(await open.next('welcome'), fatal('VMS_RATE_LIMITED'), 'a server without tokens limits everyone');
});

t.test('a segment cut short by a drop: the server keeps what arrived, and asks only for the rest', async (t) => {
  const a = await at(t, 'session', GRACE);
  const s = a.sessions[0]!;
  s.wanted = { demand: [], background: [2], tables: [], thin: [] };
  const payload = Buffer.alloc(300_000);
  for (let i = 0; i < payload.length; i++) payload[i] = i % 251;
  const whole = frame({ type: 'segment', index: 2 }, payload);
  const b = await dropMidFrame(t, a, whole, 100_000); // the last 100,000 bytes never arrive
  const resumed = await b.next('resumed');
  t.match(resumed, { partialIndex: 2, partialBytes: 200_000 }, 'resumed names the part it holds');
  b.send(frame({ type: 'segment', index: 2, offset: 200_000 }, payload.subarray(200_000)));
  await until(() => s.data.length === 1, 'the segment');
  t.ok(s.data[0]!.equals(payload), 'the session got the segment whole: the part and the rest');
  b.send(finish());
  t.match(await b.next('finished'), { stats: { segmentBytesDiscarded: 0 } }, 'nothing received was thrown away');
});

t.test('the rest of a segment from another offset than the part held is refused', async (t) => {
  const a = await at(t, 'session', GRACE);
  a.sessions[0]!.wanted = { demand: [1], background: [], tables: [], thin: [] };
  const whole = frame({ type: 'segment', index: 1 }, Buffer.alloc(50_000, 3));
  const b = await dropMidFrame(t, a, whole, 20_000);
  t.match(await b.next('resumed'), { partialIndex: 1, partialBytes: 30_000 });
  b.send(frame({ type: 'segment', index: 1, offset: 29_000 }, Buffer.alloc(21_000, 3)));
  t.match(await b.next('never'), fatal('VMS_PROTOCOL'));
  await b.gone;
  t.match(b.conn.endedWith?.details, { reason: 'partial-offset', segment: 1, offset: 29_000, held: 30_000 });
});

t.test(
  'chunk lookaside across a drop: tables asked again, thin segments asked thin again, a thin one resumes from its part',
  async (t) => {
    const a = await at(t, 'session', GRACE);
    const s = a.sessions[0]!;
    s.wanted = {
      demand: [],
      background: [0],
      tables: [1],
      thin: [{ index: 2, lane: 'background', omit: Buffer.from([5]) }],
    };
    const payload = Buffer.alloc(200_000, 7);
    const whole = frame({ type: 'segment', index: 2, thin: true }, payload);
    const b = await dropMidFrame(t, a, whole, 50_000);
    t.match(await b.next('resumed'), { partialIndex: 2, partialBytes: 150_000 });
    t.match(await b.next('want'), { lane: 'background', segments: [0] });
    t.match(await b.next('tables'), { type: 'tables', segments: [1] }, 'the table still awaited');
    const thin = await b.next('thin');
    t.match(thin, { type: 'thin', segment: 2, lane: 'background' }, 'the thin segment still wanted');
    t.same([...(thin.payload as Buffer)], [5], 'with its bitmap');
    b.send(frame({ type: 'table', index: 1 }, Buffer.alloc(64)));
    b.send(frame({ type: 'segment', index: 2, offset: 150_000, thin: true }, payload.subarray(150_000)));
    await until(() => s.data.length === 1 && s.tables.length === 1, 'the table and the segment');
    t.same(s.tables, [1], 'the table reached the session');
    t.same(s.thin, [2], 'the segment reached it thin');
    t.ok(s.data[0]!.equals(payload), 'and whole: the part and the rest');
    b.send(finish());
    await b.next('finished');
  },
);
