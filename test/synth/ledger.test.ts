/**
 * A synthesis session's bookkeeping under a fake clock: milliseconds from
 * construction, what was received and still waits to be applied, one retry
 * per segment, the first response's snapshot, where each segment a held read
 * waits for is, and the stats it assembles.
 */
import t from 'tap';
import { describeHeld, SessionLedger, unexpectedSegment } from '../../lib/synth/ledger.js';
import type { BlockedReadStats } from '../../lib/synth/arrivals.js';

/** A clock the test moves by hand; starts at an arbitrary non-zero time. */
function fakeClock(start = 5_000.25) {
  let now = start;
  return { now: () => now, advance: (ms: number) => void (now += ms) };
}

const noBlocked: BlockedReadStats = { count: 0, totalMs: 0, maxMs: 0, p50Ms: 0, p90Ms: 0 };

const hedges = { hedged: 0, dropped: 0, droppedBytes: 0 };

t.test('ms() counts from construction, rounded', async (t) => {
  const clock = fakeClock();
  clock.advance(1_000);
  const l = new SessionLedger('demand-only', 4, 4096, clock.now);
  t.equal(l.ms(), 0, 'time before construction does not count');
  clock.advance(12.4);
  t.equal(l.ms(), 12);
  clock.advance(0.2);
  t.equal(l.ms(), 13, '12.6 rounds to 13');
});

t.test('received, settled and isApplying track the segments waiting to be applied', async (t) => {
  const l = new SessionLedger('demand-only', 4, 10_000, fakeClock().now);
  t.notOk(l.isApplying(1));
  l.received(1, 300);
  l.received(3, 700);
  t.equal(l.segmentsReceived, 2);
  t.equal(l.bytesReceived, 1000);
  t.ok(l.isApplying(1));
  t.ok(l.isApplying(3));
  t.notOk(l.isApplying(2));
  l.settled(1);
  t.notOk(l.isApplying(1), 'applied');
  t.ok(l.isApplying(3), 'the other still waits');
  l.settled(2);
  t.equal(l.segmentsReceived, 2, 'settling never changes what was received');
  t.equal(l.bytesReceived, 1000);
});

t.test('mayRetry allows one retry per segment and counts it', async (t) => {
  const l = new SessionLedger('baseline', 4, 10_000, fakeClock().now);
  t.equal(l.retries, 0);
  t.equal(l.mayRetry(2), true);
  t.equal(l.mayRetry(2), false, 'the second failure of a segment is not retried');
  t.equal(l.mayRetry(0), true, 'another segment has its own retry');
  t.equal(l.mayRetry(0), false);
  t.equal(l.mayRetry(2), false);
  t.equal(l.retries, 2);
});

t.test("replied() returns the first response's ms once, with what was received before it", async (t) => {
  const clock = fakeClock();
  const l = new SessionLedger('early-start', 3, 9_000, clock.now);
  l.received(0, 1_000);
  l.received(1, 2_500);
  clock.advance(250);
  t.equal(l.replied(), 250);
  t.equal(l.firstResponseMs, 250);
  l.received(2, 4_000);
  clock.advance(100);
  t.equal(l.replied(), null, 'a later reply is not the first response');
  t.equal(l.firstResponseMs, 250, 'and does not move it');
  const s = l.stats({
    outOfOrder: 0,
    blockedReads: noBlocked,
    heldReads: { reads: 0, oldestMs: 0, segments: [] },
    hedges,
  });
  t.equal(s.bytesReceivedBeforeFirstResponse, 3_500, 'the segment after the reply is not counted before it');
  t.equal(s.segmentsReceivedBeforeFirstResponse, 2);
  t.equal(s.bytesReceived, 7_500);
});

t.test('before any reply the snapshot is null', async (t) => {
  const l = new SessionLedger('demand-only', 1, 10, fakeClock().now);
  l.received(0, 10);
  const s = l.stats({
    outOfOrder: 0,
    blockedReads: noBlocked,
    heldReads: { reads: 0, oldestMs: 0, segments: [] },
    hedges,
  });
  t.equal(s.firstResponseMs, null);
  t.equal(s.bytesReceivedBeforeFirstResponse, null);
  t.equal(s.segmentsReceivedBeforeFirstResponse, null);
});

t.test('resumed() and complete() record and return the ms of their milestone', async (t) => {
  const clock = fakeClock();
  const l = new SessionLedger('demand-only', 2, 100, clock.now);
  t.equal(l.resumedMs, null);
  t.equal(l.completeMs, null);
  clock.advance(40);
  t.equal(l.resumed(), 40);
  clock.advance(1_960);
  t.equal(l.complete(), 2_000);
  t.equal(l.resumedMs, 40);
  t.equal(l.completeMs, 2_000);
});

