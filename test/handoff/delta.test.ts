/**
 * The handoff delta (lib/handoff/delta.ts): what a pass sends, and that
 * applying its segments through the real segment pipeline over the launch
 * images gives exactly the images the VM has now, pass after pass.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { ChunkMap, ChunkSource, CHUNK_SIZE } from '../../lib/fs/chunk-map.js';
import { DeltaTracker, type ChunkNow, type DeltaPass } from '../../lib/handoff/delta.js';
import { layerRuns } from '../../lib/handoff/vm-changes.js';
import { ChunkKind, Image, type SegmentInfo } from '../../lib/overlay/format.js';
import { readRecord } from '../../lib/overlay/records.js';
import { ChunkArrivals } from '../../lib/synth/arrivals.js';
import { SegmentPipeline } from '../../lib/synth/segment-pipeline.js';

const CHUNKS = 32;
const chunk = (img: Buffer, i: number) => img.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE);
const flip = (b: Buffer, at: number) => b.writeUInt8(b.readUInt8(at) ^ 0xff, at);

/** Base, launch (base + an "overlay") and the VM's images now, per image. */
function images() {
  const base = [randomBytes(CHUNKS * CHUNK_SIZE), randomBytes(CHUNKS * CHUNK_SIZE)];
  const launch = base.map((b) => Buffer.from(b));
  for (let i = 0; i < 8; i++) randomBytes(CHUNK_SIZE).copy(chunk(launch[0]!, i));
  const now = launch.map((b) => Buffer.from(b));
  return { base, launch, now };
}

/** The target: received files holding the launch images, applied into by the real pipeline. */
async function target(t: Test, base: Buffer[], launch: Buffer[]) {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-delta-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const basePaths = [path.join(dir, 'base.mem'), path.join(dir, 'base.disk')];
  const received = [path.join(dir, 'memory.received'), path.join(dir, 'disk.received')];
  for (let i = 0; i < 2; i++) {
    await fsp.writeFile(basePaths[i]!, base[i]!);
    await fsp.writeFile(received[i]!, launch[i]!);
  }
  const handles = await Promise.all(received.map((f) => fsp.open(f, 'r+')));
  const maps = [0, 1].map(() => new ChunkMap(CHUNKS * CHUNK_SIZE, CHUNK_SIZE, ChunkSource.OVERLAY));
  const arrivals = new ChunkArrivals(maps, () => undefined);
  const infos: SegmentInfo[] = [];
  const pipeline = new SegmentPipeline({
    segments: infos,
    base: basePaths,
    received,
    receivedHandles: handles,
    arrivals,
    threads: 1,
  });
  t.teardown(async () => {
    await pipeline.close();
    await Promise.all(handles.map((h) => h.close()));
  });
  return {
    async apply(p: DeltaPass) {
      for (const s of p.segments) {
        infos[s.index] = s.info;
        for (let i = 0; i < s.info.count; i++) {
          const r = readRecord(s.info.chunks, i);
          arrivals.expect(r.image, r.index, s.index);
        }
      }
      await Promise.all(p.segments.map((s) => pipeline.apply(s.index, s.data, 0)));
      t.equal(arrivals.missingChunks, 0, 'every chunk of the pass arrived');
    },
    async image(i: number): Promise<Buffer> {
      const data = await fsp.readFile(received[i]!);
      for (let c = 0; c < CHUNKS; c++) if (maps[i]!.get(c) === ChunkSource.ZERO) chunk(data, c).fill(0);
      return data;
    },
  };
}

function readers(base: Buffer[], launch: Buffer[]) {
  return {
    launch: async (image: Image, index: number, out: Buffer) => void chunk(launch[image]!, index).copy(out),
    base: async (image: Image, index: number, out: Buffer) => void chunk(base[image]!, index).copy(out),
  };
}

async function* changes(now: Buffer[], mem: number[], disk: number[]): AsyncGenerator<ChunkNow> {
  for (const index of mem) yield { image: Image.MEMORY, index, data: Buffer.from(chunk(now[0]!, index)) };
  for (const index of disk) yield { image: Image.DISK, index, data: Buffer.from(chunk(now[1]!, index)) };
}

