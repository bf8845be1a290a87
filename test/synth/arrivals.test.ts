/**
 * The blocking rules of early start as pure state, without FUSE or a VM: a
 * read gate lets reads of present chunks go at once, holds a read of missing
 * chunks until the last of them arrives, asks for each segment it needs once
 * per held read, re-asks when a waited-for chunk moves to another segment,
 * fails held and later reads on teardown, and reports what it holds and how
 * long reads waited.
 */
import t from 'tap';
import { ChunkMap, ChunkSource } from '../../lib/fs/chunk-map.js';
import { VmsynthError } from '../../lib/core/errors.js';
import { ChunkArrivals } from '../../lib/synth/arrivals.js';

const C = 4096;
const tick = () => new Promise<void>((r) => setImmediate(r));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Two images (memory: 32 chunks, disk: 16), every chunk BASE; records demands and unblock times. */
function rig() {
  const maps = [new ChunkMap(32 * C), new ChunkMap(16 * C)];
  const demands: number[] = [];
  const unblocked: number[] = [];
  const a = new ChunkArrivals(
    maps,
    (s) => demands.push(s),
    (ms) => unblocked.push(ms),
  );
  return { a, maps, demands, unblocked, mem: a.gate(0), disk: a.gate(1) };
}

/** Watches a gate's answer: `settled` turns true when it resolves, `error` holds a rejection. */
function watch(p: Promise<void> | undefined) {
  const w = { held: p !== undefined, settled: false, error: undefined as unknown };
  p?.then(
    () => void (w.settled = true),
    (e: unknown) => void (w.error = e),
  );
  return w;
}

t.test('expect() marks chunks MISSING, tagged with their segment, counted once', async (t) => {
  const { a, maps } = rig();
  a.expect(0, 3, 7);
  a.expect(1, 0, 2);
  a.expect(1, 0, 4);
  t.equal(maps[0]!.get(3), ChunkSource.MISSING);
  t.equal(maps[1]!.get(0), ChunkSource.MISSING);
  t.equal(maps[0]!.get(4), ChunkSource.BASE, 'its neighbour is untouched');
  t.ok(a.isMissing(0, 3));
  t.notOk(a.isMissing(0, 4));
  t.equal(a.segmentFor(0, 3), 7);
  t.equal(a.segmentFor(1, 0), 4, 'expecting a chunk again retags it');
  t.equal(a.segmentFor(0, 4), -1, 'a present chunk waits for no segment');
  t.equal(a.missingChunks, 2, 'a chunk expected twice is missing once');
});

t.test('a read over present chunks goes at once', async (t) => {
  const { a, mem, disk, demands } = rig();
  t.equal(mem(0, 32 * C), undefined, 'nothing missing anywhere');
  a.expect(0, 5, 1);
  t.equal(mem(0, 5 * C), undefined, 'chunks 0..4, just before the missing one');
  t.equal(mem(6 * C, 3 * C), undefined, 'chunks 6..8, just after it');
  t.equal(mem(5 * C - 1, 1), undefined, 'the last byte of chunk 4');
  t.equal(disk(0, 16 * C), undefined, 'the other image has nothing missing');
  a.expect(1, 9, 3);
  t.equal(mem(6 * C, 100), undefined, 'a missing disk chunk holds no memory read');
  t.same(demands, [], 'and nothing was asked for');
});

t.test('a read over missing chunks resolves when the last of them arrives, not before', async (t) => {
  const { a, mem, demands } = rig();
  a.expect(0, 2, 0);
  a.expect(0, 3, 1);
  a.expect(0, 9, 1);
  const r = watch(mem(2 * C + 100, 2 * C));
  t.ok(r.held, 'chunks 2..4 include two missing ones: the read is held');
  a.arrived(0, 9, ChunkSource.OVERLAY);
  await tick();
  t.notOk(r.settled, 'a chunk outside the read does not release it');
  a.arrived(0, 2, ChunkSource.OVERLAY);
  await tick();
  t.notOk(r.settled, 'one of its two chunks is not enough');
  a.arrived(0, 3, ChunkSource.ZERO);
  await tick();
  t.ok(r.settled, 'the last one releases it');
  t.equal(r.error, undefined);
  t.same(demands, [0, 1]);
  t.equal(a.missingChunks, 0);
  t.equal(mem(0, 32 * C), undefined, 'later reads go at once');
});

