/**
 * Chunk lookaside on real overlays and a real store, without a VM: overlay A
 * enters the store (its chunks indexed as its segments are admitted); overlay
 * B, a second version of A's VM over the same base (some chunks changed, so
 * no segment of B is whole in A), finds in the store exactly the payload
 * chunks it shares with A by content digest, each filled with the bytes B's
 * own segment carries. A thin segment put back together equals the segment
 * it stands for. What is not trusted is refused: a digest table that does
 * not match the signed manifest, a stored segment whose chunk does not
 * match its digest (dropped from the store, its chunks no longer named), a
 * rebuilt segment with a wrong payload (nothing written).
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { CHUNK_SIZE } from '../../lib/fs/chunk-map.js';
import { SegmentApplier } from '../../lib/overlay/apply-segment.js';
import { ChunkFile } from '../../lib/overlay/chunk-io.js';
import { segmentDigests, type SegmentInfo } from '../../lib/overlay/format.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { checkTable, payloadChunks, rebuildRaw, thinPayloads } from '../../lib/overlay/thin.js';
import { decompressFrame } from '../../lib/overlay/zstd-frame.js';
import { SegmentStore } from '../../lib/store/segment-store.js';
import { SessionSource } from '../../lib/store/session-source.js';
import { generatedOverlays, prng } from '../helpers/images.js';

t.teardown(removeTestRoot);

let A: Overlay;
let B: Overlay;
let baseFiles: ChunkFile[];
const baseChunk = (image: number, index: number) => {
  const b = Buffer.allocUnsafe(CHUNK_SIZE);
  baseFiles[image]!.readAt(b, index * CHUNK_SIZE);
  return b;
};

/** Segment `i` of `o`: compressed and raw. */
async function segmentOf(o: Overlay, i: number): Promise<{ s: SegmentInfo; compressed: Buffer; raw: Buffer }> {
  const s = o.body.segments[i]!;
  const f = o.segmentFile();
  const compressed = f.read(s);
  f.close();
  return { s, compressed, raw: decompressFrame(compressed, s.rawBytes) };
}

/** The payload chunks' digests of every segment of `o`, as hex. */
async function payloadDigests(o: Overlay): Promise<Set<string>> {
  const out = new Set<string>();
  for (let i = 0; i < o.body.segments.length; i++) {
    const { s, raw } = await segmentOf(o, i);
    for (const c of payloadChunks(s, segmentDigests(raw, s))) out.add(c.digest.toString('hex'));
  }
  return out;
}

async function storeWith(o: Overlay, dir: string): Promise<SegmentStore> {
  const store = await SegmentStore.open({ dir, maxBytes: 1 << 30 });
  const src = new SessionSource(store, o, 'a', { admitReceived: true });
  for (let i = 0; i < o.body.segments.length; i++) src.admit(i, (await segmentOf(o, i)).compressed);
  await src.close();
  return store;
}

t.before(async () => {
  const { pair, base, build } = await generatedOverlays('gen', path.join(testRoot, 'custom'), {
    memChunks: 2048,
    diskChunks: 1024,
    each: 60,
  });
  await build(pair.custom, path.join(testRoot, 'a'));
  // B: A's VM with every 40th chunk of memory rewritten (new random bytes).
  const dirB = path.join(testRoot, 'customB');
  await fsp.mkdir(dirB, { recursive: true });
  const mem = await fsp.readFile(pair.custom.memory);
  const fill = prng(99);
  for (let c = 0; c < mem.length / CHUNK_SIZE; c += 40) fill(mem.subarray(c * CHUNK_SIZE, (c + 1) * CHUNK_SIZE));
  const customB = { ...pair.custom, memory: path.join(dirB, 'memory.raw') };
  await fsp.writeFile(customB.memory, mem);
  await build(customB, path.join(testRoot, 'b'));
  A = await Overlay.open(path.join(testRoot, 'a'), { trusted: null });
  B = await Overlay.open(path.join(testRoot, 'b'), { trusted: null });
  baseFiles = [new ChunkFile(base.file('memory')), new ChunkFile(base.file('disk'))];
});
t.teardown(() => baseFiles?.forEach((f) => f.close()));

