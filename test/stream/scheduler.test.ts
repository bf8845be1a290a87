/**
 * The segment scheduler's exact order: background in manifest order under an
 * in-flight bound, a demand going next among thousands of queued background
 * segments, the background continuing after the fault and wrapping around to
 * what it skipped, retries first, nothing requested twice (fast-check).
 */
import t from 'tap';
import fc from 'fast-check';
import { SegmentScheduler } from '../../lib/stream/scheduler.js';

t.test('background goes in manifest order, bounded by in-flight bytes', async (t) => {
  const s = new SegmentScheduler({ sizes: [100, 100, 100, 100, 100], maxInFlightBytes: 250 });
  t.same(
    s.drain(),
    [
      { index: 0, lane: 'background' },
      { index: 1, lane: 'background' },
    ],
    'two fit under 250 bytes',
  );
  t.equal(s.backgroundBytesInFlight, 200);
  t.ok(s.received(0));
  t.same(s.drain(), [{ index: 2, lane: 'background' }]);
  t.notOk(s.received(0), 'a duplicate is refused');
  t.same(
    [0, 1, 2, 3].map((i) => s.stateOf(i)),
    ['received', 'requested', 'requested', 'queued'],
    'each segment says where it is',
  );
  t.throws(() => s.stateOf(5), { code: 'VMS_PROTOCOL' });
  const big = new SegmentScheduler({ sizes: [1000, 10], maxInFlightBytes: 100 });
  t.same(big.drain(), [{ index: 0, lane: 'background' }], 'one segment larger than the bound still goes, alone');
});

t.test(
  'a demand for segment k goes next among 4,096 queued background segments, then the stream continues after k and wraps',
  async (t) => {
    const n = 4096;
    const s = new SegmentScheduler({ sizes: new Array<number>(n).fill(1000), maxInFlightBytes: 4000 });
    t.same(
      s.drain().map((r) => r.index),
      [0, 1, 2, 3],
    );
    t.ok(s.demand(3000));
    t.same(s.next(), { index: 3000, lane: 'demand' }, 'the demand goes next, past the in-flight bound');
    t.equal(s.next(), null, 'the background bound still holds');
    for (const i of [0, 1, 2, 3]) s.received(i);
    t.same(
      s.drain().map((r) => r.index),
      [3001, 3002, 3003, 3004],
      'background continues right after the fault',
    );
    t.notOk(s.demand(3000), 'a second fault on the same segment asks nothing more');
    t.notOk(s.demand(3002), 'a fault on a segment already on its way asks nothing more');
    t.equal(s.outOfOrder, 1);
    // Receive everything as it is requested: the order covers all segments once, wrapping to 4..2999.
    const order: number[] = [3000, 3001, 3002, 3003, 3004];
    for (const i of order) s.received(i);
    for (let r = s.next(); r; r = s.next()) {
      order.push(r.index);
      s.received(r.index);
    }
    t.equal(order.length, n - 4);
    t.same(order.slice(5, 8), [3005, 3006, 3007]);
    t.equal(order[order.length - 2996 - 1], 4095, 'the end of the overlay comes before the skipped range');
    t.same(order.slice(-2996, -2993), [4, 5, 6], 'then the skipped range, in order');
    t.ok(s.done);
  },
);

t.test('a segment that failed its check is asked for again, first', async (t) => {
  const s = new SegmentScheduler({ sizes: [10, 10, 10], maxInFlightBytes: 20 });
  s.drain();
  s.retry(1);
  t.equal(s.backgroundBytesInFlight, 10, 'its bytes are no longer in flight');
  t.same(s.next(), { index: 1, lane: 'demand' });
  t.throws(() => s.demand(3), { code: 'VMS_PROTOCOL' }, 'a segment outside the overlay');
});

t.test('any interleaving of demands and arrivals requests every segment exactly once (fast-check)', async (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 300 }),
      fc.array(fc.oneof(fc.record({ demand: fc.nat() }), fc.record({ arrive: fc.nat() })), { maxLength: 400 }),
      fc.integer({ min: 1, max: 20000 }),
      (sizes, events, bound) => {
        const s = new SegmentScheduler({ sizes, maxInFlightBytes: bound });
        const requested = new Set<number>();
        const inFlight: number[] = [];
        const take = () => {
          for (const r of s.drain()) {
            if (requested.has(r.index)) throw new Error(`segment ${r.index} requested twice`);
            requested.add(r.index);
            inFlight.push(r.index);
          }
        };
        take();
        for (const e of events) {
          if ('demand' in e) s.demand(e.demand % sizes.length);
          else if (inFlight.length) s.received(inFlight.splice(e.arrive % inFlight.length, 1)[0]!);
          take();
        }
        while (inFlight.length) {
          s.received(inFlight.shift()!);
          take();
        }
        return s.done && requested.size === sizes.length && s.backgroundBytesInFlight === 0;
      },
    ),
    { numRuns: 300 },
  );
  t.pass('300 random schedules');
});

t.test('demand-only: nothing goes out but what guest reads need', async (t) => {
  const s = new SegmentScheduler({ sizes: new Array(16).fill(1000), background: false });
  t.same(s.drain(), [], 'no background stream');
  t.ok(s.demand(9));
  t.ok(s.isDemanded(9));
  t.same(s.drain(), [{ index: 9, lane: 'demand' }]);
  t.ok(s.isRequested(9));
  t.ok(s.received(9));
  t.notOk(s.isRequested(9));
  t.same(s.drain(), [], 'still nothing in the background');
  t.notOk(s.done);
});

t.test(
  'adopted() counts a segment applied before the scheduler existed: never asked for, and done counts it',
  async (t) => {
    const s = new SegmentScheduler({ sizes: [10, 10, 10], maxInFlightBytes: 100 });
    s.adopted(0);
    s.adopted(2);
    s.adopted(2);
    t.same(s.drain(), [{ index: 1, lane: 'background' }], 'only the one not applied is asked for');
    t.equal(s.stateOf(0), 'received');
    t.notOk(s.demand(2), 'a demand for an adopted segment asks for nothing');
    t.ok(s.received(1));
    t.ok(s.done);
  },
);
