/**
 * The store index's rules, exactly: reference counts, eviction order
 * (unreferenced first, then least recently used), pins and leases
 * protecting an overlay's segments, pending rows invisible to readers.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { StoreIndex } from '../../lib/store/index-db.js';

const sha = (n: number) => Buffer.alloc(32, n);
const names = (rows: { sha: Buffer }[]) => rows.map((r) => r.sha[0]);

function stored(ix: StoreIndex, n: number, bytes = 100): void {
  if (!ix.claim(sha(n), bytes, process.pid)) throw new Error(`segment ${n} is claimed already`);
  ix.commit(sha(n));
}

function overlay(ix: StoreIndex, id: number, segs: number[], manifest?: Buffer): void {
  ix.addOverlay({
    id: sha(200 + id),
    keyId: 'k',
    base: 'b',
    createdAt: 'now',
    segments: segs.map(sha),
    bytes: segs.length * 100,
    ...(manifest ? { manifest } : {}),
  });
}

t.test('a pending row is invisible until committed, and a second claim is refused', async (t) => {
  const ix = new StoreIndex(':memory:');
  t.ok(ix.claim(sha(1), 10, 4242));
  t.equal(ix.ready(sha(1)), null, 'not ready while pending');
  t.notOk(ix.claim(sha(1), 10, process.pid), 'claimed already');
  t.same(
    ix.pending().map((p) => [p.sha[0], p.writer]),
    [[1, 4242]],
  );
  t.same(ix.totals(), { bytes: 10, segments: 1 }, 'pending bytes count against the cap');
  ix.commit(sha(1));
  t.equal(ix.ready(sha(1)), 10);
  t.same(ix.pending(), []);
  t.equal(ix.counters().added, 1);
  ix.close();
});

t.test('reference counts: overlays naming a segment, each once', async (t) => {
  const ix = new StoreIndex(':memory:');
  overlay(ix, 1, [1, 2, 2]);
  overlay(ix, 2, [2, 3]);
  overlay(ix, 2, [2, 3]); // idempotent
  t.equal(ix.refs(sha(1)), 1);
  t.equal(ix.refs(sha(2)), 2, 'named by two overlays (twice by one)');
  t.equal(ix.refs(sha(3)), 1);
  t.equal(ix.refs(sha(4)), 0);
  ix.close();
});

t.test('eviction order: unreferenced first, then least recently used; hits refresh', async (t) => {
  const ix = new StoreIndex(':memory:');
  for (const n of [1, 2, 3, 4, 5]) stored(ix, n);
  overlay(ix, 1, [1, 2, 3, 4]); // 5 has no overlay
  t.same(names(ix.evictionOrder()), [5, 1, 2, 3, 4]);
  ix.touch(sha(1));
  ix.touch(sha(3));
  t.same(names(ix.evictionOrder()), [5, 2, 4, 1, 3], 'touched ones move to the back, in touch order');
  const gone = ix.evict(150);
  t.same(names(gone!), [5, 2], 'just enough to free 150 bytes');
  t.equal(ix.ready(sha(5)), null);
  t.equal(ix.ready(sha(2)), null);
  t.same(ix.totals(), { bytes: 300, segments: 3 });
  t.equal(ix.counters().evictions, 2);
  t.equal(ix.counters().evictedBytes, 200);
  t.same(ix.evict(0), [], 'nothing needed, nothing evicted');
  ix.close();
});

t.test('pins and leases protect every segment of their overlay; an impossible eviction removes nothing', async (t) => {
  const ix = new StoreIndex(':memory:');
  for (const n of [1, 2, 3, 4]) stored(ix, n);
  overlay(ix, 1, [1, 2]);
  overlay(ix, 2, [2, 3]);
  overlay(ix, 3, [4]);
  t.ok(ix.setPinned(sha(201), true));
  t.same(names(ix.evictionOrder()), [3, 4], '1 and 2 are pinned (2 also by its other overlay)');
  ix.lease(sha(203), 'session-a');
  t.same(names(ix.evictionOrder()), [3], 'overlay 3 is in use');
  t.equal(ix.evict(200), null, 'cannot free 200 bytes');
  t.same(ix.totals(), { bytes: 400, segments: 4 }, 'and removed nothing');
  ix.release(sha(203), 'session-a');
  ix.setPinned(sha(201), false);
  t.same(names(ix.evictionOrder()), [1, 2, 3, 4]);
  t.notOk(ix.setPinned(sha(250), true), 'no such overlay');
  ix.close();
});

t.test('leases of dead processes are dropped', async (t) => {
  const ix = new StoreIndex(':memory:');
  stored(ix, 1);
  overlay(ix, 1, [1]);
  ix.lease(sha(201), 'x', 999_999);
  ix.lease(sha(201), 'y', process.pid);
  t.same(ix.evictionOrder(), []);
  t.equal(
    ix.dropLeases((pid) => pid !== 999_999),
    1,
  );
  t.same(ix.evictionOrder(), [], "this process's lease still holds");
  ix.release(sha(201), 'y');
  t.same(names(ix.evictionOrder()), [1]);
  ix.close();
});

t.test(
  "an overlay's manifest is kept as received, added to an overlay known without one, and goes with it",
  async (t) => {
    const ix = new StoreIndex(':memory:');
    overlay(ix, 1, [1]);
    t.equal(ix.manifest(sha(201)), null, 'none given, none kept');
    overlay(ix, 1, [1], Buffer.from('m1'));
    t.same(ix.manifest(sha(201)), Buffer.from('m1'), 'kept when the overlay comes again with it');
    overlay(ix, 1, [1], Buffer.from('m2'));
    t.same(ix.manifest(sha(201)), Buffer.from('m1'), 'the first one stays (same id, same body)');
    t.equal(ix.manifest(sha(202)), null, 'an unknown id');
    t.equal(ix.dropEmptyOverlays(), 1, 'the overlay goes: none of its segments is stored');
    t.equal(ix.manifest(sha(201)), null, 'and its manifest with it');
    ix.close();
  },
);

t.test('overlay listing and removal of empty overlay records', async (t) => {
  const ix = new StoreIndex(':memory:');
  stored(ix, 1, 70);
  overlay(ix, 1, [1, 2]);
  overlay(ix, 2, [3]);
  overlay(ix, 3, [4]);
  ix.setPinned(sha(203), true);
  const rows = ix.overlays();
  const one = rows.find((r) => r.id === sha(201).toString('hex'))!;
  t.match(one, { segments: 2, present: 1, presentBytes: 70, pinned: false, leases: 0, base: 'b', keyId: 'k' });
  t.equal(ix.dropEmptyOverlays(), 1, 'overlay 2: nothing stored, not pinned');
  t.same(
    ix
      .overlays()
      .map((r) => r.id.slice(0, 2))
      .sort(),
    ['c9', 'cb'],
  );
  t.same(ix.overlaysByPrefix(sha(201).toString('hex').slice(0, 10)), [sha(201)]);
  t.same(ix.overlaysByPrefix('c9C9C9C9'), [sha(201)], 'any case');
  ix.close();
});

t.test('counters persist in the index', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmsynth-index-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ix = new StoreIndex(`${dir}/i.sqlite`);
  ix.count('hits', 3);
  ix.count('hitBytes', 3000);
  ix.count('misses');
  ix.close();
  const again = new StoreIndex(`${dir}/i.sqlite`);
  t.match(again.counters(), { hits: 3, hitBytes: 3000, misses: 1, evictions: 0 });
  again.close();
});
