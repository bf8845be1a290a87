/**
 * Hedged demand fetches, exactly: the delay from the object store's typical
 * fetch time; no hedge when the object store answers in time; when it does
 * not, the client is asked once, the first copy is used and the other
 * dropped (and counted), in either order; a failed object copy or fetch
 * waits for the client's copy instead of asking again; a resume asks again
 * for what still races. Then the same through SegmentSources, over a fake
 * object store whose fetch is held.
 */
import t from 'tap';
import type { ObjectSource } from '../../lib/store/object-source.js';
import {
  HEDGE_FACTOR,
  HEDGE_FIRST_MS,
  HEDGE_MAX_MS,
  HEDGE_MIN_MS,
  Hedges,
  type CopyVerdict,
} from '../../lib/synth/hedges.js';
import { SegmentSources } from '../../lib/synth/segment-sources.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Hedges whose delay is the minimum (the object store's typical fetch took 1 ms). */
function hedges(typical: number | null = 1) {
  const fired: string[] = [];
  const h = new Hedges(
    (i, after) => fired.push(`${i} after ${after}`),
    () => typical,
  );
  return { h, fired };
}

t.test('the delay: a multiple of the typical fetch, within bounds', async (t) => {
  t.equal(hedges(null).h.delayMs(), HEDGE_FIRST_MS, 'no fetch finished yet');
  t.equal(hedges(1).h.delayMs(), HEDGE_MIN_MS);
  t.equal(hedges(50).h.delayMs(), 50 * HEDGE_FACTOR);
  t.equal(hedges(60_000).h.delayMs(), HEDGE_MAX_MS);
});

t.test('the object store answers in time: no hedge', async (t) => {
  const { h, fired } = hedges();
  h.arm(3);
  t.equal(h.fromObject(3, true), 'use');
  await sleep(HEDGE_MIN_MS + 50);
  t.same(fired, []);
  t.same(h.stats(), { hedged: 0, dropped: 0, droppedBytes: 0 });
  t.equal(h.fromClient(3, 10), 'use', 'a copy the client was asked for in the usual way');
});

t.test('too slow: the client is asked once; its copy first, the object store’s dropped', async (t) => {
  const { h, fired } = hedges();
  h.arm(3);
  h.arm(3);
  await sleep(HEDGE_MIN_MS + 50);
  h.arm(3);
  t.same(fired, [`3 after ${HEDGE_MIN_MS}`], 'once');
  t.ok(h.awaitsClient(3));
  t.equal(h.fromClient(3, 1000), 'hedge');
  t.notOk(h.awaitsClient(3));
  t.equal(h.fromObject(3, true), 'drop');
  t.equal(h.fromObject(3, true), 'use', 'settled: a later fetch is used');
  t.same(h.stats(), { hedged: 1, dropped: 0, droppedBytes: 0 });
});

t.test('too slow, then the object store’s copy first: the client’s is dropped and counted', async (t) => {
  const { h } = hedges();
  h.arm(4);
  await sleep(HEDGE_MIN_MS + 50);
  const verdicts: (CopyVerdict | 'hedge')[] = [h.fromObject(4, true), h.fromClient(4, 1234), h.fromClient(4, 1)];
  t.same(verdicts, ['use', 'drop', 'use']);
  t.same(h.stats(), { hedged: 1, dropped: 1, droppedBytes: 1234 });
});

t.test('after a hedge, a failed fetch or a failed object copy waits for the client', async (t) => {
  const { h } = hedges();
  h.arm(5);
  h.arm(6);
  await sleep(HEDGE_MIN_MS + 50);
  t.equal(h.fromObject(5, false), 'drop', 'fetch failed: the client is asked already');
  t.equal(h.fromClient(5, 9), 'use', 'its fetch ended: asked of the client in the usual way now');
  t.equal(h.fromObject(6, true), 'use');
  t.ok(h.objectRejected(6), 'its copy failed its check: the client’s is coming');
  t.equal(h.fromClient(6, 9), 'use');
  t.notOk(h.objectRejected(7), 'not hedged: the caller asks the client');
});

t.test('a resume: what still races is asked again; no late copy is expected of the rest', async (t) => {
  const { h } = hedges();
  h.arm(1);
  h.arm(2);
  await sleep(HEDGE_MIN_MS + 50);
  t.equal(h.fromObject(2, true), 'use');
  t.same(h.resumed(), [1]);
  t.equal(h.fromClient(2, 5), 'use', 'segment 2 is no longer awaited from the client');
  t.notOk(h.objectRejected(2));
});

t.test('close stops the clocks', async (t) => {
  const { h, fired } = hedges();
  h.arm(1);
  h.close();
  await sleep(HEDGE_MIN_MS + 50);
  t.same(fired, []);
});

t.test(
  'through SegmentSources: a held object fetch is hedged; the client copy is let in, the late object copy dropped',
  async (t) => {
    const held = new Map<number, (b: Buffer | null) => void>();
    const log: string[] = [];
    const objects = {
      usable: true,
      typicalMs: 1,
      fetch: (i: number) => new Promise<Buffer | null>((r) => held.set(i, r)),
      promote: (i: number) => log.push(`promote ${i}`),
      fail: () => undefined,
      close: () => undefined,
    };
    const sources = new SegmentSources(undefined, objects as unknown as ObjectSource, {
      got: (i, d, from) => log.push(`got ${from} ${i} [${[...d].join()}]`),
      lost: (i) => log.push(`lost ${i}`),
      hedge: (i, after) => log.push(`hedge ${i} after ${after}`),
    });
    t.teardown(() => sources.close());
    t.ok(sources.take(1, true), 'a demand fetch');
    t.ok(sources.take(2, false), 'a background fetch');
    t.ok(sources.isFetching(1) && sources.isFetching(2));
    await sleep(HEDGE_MIN_MS + 50);
    t.same(log, [`hedge 1 after ${HEDGE_MIN_MS}`], 'only the demand fetch is hedged');
    t.notOk(sources.isFetching(1), 'the client may send segment 1 now');
    t.ok(sources.promote(2), 'a guest read now waits on segment 2');
    await sleep(HEDGE_MIN_MS + 50);
    t.same(log.slice(1), ['promote 2', `hedge 2 after ${HEDGE_MIN_MS}`]);
    t.equal(sources.clientCopy(1, 100), 'use');
    t.equal(sources.clientCopy(1, 100), 'refuse', 'a second copy while the object store still fetches');
    held.get(1)!(Buffer.from([1]));
    held.get(2)!(Buffer.from([2]));
    await sleep(0);
    t.same(log.slice(3), ['got object 2 [2]'], 'segment 1 came from the client first; segment 2 from the object store');
    t.equal(sources.clientCopy(2, 100), 'drop', 'the client’s late copy of segment 2');
    t.same(sources.hedges.stats(), { hedged: 2, dropped: 1, droppedBytes: 100 });
  },
);
