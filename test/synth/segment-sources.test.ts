/**
 * Which source a segment comes from, exactly, over fakes of the store and
 * the object store: the store first, then the object store while it works,
 * else the client; what a fetch that comes back empty does; promotion of a
 * segment a guest read waits for; what a failed check does to each source;
 * and what enters the store.
 */
import t from 'tap';
import { VmsynthError } from '../../lib/core/errors.js';
import type { SegmentInfo } from '../../lib/overlay/format.js';
import type { ObjectSource } from '../../lib/store/object-source.js';
import type { SessionSource } from '../../lib/store/session-source.js';
import { PROBE_EVERY, SegmentSources, SPARSE_AFTER } from '../../lib/synth/segment-sources.js';

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
    hedge: (i) => got.push(`hedge ${i}`),
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
  const none = new SegmentSources(undefined, undefined, {
    got: () => undefined,
    lost: () => undefined,
    hedge: () => undefined,
  });
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
  t.notOk(
    new SegmentSources(undefined, undefined, { got: () => undefined, lost: () => undefined, hedge: () => undefined })
      .keeps,
  );
});

/** Sources with lookaside over a fake store whose plan for segment 7 fills slot 1 (of 3), and for others finds nothing. */
function lookaside(opts: { lookaside?: boolean; signed?: boolean } = {}) {
  const log: string[] = [];
  const fill = Buffer.alloc(4096, 0xab);
  const store = {
    lookaside: opts.lookaside ?? true,
    has: () => false,
    miss: (s: number[]) => log.push(`store.miss ${s.join(',')}`),
    plan: async (i: number, table: Buffer) => {
      log.push(`store.plan ${i} ${table.length}`);
      if (table.length === 1) throw new VmsynthError('VMS_OVERLAY_CORRUPT', 'bad table');
      return i === 7 ? { omit: Buffer.from([0b010]), fills: new Map([[1, fill]]), table } : null;
    },
    chunkHit: (i: number, chunks: number, bytes: number) => log.push(`store.chunkHit ${i} ${chunks} ${bytes}`),
    close: async () => undefined,
  };
  // 3 payload slots and 2 digests per segment; signed tables unless told otherwise.
  const segment = {
    rawBytes: 3 * 4096 + 64,
    digests: 2,
    count: 2,
    chunks: new Uint8Array(32),
    ...(opts.signed === false ? {} : { tableSha256: new Uint8Array(32) }),
  };
  const segments = Array.from({ length: 40 }, () => segment) as unknown as SegmentInfo[];
  const sources = new SegmentSources(
    store as unknown as SessionSource,
    undefined,
    { got: () => undefined, lost: () => undefined, hedge: () => undefined },
    { segments, base: [] },
  );
  sources.open();
  return { sources, log, fill };
}

t.test('lookaside: a table is asked only when the store names chunks and the manifest signs tables', async (t) => {
  t.ok(lookaside().sources.wantsTable(3));
  t.notOk(lookaside({ lookaside: false }).sources.wantsTable(3), 'the store names no chunk');
  t.notOk(lookaside({ signed: false }).sources.wantsTable(3), 'an overlay built before lookaside');
  const none = new SegmentSources(undefined, undefined, {
    got: () => undefined,
    lost: () => undefined,
    hedge: () => undefined,
  });
  t.notOk(none.wantsTable(3), 'no store');
});

t.test('lookaside: shut until opened (an early start opens it at its first response)', async (t) => {
  const store = { lookaside: true, has: () => false };
  const seg = {
    rawBytes: 4096 + 32,
    digests: 1,
    count: 1,
    chunks: new Uint8Array(16),
    tableSha256: new Uint8Array(32),
  };
  const s = new SegmentSources(
    store as unknown as SessionSource,
    undefined,
    { got: () => undefined, lost: () => undefined, hedge: () => undefined },
    { segments: [seg] as unknown as SegmentInfo[], base: [] },
  );
  t.notOk(s.wantsTable(0), 'not yet');
  s.open();
  t.ok(s.wantsTable(0), 'open');
});

