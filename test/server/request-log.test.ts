/**
 * The request log, exactly: a new id runs, the same request again waits for
 * or replays its outcome, an id used for another request or below the
 * highest is refused, outcomes stay until acknowledged, the cap counts
 * running requests and unacknowledged outcomes, and the export lists every
 * request with how it ended, without bodies.
 */
import t from 'tap';
import { VmsynthError } from '../../lib/core/errors.js';
import { RequestLog } from '../../lib/server/request-log.js';

const body = Buffer.from('hello');

t.test('run once: a repeat waits, then replays, then is refused once acknowledged', async (t) => {
  const log = new RequestLog(4);
  t.same(log.admit(1, 'POST', '/run', body, 5), { action: 'run' });
  t.same(log.admit(1, 'POST', '/run', body, 9), { action: 'wait' }, 'while it runs');
  t.same(log.runningIds(), [1]);
  log.settle(1, { status: 200, body: Buffer.from('ok') });
  t.match(log.admit(1, 'POST', '/run', body, 12), { action: 'replay', outcome: { status: 200 } }, 'after it ended');
  t.same(
    log.unacked().map(([id]) => id),
    [1],
  );
  t.equal(log.ack([1, 7]), 1, 'an unknown id in an ack is ignored');
  t.match(log.admit(1, 'POST', '/run', body, 15), {
    action: 'refuse',
    error: { code: 'VMS_PROTOCOL', details: { reason: 'acknowledged', id: 1 } },
  });
});

t.test('ids: another request under a known id, and an id not above the highest, are refused', async (t) => {
  const log = new RequestLog(4);
  log.admit(5, 'GET', '/a', body, 0);
  t.match(log.admit(5, 'GET', '/b', body, 1), { action: 'refuse', error: { details: { reason: 'id-reused' } } });
  t.match(log.admit(5, 'GET', '/a', Buffer.from('other'), 1), {
    action: 'refuse',
    error: { details: { reason: 'id-reused' } },
  });
  t.match(log.admit(3, 'GET', '/a', body, 1), {
    action: 'refuse',
    error: { details: { reason: 'id-order', id: 3, highest: 5 } },
  });
});

t.test('the cap counts running requests and outcomes not acknowledged', async (t) => {
  const log = new RequestLog(2);
  log.admit(1, 'GET', '/', body, 0);
  log.admit(2, 'GET', '/', body, 0);
  t.match(log.admit(3, 'GET', '/', body, 0), {
    action: 'refuse',
    error: { code: 'VMS_LIMIT', details: { limit: 'maxOffloadsInFlight', max: 2, id: 3 } },
  });
  log.settle(1, { error: new VmsynthError('VMS_GUEST_TIMEOUT', 'slow') });
  t.match(log.admit(3, 'GET', '/', body, 0), { action: 'refuse' }, 'an outcome not acknowledged still counts');
  log.ack([1]);
  t.same(log.admit(3, 'GET', '/', body, 0), { action: 'run' }, 'acknowledged: room again');
});

t.test('the export: every request, how it ended, no bodies; trimmed ids are still known as old', async (t) => {
  const log = new RequestLog(2, 3);
  for (let id = 1; id <= 5; id++) {
    log.admit(id, 'POST', `/r${id}`, body, id * 10);
    log.settle(id, id === 2 ? { error: new VmsynthError('VMS_GUEST_TIMEOUT', 'slow') } : { status: 200, body });
    log.ack([id]);
  }
  const out = log.export();
  t.same(
    out.map((e) => e.id),
    [3, 4, 5],
    'the oldest acknowledged entries left the log',
  );
  t.equal(log.dropped, 2);
  t.match(out[0], { method: 'POST', path: '/r3', arrivedMs: 30, status: 200, acked: true });
  t.equal(out[0]!.bodySha256, '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824');
  t.notOk('body' in out[0]!, 'no body');
  t.match(log.admit(2, 'POST', '/r2', body, 99), { action: 'refuse', error: { details: { reason: 'id-order' } } });
});

t.test(
  'a handoff moves the log: the next cloudlet replays what was not acknowledged, and runs nothing twice',
  async (t) => {
    const a = new RequestLog(8);
    for (let id = 1; id <= 3; id++) a.admit(id, 'POST', `/r${id}`, body, id);
    a.settle(1, { status: 200, body: Buffer.from('one') });
    a.ack([1]);
    a.settle(2, { status: 201, body: Buffer.from('two') });
    t.throws(() => a.snapshot(), { code: 'VMS_INTERNAL' }, 'not while a request runs');
    a.settle(3, { error: new VmsynthError('VMS_GUEST_TIMEOUT', 'slow') });
    const b = new RequestLog(8);
    t.same(
      a.snapshot().entries.map((e) => e.id),
      [2, 3],
      'the acknowledged entry stays behind',
    );
    b.restore(a.snapshot());
    t.same(
      b.unacked().map(([id]) => id),
      [2, 3],
    );
    t.match(
      b.admit(2, 'POST', '/r2', body, 9),
      { action: 'replay', outcome: { status: 201 } },
      'a reply the client lacks',
    );
    t.match(b.admit(3, 'POST', '/r3', body, 9), {
      action: 'replay',
      outcome: { error: { code: 'VMS_GUEST_TIMEOUT' } },
    });
    t.match(b.admit(1, 'POST', '/r1', body, 9), { action: 'refuse' }, 'an acknowledged one is not run again');
    t.match(b.admit(4, 'POST', '/r4', body, 9), { action: 'run' }, 'a new one runs');
    t.ok(b.knows(2) && !b.knows(5));
    t.throws(
      () =>
        new RequestLog(8).restore({ highest: 1, dropped: 0, entries: [], outcomes: [[5, { status: 1, body: body }]] }),
      {
        code: 'VMS_PROTOCOL',
      },
    );
  },
);
