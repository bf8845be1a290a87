/**
 * The client's reconnect loop against fake attempts: tries every 100 ms at
 * first, stops at the first connection, gives up at the deadline with the
 * last reason, and takes a server that keeps refusing for the stopped server
 * it is.
 */
import t from 'tap';
import { reconnectWithin, type ReconnectOptions } from '../../lib/client/reconnect.js';
import { VmsynthError } from '../../lib/core/errors.js';

const refused = () =>
  new VmsynthError('VMS_CONNECT', 'cannot connect: connect ECONNREFUSED', { details: { reason: 'ECONNREFUSED' } });
const unreachable = () =>
  new VmsynthError('VMS_CONNECT', 'cannot connect: connect ENETUNREACH', { details: { reason: 'ENETUNREACH' } });

function opts(attempt: () => Promise<void>, ms: number, extra: Partial<ReconnectOptions> = {}): ReconnectOptions {
  return {
    deadline: performance.now() + ms,
    graceMs: ms,
    attempt,
    lastDrop: 'the server closed the connection',
    server: { host: '127.0.0.1', port: 9 },
    session: 's1',
    ...extra,
  };
}

t.test('connects on the third try, about 100 ms apart', async (t) => {
  const at: number[] = [];
  const failure = await reconnectWithin(
    opts(async () => {
      at.push(performance.now());
      if (at.length < 3) throw unreachable();
    }, 5000),
  );
  t.equal(failure, null);
  t.equal(at.length, 3);
  const gaps = [at[1]! - at[0]!, at[2]! - at[1]!];
  t.ok(
    gaps.every((g) => g >= 90 && g < 400),
    `tries ${gaps.map(Math.round).join(' and ')} ms apart`,
  );
});

t.test('a network that stays down: given up at the deadline, with the last reason', async (t) => {
  const t0 = performance.now();
  const failure = await reconnectWithin(
    opts(async () => {
      throw unreachable();
    }, 600),
  );
  t.match(failure, { code: 'VMS_PEER_GONE', details: { reason: 'resume-failed', graceMs: 600 } });
  t.match(failure!.message, /ENETUNREACH/);
  t.ok(performance.now() - t0 >= 590, 'not before the deadline');
});

t.test('a server that keeps refusing is taken for stopped, long before the grace period ends', async (t) => {
  const t0 = performance.now();
  const failure = await reconnectWithin(
    opts(
      async () => {
        throw refused();
      },
      60_000,
      { refusedMs: 400 },
    ),
  );
  t.match(failure, { code: 'VMS_PEER_GONE', details: { reason: 'server-gone' } });
  const ms = performance.now() - t0;
  t.ok(ms >= 400 && ms < 2000, `after ${Math.round(ms)} ms of refusals`);
});

t.test('a refusal streak broken by another failure starts again', async (t) => {
  let n = 0;
  const failure = await reconnectWithin(
    opts(
      async () => {
        n++;
        throw n % 3 === 0 ? unreachable() : refused();
      },
      1000,
      { refusedMs: 250 },
    ),
  );
  t.match(failure, { details: { reason: 'resume-failed' } }, 'never 250 ms of refusals in a row');
});

t.test('a server that keeps sessions across restarts is waited for to the deadline, refusals or not', async (t) => {
  const t0 = performance.now();
  const failure = await reconnectWithin(
    opts(
      async () => {
        throw refused();
      },
      900,
      { refusedMs: 200, keeps: true },
    ),
  );
  t.match(failure, { code: 'VMS_PEER_GONE', details: { reason: 'server-gone' } });
  t.match(failure!.message, /no server took the session back within its grace period/);
  t.ok(performance.now() - t0 >= 890, 'not before the deadline');

  let n = 0;
  const back = await reconnectWithin(
    opts(
      async () => {
        if (++n < 5) throw refused();
      },
      5000,
      { refusedMs: 200, keeps: true },
    ),
  );
  t.equal(back, null, 'a server back after refusals longer than refusedMs is reached');
});
