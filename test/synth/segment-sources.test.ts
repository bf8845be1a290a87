/**
 * Which source a segment comes from, exactly, over fakes of the store and
 * the object store: the store first, then the object store while it works,
 * else the client; what a fetch that comes back empty does; promotion of a
 * segment a guest read waits for; what a failed check does to each source;
 * and what enters the store.
 */
import t from 'tap';
import { VmsynthError } from '../../lib/core/errors.js';
import type { ObjectSource } from '../../lib/store/object-source.js';
import type { SessionSource } from '../../lib/store/session-source.js';
import { SegmentSources } from '../../lib/synth/segment-sources.js';

function fakes(stored: number[], objectsUp = true) {
  const log: string[] = [];
  const store = {
    has: (i: number) => stored.includes(i),
    take: async (i: number) => (log.push(`store.take ${i}`), i === 99 ? null : Buffer.from([i])),
    hit: (i: number, bytes: number) => log.push(`store.hit ${i} ${bytes}`),
    miss: (s: number[]) => log.push(`store.miss ${s.join(',')}`),
    admit: (i: number) => log.push(`store.admit ${i}`),
    reject: async (i: number) => void log.push(`store.reject ${i}`),
    close: async () => void log.push('store.close'),
  };
  let up = objectsUp;
  const objects = {
    get usable() {
      return up;
    },
    fetch: async (i: number, demand: boolean) => (
      log.push(`objects.fetch ${i}${demand ? ' demand' : ''}`),
      up ? Buffer.from([i]) : null
    ),
    promote: (i: number) => log.push(`objects.promote ${i}`),
    fail: (_e: VmsynthError, i: number) => {
      up = false;
      log.push(`objects.fail ${i}`);
    },
    close: () => log.push('objects.close'),
  };
  const got: string[] = [];
  const sources = new SegmentSources(store as unknown as SessionSource, objects as unknown as ObjectSource, {
    got: (i, data, from) => got.push(`${from} ${i} [${[...data].join()}]`),
    lost: (i) => got.push(`lost ${i}`),
  });
  return { sources, log, got, down: () => (up = false) };
}

const settle = () => new Promise((r) => setImmediate(r));

t.test('the store first, then the object store; neither: the client', async (t) => {
  const f = fakes([1]);
  t.ok(f.sources.take(1, false), 'stored');
  t.ok(f.sources.take(2, true), 'from the object store');
  t.ok(f.sources.isFetching(1) && f.sources.isFetching(2));
  await settle();
  t.same(f.log, ['store.take 1', 'objects.fetch 2 demand']);
  t.same(f.got, ['store 1 [1]', 'object 2 [2]']);
  t.notOk(f.sources.isFetching(1), 'done fetching');
  f.down();
  t.notOk(f.sources.take(3, false), 'the object store is down: ask the client');
  const none = new SegmentSources(undefined, undefined, { got: () => undefined, lost: () => undefined });
  t.notOk(none.take(0, true), 'no sources at all');
});

t.test('a fetch that comes back empty hands the segment to the client', async (t) => {
  const f = fakes([99]);
  t.ok(f.sources.take(99, false));
  await settle();
  t.same(f.got, ['lost 99']);
  t.notOk(f.sources.isFetching(99));
});

t.test('promote: only a segment a source is fetching, and the object store is told', async (t) => {
  const f = fakes([]);
  t.notOk(f.sources.promote(5), 'not being fetched: the client is hurried instead');
  f.sources.take(5, false);
  t.ok(f.sources.promote(5));
  t.same(f.log.at(-1), 'objects.promote 5');
});

t.test('a failed check: the store drops its entry, the object store stops', async (t) => {
  const f = fakes([1]);
  await f.sources.rejected(1, 'store', new Error('bad'));
  await f.sources.rejected(2, 'object', new VmsynthError('VMS_OVERLAY_CORRUPT', 'bad'));
  t.same(f.log, ['store.reject 1', 'objects.fail 2']);
  t.notOk(f.sources.take(3, false), 'no more from the object store');
});

t.test('what enters the store: segments from the client and the object store, not its own', async (t) => {
  const f = fakes([]);
  t.ok(f.sources.keeps);
  f.sources.applied(1, 10, 'client', Buffer.from([1]));
  f.sources.applied(2, 20, 'object', Buffer.from([2]));
  f.sources.applied(3, 30, 'store', null);
  f.sources.asked([4, 5]);
  await f.sources.close();
  t.same(f.log, ['store.admit 1', 'store.admit 2', 'store.hit 3 30', 'store.miss 4,5', 'objects.close', 'store.close']);
  t.notOk(new SegmentSources(undefined, undefined, { got: () => undefined, lost: () => undefined }).keeps);
});