t.test('passes send only what changed, and the target ends with the images the VM has', async (t) => {
  const { base, launch, now } = images();
  chunk(now[0]!, 1).fill(0); // zero
  chunk(base[0]!, 2).copy(chunk(now[0]!, 2)); // back to the base's content (launch differs there)
  const same = randomBytes(CHUNK_SIZE);
  same.copy(chunk(now[0]!, 3));
  same.copy(chunk(now[0]!, 20)); // a duplicate of chunk 3
  flip(now[0]!, 4 * CHUNK_SIZE + 100); // a small change
  randomBytes(CHUNK_SIZE).copy(chunk(now[1]!, 5));
  const tracker = new DeltaTracker(7);
  const r = readers(base, launch);
  const b = await target(t, base, launch);

  const p1 = await tracker.pass(changes(now, [1, 2, 3, 4, 10, 20], [5]), r, { level: 3 });
  t.equal(p1.looked, 7);
  t.equal(p1.skipped, 1, 'chunk 10 was written with the content it had: not sent');
  t.same(
    p1.kinds,
    [1, 1, 1, p1.kinds[ChunkKind.XOR], p1.kinds[ChunkKind.RAW]],
    'one zero, one base reference, one self reference',
  );
  t.equal(p1.kinds[ChunkKind.XOR]! + p1.kinds[ChunkKind.RAW]!, 3, 'three payloads');
  t.equal(p1.segments[0]!.index, 7, 'segments are numbered after the overlay');
  await b.apply(p1);
  t.ok((await b.image(0)).equals(now[0]!), 'memory after pass 1');
  t.ok((await b.image(1)).equals(now[1]!), 'disk after pass 1');

  // Pass 2: chunk 4 changes again; chunk 20 was given back (its launch content shows again).
  flip(now[0]!, 4 * CHUNK_SIZE + 200);
  chunk(launch[0]!, 20).copy(chunk(now[0]!, 20));
  const p2 = await tracker.pass(changes(now, [1, 2, 3, 4, 10], [5]), r, { level: 3 });
  t.equal(
    p2.kinds.reduce((a, c) => a + c, 0),
    2,
    'chunk 4, and chunk 20 back to its launch content',
  );
  t.ok(p2.segments[0]!.index >= 8, 'numbering goes on');
  await b.apply(p2);
  t.ok((await b.image(0)).equals(now[0]!), 'memory after pass 2');

  const p3 = await tracker.pass(changes(now, [1, 2, 3, 4, 10], [5]), r, { level: 3 });
  t.equal(p3.segments.length, 0, 'nothing changed: nothing sent');
});

t.test('chunks an earlier handoff brought are sent even when the launch image here has them', async (t) => {
  const { base, launch, now } = images();
  const tracker = new DeltaTracker(3, new Set([6]));
  const p = await tracker.pass(changes(now, [6], []), readers(base, launch), { level: 1 });
  t.equal(p.skipped, 0);
  t.equal(p.segments.length, 1);
  t.equal(readRecord(p.segments[0]!.info.chunks, 0).index, 6);
});

t.test('the qcow2 layer runs qemu-img map lists', async (t) => {
  const runs = layerRuns([
    { start: 0, length: 65536, depth: 1, zero: false, data: true, offset: 0 },
    { start: 65536, length: 65536, depth: 0, zero: false, data: true, offset: 327680 },
    { start: 131072, length: 8192, depth: 0, zero: true, data: false },
    { start: 139264, length: 4096, depth: 1, zero: true, data: false },
  ]);
  t.same(runs, [
    { index: 16, count: 16, offset: 327680 },
    { index: 32, count: 2, offset: null },
  ]);
  t.throws(() => layerRuns([{ start: 512, length: 512, depth: 0, zero: false, data: true, offset: 0 }]), {
    code: 'VMS_INTERNAL',
  });
});