t.test('a read of one byte straddling two chunks waits for both', async (t) => {
  const { a, mem } = rig();
  a.expect(0, 0, 0);
  a.expect(0, 1, 0);
  const r = watch(mem(C - 1, 2));
  t.ok(r.held);
  a.arrived(0, 0, ChunkSource.OVERLAY);
  await tick();
  t.notOk(r.settled);
  a.arrived(0, 1, ChunkSource.OVERLAY);
  await tick();
  t.ok(r.settled);
});

t.test('demand() is called once per needed segment per held read, not per chunk', async (t) => {
  const { a, mem, disk, demands } = rig();
  for (const c of [0, 1, 2]) a.expect(0, c, 5);
  a.expect(0, 3, 6);
  a.expect(1, 0, 5);
  const r1 = watch(mem(0, 4 * C));
  t.same(demands, [5, 6], 'four chunks in two segments: two demands, in chunk order');
  const r2 = watch(mem(C, C));
  t.same(demands, [5, 6, 5], 'a second held read asks again for its own segment');
  const r3 = watch(disk(0, C));
  t.same(demands, [5, 6, 5, 5], 'a read on the other image asks for its own');
  t.equal(mem(8 * C, C), undefined);
  t.same(demands, [5, 6, 5, 5], 'a read that goes at once asks for nothing');
  for (const c of [0, 1, 2, 3]) a.arrived(0, c, ChunkSource.OVERLAY);
  a.arrived(1, 0, ChunkSource.OVERLAY);
  await tick();
  t.ok(r1.settled && r2.settled && r3.settled);
  t.same(demands, [5, 6, 5, 5], 'arrivals ask for nothing');
});

t.test('redirect() re-asks for the new segment only when reads wait on that chunk', async (t) => {
  const { a, mem, demands } = rig();
  a.expect(0, 4, 2);
  a.expect(0, 8, 2);
  a.redirect(0, 4, 7);
  t.equal(a.segmentFor(0, 4), 7);
  t.same(demands, [], 'no read waits on chunk 4: nothing is asked');
  const r = watch(mem(8 * C, C));
  t.same(demands, [2]);
  a.redirect(0, 8, 9);
  t.same(demands, [2, 9], 'a read waits on chunk 8: its new segment is asked for');
  t.equal(a.segmentFor(0, 8), 9);
  a.redirect(0, 8, -1);
  t.same(demands, [2, 9], 'no segment, no demand');
  a.redirect(0, 20, 3);
  t.equal(a.segmentFor(0, 20), -1, 'redirecting a present chunk does nothing');
  t.notOk(a.isMissing(0, 20));
  t.same(a.held().segments, [-1], 'the held read now waits on a chunk tagged with no segment');
  a.arrived(0, 8, ChunkSource.OVERLAY);
  await tick();
  t.ok(r.settled);
});

t.test('arrived() of a chunk already present leaves the missing count alone', async (t) => {
  const { a, mem, disk } = rig();
  a.expect(0, 0, 0);
  a.expect(0, 1, 0);
  a.arrived(0, 0, ChunkSource.OVERLAY);
  a.arrived(0, 0, ChunkSource.OVERLAY);
  a.arrived(0, 5, ChunkSource.ZERO);
  a.arrived(1, 3, ChunkSource.OVERLAY);
  t.equal(a.missingChunks, 1);
  const r = watch(mem(C, C));
  t.ok(r.held, 'chunk 1 still holds its read (a count gone to zero would let it through)');
  t.equal(disk(0, C), undefined);
  a.arrived(0, 1, ChunkSource.OVERLAY);
  await tick();
  t.ok(r.settled);
  t.equal(a.missingChunks, 0);
});

t.test('missingChunks counts both images down to zero', async (t) => {
  const { a } = rig();
  a.expect(0, 1, 0);
  a.expect(0, 31, 1);
  a.expect(1, 15, 1);
  t.equal(a.missingChunks, 3);
  a.arrived(1, 15, ChunkSource.OVERLAY);
  t.equal(a.missingChunks, 2);
  a.arrived(0, 1, ChunkSource.ZERO);
  a.arrived(0, 31, ChunkSource.OVERLAY);
  t.equal(a.missingChunks, 0);
});

