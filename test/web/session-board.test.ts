/** The live view's bookkeeping: diagnostics events in, each session's snapshot out. */
import t from 'tap';
import { LANES, SessionBoard } from '../../lib/web/session-board.js';

function rig() {
  let now = 1000;
  const board = new SessionBoard(
    2,
    () => now,
    () => 1_700_000_000_000,
  );
  return { board, at: (ms: number) => (now = 1000 + ms) };
}

t.test('segments are put in their lane: background, demand, hurried, store, object', async (t) => {
  const { board, at } = rig();
  board.apply('sessionStarted', {
    session: 's1',
    client: 'phone',
    peer: '10.0.0.2:5',
    policy: 'early-start',
    base: 'b',
    segments: 9,
  });
  at(10);
  board.apply('segmentApplied', { session: 's1', index: 0, bytes: 100, lane: 'background', from: 'client' });
  board.apply('demandFetch', { session: 's1', segment: 1, outOfOrder: false });
  board.apply('segmentApplied', { session: 's1', index: 1, bytes: 101, lane: 'demand', from: 'client' });
  board.apply('demandFetch', { session: 's1', segment: 2, outOfOrder: true });
  board.apply('segmentApplied', { session: 's1', index: 2, bytes: 102, lane: 'demand', from: 'client' });
  board.apply('segmentApplied', { session: 's1', index: 3, bytes: 103, lane: 'background', from: 'store' });
  at(25);
  board.apply('segmentApplied', { session: 's1', index: 4, bytes: 104, lane: 'demand', from: 'object' });
  const [s] = board.all();
  t.same(
    s!.arrivals.lane.map((i) => LANES[i]),
    ['background', 'demand', 'hurried', 'store', 'object'],
  );
  t.same(s!.arrivals.t, [10, 10, 10, 10, 25], 'ms since the session started');
  t.same(s!.arrivals.bytes, [100, 101, 102, 103, 104]);
  t.equal(s!.startedAt, 1_700_000_000_000);
});

t.test('VM state, first response, held reads, drops and reconnects; ended sessions kept, newest first', async (t) => {
  const { board, at } = rig();
  for (const id of ['a', 'b', 'c']) board.apply('sessionStarted', { session: id, peer: 'p0' });
  t.same(
    board.takeChanged().map((s) => s.id),
    ['a', 'b', 'c'],
  );
  t.same(board.takeChanged(), [], 'each change is taken once');
  at(5);
  board.apply('sessionResumed', { session: 'a', ms: 5 });
  board.apply('readUnblocked', { session: 'a', ms: 12.345 });
  board.apply('firstResponse', { session: 'a', ms: 40 });
  board.apply('sessionDetached', { session: 'a', peer: 'p0' });
  at(90);
  board.apply('sessionReattached', { session: 'a', peer: 'p1', resumes: 1 });
  const a = board.all().find((s) => s.id === 'a')!;
  t.match(a, { vm: 'running', resumedMs: 5, firstResponseMs: 40, state: 'running', peer: 'p1' });
  t.same(a.held, { t: [5], ms: [12.3] });
  t.same(a.drops, [{ t: 5 }]);
  t.same(a.reconnects, [{ t: 90, peer: 'p1' }]);
  t.same(
    board.takeChanged().map((s) => s.id),
    ['a'],
  );

  board.apply('vmDied', { session: 'b', error: { code: 'VMS_QEMU_DIED', message: 'gone' } });
  board.apply('sessionEnded', { session: 'b', error: { code: 'VMS_QEMU_DIED', message: 'gone' } });
  board.apply('sessionEnded', { session: 'a' });
  board.apply('sessionEnded', { session: 'c' });
  t.same(
    board.all().map((s) => s.id),
    ['c', 'a'],
    'two ended kept (the board keeps 2), newest first',
  );
  t.match(board.all()[1], { state: 'ended', vm: 'gone', error: null });
  t.notOk(board.apply('segmentApplied', { session: 'c', index: 0 }), 'an ended session takes no more events');
  t.notOk(board.apply('segmentApplied', { index: 0 }), 'an event without a session is ignored');
});

t.test('a session adopted after a restart starts detached, its VM running', async (t) => {
  const { board } = rig();
  board.apply('sessionAdopted', { session: 'z', client: 'phone', resumedMs: 800, appliedMs: 1500 });
  t.match(board.all()[0], { adopted: true, state: 'detached', vm: 'running', resumedMs: 800, completeMs: 1500 });
});