t.test(
  `lookaside backs off: after ${SPARSE_AFTER} empty tables in a row, one segment in ${PROBE_EVERY}; a find resumes`,
  async (t) => {
    const { sources } = lookaside();
    for (let i = 10; i < 10 + SPARSE_AFTER; i++) {
      t.ok(sources.wantsTable(i));
      sources.askTable(i);
      t.equal(await sources.table(i, Buffer.alloc(64)), null, `segment ${i}: nothing stored`);
    }
    const asked = Array.from({ length: 2 * PROBE_EVERY }, () => sources.wantsTable(9));
    t.equal(asked.filter(Boolean).length, 2, 'probing: one in eight');
    sources.askTable(7);
    t.ok(await sources.table(7, Buffer.alloc(64)), 'a probe that finds something');
    t.ok(sources.wantsTable(9) && sources.wantsTable(9), 'every segment again');
  },
);

t.test('lookaside: a table leads to a thin request, or a whole one; a thin segment is rebuilt', async (t) => {
  const { sources, log, fill } = lookaside();
  sources.askTable(7);
  sources.askTable(8);
  t.ok(sources.inLookaside(7));
  t.equal(await sources.table(9, Buffer.alloc(64)), 'ignored', 'a table not asked for');
  const plan = await sources.table(7, Buffer.alloc(64, 1));
  t.ok(plan && plan !== 'ignored' && plan.omit.equals(Buffer.from([0b010])), 'segment 7: thin');
  t.equal(await sources.table(8, Buffer.alloc(64)), null, 'segment 8: nothing stored, whole');
  t.notOk(sources.wantsTable(8), 'and it is not asked again');
  t.same(
    sources.outstanding([], () => false),
    {
      demand: [],
      background: [],
      tables: [],
      thin: [{ index: 7, omit: Buffer.from([0b010]), lane: 'background' }],
    },
  );
  const { compress } = await import('zstd-napi');
  const kept = Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096, 3)]);
  const raw = sources.rebuild(7, compress(kept));
  t.same(
    [raw.subarray(0, 4096).equals(kept.subarray(0, 4096)), raw.subarray(4096, 8192).equals(fill)],
    [true, true],
    'kept slots from the thin segment, the omitted one from the store',
  );
  t.ok(raw.subarray(3 * 4096).equals(Buffer.alloc(64, 1)), 'the table closes it');
  t.throws(() => sources.rebuild(8, compress(kept)), { code: 'VMS_PROTOCOL' }, 'not asked thin');
  t.throws(() => sources.rebuild(7, compress(kept.subarray(4096))), { code: 'VMS_OVERLAY_CORRUPT' }, 'a slot short');
  t.same(sources.settleThin(7, true), { chunks: 1, bytes: 4096 });
  t.same(log.slice(-1), ['store.chunkHit 7 1 4096']);
  t.notOk(sources.inLookaside(7), 'settled');
});

t.test(
  'lookaside: a guest read cancels an awaited table; a bad table or a failed thin segment means whole',
  async (t) => {
    const { sources, log } = lookaside();
    sources.askTable(7);
    t.ok(sources.cancelTable(7), 'awaited: the caller asks for it whole');
    t.notOk(sources.cancelTable(7), 'once');
    t.equal(await sources.table(7, Buffer.alloc(64)), 'ignored', 'its table comes too late');
    t.notOk(sources.wantsTable(7));
    sources.askTable(2);
    t.equal(await sources.table(2, Buffer.alloc(1)), null, 'a table that fails its check: whole');
    const { sources: s2 } = lookaside();
    s2.askTable(7);
    await s2.table(7, Buffer.alloc(64));
    t.equal(s2.settleThin(7, false), null, 'a thin segment that failed');
    t.notOk(s2.wantsTable(7), 'is asked for whole from now on');
    t.notOk(log.some((l) => l.startsWith('store.chunkHit')));
  },
);