t.test('failAll() rejects every held read and every later read with the error', async (t) => {
  const { a, mem, disk } = rig();
  a.expect(0, 0, 0);
  a.expect(1, 0, 1);
  const r1 = watch(mem(0, C));
  const r2 = watch(disk(0, C));
  const err = new VmsynthError('VMS_PEER_GONE', 'gone');
  a.failAll(err);
  await tick();
  t.equal(r1.error, err);
  t.equal(r2.error, err);
  t.notOk(r1.settled);
  t.same(a.held(), { reads: 0, oldestMs: 0, segments: [] }, 'nothing is held any more');
  t.equal(a.waiting, 0);
  t.equal(
    await mem(4 * C, C)!.catch((e: unknown) => e),
    err,
    'a later read of a present chunk fails too, with the same error',
  );
  a.failAll(new VmsynthError('VMS_INTERNAL', 'later'));
  t.equal(await disk(0, C)!.catch((e: unknown) => e), err, 'a second failAll keeps the first error');
  a.arrived(0, 0, ChunkSource.OVERLAY);
  await tick();
  t.notOk(r1.settled, 'an arrival after the failure does not resolve a rejected read');
  t.equal(a.stats().count, 0, 'failed reads are not counted as unblocked');
});

t.test('failAll() without an error fails reads with VMS_INTERRUPTED', async (t) => {
  const { a, mem } = rig();
  a.expect(0, 0, 0);
  const r = mem(0, C)!;
  a.failAll();
  await t.rejects(r, { code: 'VMS_INTERRUPTED' });
  await t.rejects(mem(C, C)!, { code: 'VMS_INTERRUPTED' });
});

t.test('held() counts each read once, its oldest wait, and the segments they wait for', async (t) => {
  const { a, mem, disk } = rig();
  t.same(a.held(), { reads: 0, oldestMs: 0, segments: [] });
  a.expect(0, 0, 12);
  a.expect(0, 1, 3);
  a.expect(1, 2, 8);
  const r1 = watch(mem(0, 2 * C));
  await sleep(60);
  const r2 = watch(disk(2 * C, C));
  const r3 = watch(mem(C, C));
  const h = a.held();
  t.equal(h.reads, 3, 'a read waiting for two chunks is one read');
  t.equal(a.waiting, 3);
  t.ok(h.oldestMs >= 55, `the oldest read has waited at least 55 ms (${h.oldestMs})`);
  t.same(h.segments, [3, 8, 12], 'ascending, each once');
  a.arrived(0, 1, ChunkSource.OVERLAY);
  await tick();
  t.ok(r3.settled);
  t.same(a.held().reads, 2);
  t.same(a.held().segments, [8, 12]);
  a.arrived(0, 0, ChunkSource.OVERLAY);
  await tick();
  t.ok(r1.settled);
  const after = a.held();
  t.equal(after.reads, 1);
  t.ok(after.oldestMs < h.oldestMs, `the oldest is now the younger read (${after.oldestMs} < ${h.oldestMs})`);
  a.arrived(1, 2, ChunkSource.OVERLAY);
  await tick();
  t.ok(r2.settled);
  t.same(a.held(), { reads: 0, oldestMs: 0, segments: [] });
});

t.test('held() lists at most 20 segments, the lowest', async (t) => {
  const { a, mem } = rig();
  for (let c = 0; c < 25; c++) a.expect(0, c, 100 - c);
  const r = watch(mem(0, 25 * C));
  t.same(
    a.held().segments,
    Array.from({ length: 20 }, (_, i) => 76 + i),
  );
  a.failAll();
  await tick();
  t.ok(r.error);
});