t.test('held() tells where each segment a held read waits for is', async (t) => {
  const l = new SessionLedger('demand-only', 5, 100, fakeClock().now);
  l.received(1, 10);
  l.received(2, 10);
  l.settled(2);
  const asked: number[] = [];
  const scheduler = (i: number) => {
    asked.push(i);
    return i === 0 ? ('requested' as const) : i === 2 ? ('received' as const) : ('queued' as const);
  };
  const h = l.held({ reads: 3, oldestMs: 77, segments: [-1, 0, 1, 2, 4, 5, 9] }, scheduler);
  t.same(h, {
    reads: 3,
    oldestMs: 77,
    segments: [
      { index: -1, state: 'none' },
      { index: 0, state: 'requested' },
      { index: 1, state: 'applying' },
      { index: 2, state: 'received' },
      { index: 4, state: 'queued' },
      { index: 5, state: 'none' },
      { index: 9, state: 'none' },
    ],
  });
  t.same(asked, [0, 2, 4], 'the scheduler is asked only about segments in range and not applying');
  t.same(l.held({ reads: 0, oldestMs: 0, segments: [] }, scheduler), { reads: 0, oldestMs: 0, segments: [] });
});

t.test("stats() assembles the ledger's counts with the live numbers", async (t) => {
  const clock = fakeClock();
  const l = new SessionLedger('early-start', 6, 123_456, clock.now);
  l.received(0, 1_000);
  l.demandFetches = 2;
  l.mayRetry(0);
  clock.advance(30);
  l.resumed();
  clock.advance(70);
  l.replied();
  l.received(1, 500);
  l.received(2, 700, 'store'); // read from the store: not received over the link...
  l.settled(2);
  l.fromSource('store', 700); // ...counted once it checked out
  l.received(4, 300, 'object');
  l.settled(4);
  l.fromSource('object', 300);
  l.received(3, 900, 'store');
  l.settled(3); // failed its check: not counted
  l.table(320);
  l.table(64);
  l.received(5, 2_000); // thin: its bytes as sent...
  l.settled(5);
  l.lookaside(3, 12_288); // ...and the chunks the store filled in
  clock.advance(400);
  l.complete();
  const blockedReads: BlockedReadStats = { count: 2, totalMs: 30.5, maxMs: 20.5, p50Ms: 20.5, p90Ms: 20.5 };
  const heldReads = { reads: 1, oldestMs: 5, segments: [{ index: 3, state: 'queued' as const }] };
  const hedged = { hedged: 2, dropped: 1, droppedBytes: 4_096 };
  t.same(l.stats({ outOfOrder: 4, blockedReads, heldReads, hedges: hedged }), {
    policy: 'early-start',
    segments: 6,
    segmentsReceived: 3,
    bytesReceived: 3_500,
    segmentsFromStore: 1,
    bytesFromStore: 700,
    segmentsFromObjects: 1,
    bytesFromObjects: 300,
    lookaside: { tables: 2, tableBytes: 384, thinSegments: 1, chunks: 3, bytesSaved: 12_288 },
    hedges: hedged,
    overlayBytes: 123_456,
    demandFetches: 2,
    outOfOrder: 4,
    retries: 1,
    blockedReads,
    heldReads,
    resumedMs: 30,
    firstResponseMs: 100,
    completeMs: 500,
    bytesReceivedBeforeFirstResponse: 1_000,
    segmentsReceivedBeforeFirstResponse: 1,
  });
});

t.test('a segment from the client is refused unless asked for, and when it is a second copy', async (t) => {
  t.equal(unexpectedSegment(3, true, false), null);
  t.match(unexpectedSegment(3, false, false), { code: 'VMS_PROTOCOL', details: { segment: 3 } });
  t.match(unexpectedSegment(3, true, true), { code: 'VMS_PROTOCOL', details: { reason: 'duplicate-segment' } });
});

t.test('held reads read as the end of a message', async (t) => {
  t.equal(describeHeld({ reads: 0, oldestMs: 0, segments: [] }), '');
  t.equal(
    describeHeld({ reads: 2, oldestMs: 40, segments: [{ index: 5, state: 'requested' }] }),
    '; 2 guest read(s) were still waiting for the overlay, the oldest for 40 ms, on segment(s) 5 (requested)',
  );
});