t.test(
  'B finds exactly the payload chunks it shares with A, with B’s own bytes; thin segments rebuild exactly',
  async (t) => {
    t.ok(
      B.body.segments.every((s) => s.tableSha256?.length === 32),
      'every segment of a new overlay signs its table',
    );
    const store = await storeWith(A, path.join(testRoot, 'store1'));
    t.teardown(() => store.close());
    t.equal(store.stats().chunks, (await payloadDigests(A)).size, 'every payload chunk of A is named');
    const aHas = await payloadDigests(A);
    const bSegs = new Set(B.body.segments.map((s) => Buffer.from(s.sha256).toString('hex')));
    const whole = A.body.segments.filter((s) => bSegs.has(Buffer.from(s.sha256).toString('hex'))).length;

    const src = new SessionSource(store, B, 'b', { admitReceived: false });
    t.ok(src.lookaside, 'the store names chunks: lookaside is on');
    let shared = 0;
    let filled = 0;
    let bChunks = 0;
    for (let i = 0; i < B.body.segments.length; i++) {
      const { s, raw } = await segmentOf(B, i);
      const table = Buffer.from(segmentDigests(raw, s));
      const chunks = payloadChunks(s, table);
      bChunks += chunks.length;
      const sharedHere = chunks.filter((c) => aHas.has(c.digest.toString('hex')));
      shared += sharedHere.length;
      const plan = await src.plan(i, table, baseChunk);
      if (!plan) {
        t.equal(sharedHere.length, 0, `segment ${i}: no plan, nothing shared`);
        continue;
      }
      t.same(
        [...plan.fills.keys()].sort((x, y) => x - y),
        sharedHere.map((c) => c.slot).sort((x, y) => x - y),
        `segment ${i}: the plan fills exactly the shared slots`,
      );
      for (const [slot, p] of plan.fills)
        if (!p.equals(raw.subarray(slot * CHUNK_SIZE, (slot + 1) * CHUNK_SIZE)))
          t.fail(`segment ${i} slot ${slot}: the filled payload differs from B's`);
      filled += plan.fills.size;
      const thin = thinPayloads(s, raw, plan.omit);
      t.equal(thin.length, (chunks.length - plan.fills.size) * CHUNK_SIZE, `segment ${i}: thin keeps the rest`);
      const rebuilt = rebuildRaw(s, table, thin, plan.omit, (slot) => plan.fills.get(slot)!);
      t.ok(rebuilt.equals(raw), `segment ${i}: the thin segment rebuilds to the original`);
    }
    await src.close();
    t.ok(shared > bChunks / 2, `B shares most of its payload chunks with A (${shared} of ${bChunks})`);
    t.ok(shared < bChunks, 'but not all');
    t.equal(filled, shared, 'every shared chunk is found in the store');
    t.equal(whole, 0, 'no segment of B is whole in A: only chunk lookaside finds them');
  },
);

t.test('a table that does not match the signed manifest is refused', async (t) => {
  const { s, raw } = await segmentOf(B, 0);
  const table = Buffer.from(segmentDigests(raw, s));
  t.doesNotThrow(() => checkTable(0, s, table));
  table[5]! ^= 1;
  t.throws(() => checkTable(0, s, table), { code: 'VMS_OVERLAY_CORRUPT', details: { check: 'table' } });
  t.throws(() => checkTable(0, s, table.subarray(1)), { code: 'VMS_OVERLAY_CORRUPT', details: { check: 'table' } });
  const { tableSha256: _, ...unsigned } = s;
  t.throws(() => checkTable(0, unsigned, Buffer.from(segmentDigests(raw, s))), {
    code: 'VMS_OVERLAY_CORRUPT',
    details: { check: 'table' },
  });
});

t.test('a stored chunk that does not match its digest is never used, and its segment is dropped', async (t) => {
  const store = await storeWith(A, path.join(testRoot, 'store2'));
  t.teardown(() => store.close());
  const src = new SessionSource(store, B, 'b', { admitReceived: false });
  t.teardown(() => src.close());
  // Find a segment of B that takes chunks from the store, and the stored segment they come from.
  let i = 0;
  let raw!: Buffer;
  let s!: SegmentInfo;
  let from: Buffer | null = null;
  let slot = 0;
  for (; i < B.body.segments.length && !from; i++) {
    ({ s, raw } = await segmentOf(B, i));
    const c = payloadChunks(s, segmentDigests(raw, s)).find((c) => store.findChunk(c.digest));
    if (c) ({ segment: from, slot } = store.findChunk(c.digest)!);
  }
  t.ok(from, 'a segment of B with a chunk in the store');
  i--;
  // The stored segment, made again with one bit flipped in that chunk's payload: a well-formed
  // frame of wrong bytes (its SHA-256 no longer matches, which only a whole read would see).
  const file = store.segmentPath(from!);
  const flipped = Buffer.from(decompressFrame(await fsp.readFile(file), 1 << 26));
  flipped[slot * CHUNK_SIZE + 100]! ^= 0x10;
  const { compress } = await import('zstd-napi');
  await fsp.writeFile(file, compress(flipped));
  const table = Buffer.from(segmentDigests(raw, s));
  const plan = await src.plan(i, table, baseChunk);
  const bad = [...(plan?.fills.entries() ?? [])].filter(
    ([slot, p]) => !p.equals(raw.subarray(slot * CHUNK_SIZE, (slot + 1) * CHUNK_SIZE)),
  );
  t.same(bad, [], 'no filled payload differs from the true one');
  t.notOk(store.has(from!), 'the stored segment that failed is dropped');
  t.equal(store.stats().dropped, 1);
  for (const c of payloadChunks(s, table)) {
    const loc = store.findChunk(c.digest);
    if (loc?.segment.equals(from!)) t.fail('a chunk of the dropped segment is still named');
  }
});

t.test('a rebuilt segment with a wrong payload writes nothing', async (t) => {
  const { s, raw } = await segmentOf(B, 0);
  const out = [path.join(testRoot, 'out-mem'), path.join(testRoot, 'out-disk')];
  for (const [k, f] of out.entries()) await fsp.writeFile(f, Buffer.alloc(baseFiles[k]!.bytes));
  const applier = new SegmentApplier({ base: baseFiles.map((f) => f.file), out });
  t.teardown(() => applier.close());
  const wrong = Buffer.from(raw);
  wrong[10]! ^= 1; // in the first payload slot
  t.throws(() => applier.applyRebuilt(0, s, wrong), { code: 'VMS_OVERLAY_CORRUPT', details: { check: 'chunk' } });
  const written = Buffer.concat(await Promise.all(out.map((f) => fsp.readFile(f))));
  t.ok(
    written.every((b) => b === 0),
    'nothing was written',
  );
  applier.applyRebuilt(0, s, raw);
  const after = Buffer.concat(await Promise.all(out.map((f) => fsp.readFile(f))));
  t.notOk(
    after.every((b) => b === 0),
    'the true segment is written',
  );
});