t.test('stats() reports how long held reads waited: count, total, p50, p90, max', async (t) => {
  const { a, mem } = rig();
  t.same(a.stats(), { count: 0, totalMs: 0, maxMs: 0, p50Ms: 0, p90Ms: 0 });
  for (const c of [0, 1, 2]) a.expect(0, c, c);
  const reads = [0, 1, 2].map((c) => watch(mem(c * C, C)));
  t.equal(mem(10 * C, C), undefined, 'a read that never waited');
  await sleep(30);
  a.arrived(0, 0, ChunkSource.OVERLAY);
  await sleep(40);
  a.arrived(0, 1, ChunkSource.OVERLAY);
  await sleep(40);
  a.arrived(0, 2, ChunkSource.OVERLAY);
  await tick();
  t.ok(reads.every((r) => r.settled));
  const s = a.stats();
  t.equal(s.count, 3, 'only the reads that waited');
  t.ok(s.p50Ms >= 65, `the middle read waited at least 65 ms (${s.p50Ms})`);
  t.ok(s.maxMs >= 105, `the last waited at least 105 ms (${s.maxMs})`);
  t.ok(s.p50Ms < s.maxMs, 'the middle read waited less than the last');
  t.equal(s.p90Ms, s.maxMs, 'of three waits, p90 is the longest');
  t.ok(s.totalMs >= 25 + 65 + 105, `the total is the sum (${s.totalMs})`);
});

t.test('stats() percentiles and unblocked() agree on the same waits', async (t) => {
  const { a, mem, unblocked } = rig();
  for (let c = 0; c < 10; c++) a.expect(0, c, 0);
  const reads = Array.from({ length: 10 }, (_, c) => watch(mem(c * C, C)));
  for (let c = 9; c >= 0; c--) {
    await sleep(5);
    a.arrived(0, c, ChunkSource.OVERLAY);
  }
  await tick();
  t.ok(reads.every((r) => r.settled));
  t.equal(unblocked.length, 10, 'unblocked() is called once per held read');
  const sorted = [...unblocked].sort((x, y) => x - y);
  const r1 = (x: number) => Math.round(x * 10) / 10;
  const s = a.stats();
  t.same(s, {
    count: 10,
    totalMs: r1(sorted.reduce((x, y) => x + y, 0)),
    maxMs: r1(sorted[9]!),
    p50Ms: r1(sorted[5]!),
    p90Ms: r1(sorted[9]!),
  });
  t.ok(sorted[0]! >= 4, `the first released waited at least 4 ms (${sorted[0]})`);
  t.ok(sorted[9]! >= 45, `the last released waited at least 45 ms (${sorted[9]})`);
});

t.test(
  'state() and load() hand the maps to another process: a loaded copy holds reads exactly as the original',
  async (t) => {
    const { a } = rig();
    a.expect(0, 3, 7);
    a.expect(1, 2, 9);
    a.arrived(1, 2, ChunkSource.OVERLAY);
    a.expect(0, 4, 7);
    a.redirect(0, 4, 8);
    const seen: string[] = [];
    a.observer = {
      arrived: (image, index, source) => seen.push(`arrived ${image}:${index}:${source}`),
      redirected: (image, index, segment) => seen.push(`redirected ${image}:${index}->${segment}`),
    };
    a.redirect(0, 3, 5);
    a.arrived(0, 3, ChunkSource.ZERO);
    t.same(seen, ['redirected 0:3->5', 'arrived 0:3:1'], 'the observer hears each change after it is made');

    const copy = rig();
    copy.a.load(a.state());
    t.equal(copy.a.missingChunks, 1, 'one chunk still missing');
    t.ok(copy.a.isMissing(0, 4) && copy.a.segmentFor(0, 4) === 8, 'the redirected chunk waits for its new segment');
    t.equal(copy.maps[0]!.get(3), ChunkSource.ZERO);
    t.equal(copy.maps[1]!.get(2), ChunkSource.OVERLAY);
    const w = watch(copy.mem(4 * C, 10));
    t.ok(w.held, 'a read of the missing chunk is held');
    t.same(copy.demands, [8], 'and asks for its segment');
    t.same(copy.a.waitingSegments(), [8]);
    copy.a.arrived(0, 4, ChunkSource.OVERLAY);
    await tick();
    t.ok(w.settled, 'and goes on when it arrives');
    t.throws(() => copy.a.load({ sources: [new Uint8Array(1)], segmentOf: [new Int32Array(1)] }), {
      code: 'VMS_INTERNAL',
    });
  },
);
