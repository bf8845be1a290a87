/**
 * Early start's blocking rule on a real FUSE mount, without a VM: a read of
 * an overlay chunk that has not arrived waits, asks for its segment, and
 * completes with the right bytes when that segment lands — not before, not
 * when other segments land. Also: a SELF reference that arrives before its
 * target waits for the target's segment, and a corrupt segment marks nothing.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { Scope } from '../../lib/core/scope.js';
import { ImageMount } from '../../lib/fs/fuse-images.js';
import { ChunkKind } from '../../lib/overlay/format.js';
import { readRecord, type ChunkRecord } from '../../lib/overlay/records.js';
import { Overlay, type SegmentFile } from '../../lib/overlay/reader.js';
import { LaunchImages } from '../../lib/synth/launch-images.js';
import { Priority } from '../../lib/synth/segment-pipeline.js';
import { loadBase } from '../../lib/vm/base.js';
import { readChunk, until } from '../helpers/fuse-reads.js';
import { generatedOverlay, mountLaunchImages } from '../helpers/launch-rig.js';
import type { GeneratedPair } from '../helpers/images.js';

const run = promisify(execFile);
const CHUNK = 4096;
t.teardown(removeTestRoot);

let pair: GeneratedPair;
let overlay: Overlay;
let segFile: SegmentFile;

t.before(async () => {
  ({ pair, overlay, segFile } = await generatedOverlay(testRoot));
});
t.teardown(() => segFile?.close());

interface Rig {
  launch: LaunchImages;
  mount: ImageMount;
  demands: number[];
  apply(index: number, data?: Buffer): Promise<void>;
}

async function rig(t: { teardown: (f: () => unknown) => void }, name: string): Promise<Rig> {
  const scope = new Scope();
  t.teardown(() => scope.close());
  const demands: number[] = [];
  const { launch, mount } = await mountLaunchImages(scope, path.join(testRoot, name), overlay, (s) => demands.push(s));
  const apply = (index: number, data?: Buffer) =>
    launch.apply(index, data ?? segFile.read(overlay.body.segments[index]!), Priority.BACKGROUND);
  return { launch, mount, demands, apply };
}

function records(): { r: ChunkRecord; segment: number }[] {
  const out: { r: ChunkRecord; segment: number }[] = [];
  overlay.body.segments.forEach((s, segment) => {
    for (let i = 0; i < s.count; i++) out.push({ r: readRecord(s.chunks, i), segment });
  });
  return out;
}

const customChunk = async (image: number, index: number) => {
  const buf = await fsp.readFile(image === 0 ? pair.custom.memory : pair.custom.disk);
  return buf.subarray(index * CHUNK, (index + 1) * CHUNK);
};

t.test('a read of a missing chunk waits for its segment, and only its segment', async (t) => {
  const segs = overlay.body.segments;
  t.ok(segs.length >= 4, `several segments (${segs.length})`);
  const k = segs.length - 1;
  const target = records().find((x) => x.segment === k && x.r.image === 1 && x.r.kind === ChunkKind.RAW);
  t.ok(target, 'the last segment carries a raw disk chunk');
  const { r } = target!;
  const g = await rig(t, 'one');
  const beforeRead = performance.now();
  const read = readChunk(g.mount.path('disk.img'), r.index);
  await until(() => g.demands.includes(k), `a demand for segment ${k}`);
  const heldBy = performance.now(); // the read was held before it asked for its segment
  t.ok(g.demands.includes(k), `the read asked for segment ${k} (demands: ${g.demands.join(',')})`);
  for (let i = 0; i < k; i++) await g.apply(i);
  t.notOk(read.finished(), 'every other segment applied: the read still waits');
  t.equal(g.launch.waitingReads, 1, 'one read is held');
  await new Promise((res) => setTimeout(res, 50));
  const atLeast = performance.now() - heldBy; // 50 ms or more
  const held = g.launch.heldReads();
  const atMost = performance.now() - beforeRead;
  t.same(
    { reads: held.reads, segments: held.segments },
    { reads: 1, segments: [k] },
    'held() names the read and the segment it waits for',
  );
  t.ok(
    held.oldestMs >= 50 && held.oldestMs >= Math.floor(atLeast) && held.oldestMs <= Math.ceil(atMost),
    `and how long it has waited: ${held.oldestMs} ms, between ${Math.floor(atLeast)} (held since the demand) and ${Math.ceil(atMost)} (since the read began)`,
  );
  await g.apply(k);
  const got = await read.done;
  t.same(g.launch.heldReads(), { reads: 0, oldestMs: 0, segments: [] }, 'nothing held once its segment landed');
  t.ok(got.equals(await customChunk(1, r.index)), 'after its segment landed the read returns the custom bytes');
  t.equal(g.launch.blockedReads().count, 1, 'one blocked read in the stats');

  // Everything applied: both images read back as base + overlay.
  for (const [img, file] of [
    ['memory.img', pair.custom.memory],
    ['disk.img', pair.custom.disk],
  ] as const) {
    const { stdout } = await run('sha256sum', [g.mount.path(img)]);
    t.equal(
      stdout.split(' ')[0],
      createHash('sha256')
        .update(await fsp.readFile(file))
        .digest('hex'),
      `${img} == base + overlay`,
    );
  }
});

t.test("a SELF reference that lands before its target waits for the target's segment", async (t) => {
  const all = records();
  const where = new Map(all.map((x) => [`${x.r.image}:${x.r.index}`, x.segment]));
  const self = all.find(
    (x) => x.r.kind === ChunkKind.SELF && where.get(`${x.r.refImage}:${x.r.refIndex}`)! < x.segment,
  );
  t.ok(self, 'the overlay has a SELF reference into an earlier segment');
  const { r, segment } = self!;
  const targetSeg = where.get(`${r.refImage}:${r.refIndex}`)!;
  const g = await rig(t, 'self');
  await g.apply(segment);
  t.ok(g.launch.isMissing(r.image, r.index), 'its segment applied, the SELF chunk is still missing');
  const read = readChunk(g.mount.path(r.image === 0 ? 'memory.img' : 'disk.img'), r.index);
  await until(() => g.demands.includes(targetSeg), `a demand for the target's segment ${targetSeg}`);
  t.notOk(g.demands.includes(segment), 'the segment already applied is not asked for again');
  t.notOk(read.finished(), 'the read waits');
  await g.apply(targetSeg);
  t.ok((await read.done).equals(await customChunk(r.image, r.index)), "the SELF chunk reads as its target's content");
});

t.test(
  "a read held on a SELF chunk before its segment lands asks for the target's segment once redirected",
  async (t) => {
    // Found by the benchmark suite: in demand-only, the read waited for the SELF chunk's own segment;
    // that segment landed and redirected the chunk to its target's segment, which nobody asked for.
    const all = records();
    const where = new Map(all.map((x) => [`${x.r.image}:${x.r.index}`, x.segment]));
    const self = all.find(
      (x) => x.r.kind === ChunkKind.SELF && where.get(`${x.r.refImage}:${x.r.refIndex}`)! < x.segment,
    );
    const { r, segment } = self!;
    const targetSeg = where.get(`${r.refImage}:${r.refIndex}`)!;
    const g = await rig(t, 'self-held');
    const read = readChunk(g.mount.path(r.image === 0 ? 'memory.img' : 'disk.img'), r.index);
    await until(() => g.demands.includes(segment), `a demand for the SELF chunk's segment ${segment}`);
    t.notOk(g.demands.includes(targetSeg), 'at first only its own segment is asked for');
    await g.apply(segment);
    await until(
      () => g.demands.includes(targetSeg),
      `a demand for the target's segment ${targetSeg} after the redirect`,
    );
    t.notOk(read.finished(), 'the read still waits');
    await g.apply(targetSeg);
    t.ok((await read.done).equals(await customChunk(r.image, r.index)), "then reads its target's content");
  },
);

t.test('a corrupt segment is refused and marks nothing present', async (t) => {
  const g = await rig(t, 'corrupt');
  const s = overlay.body.segments[0]!;
  const bad = Buffer.from(segFile.read(s));
  bad[bad.length >> 1]! ^= 0x20;
  await t.rejects(g.apply(0, bad), { code: 'VMS_OVERLAY_CORRUPT' });
  const first = readRecord(s.chunks, 0);
  t.ok(g.launch.isMissing(first.image, first.index), 'its chunks are still missing');
  await g.apply(0);
  t.notOk(g.launch.isMissing(first.image, first.index), 'the good copy is applied');
});

t.test('teardown fails held reads with EIO instead of hanging the unmount', async (t) => {
  const scope = new Scope();
  const dir = path.join(testRoot, 'teardown');
  await fsp.mkdir(dir, { recursive: true });
  const base = await loadBase('gen');
  const launch = await LaunchImages.create(
    { body: overlay.body, base: [base.file('memory'), base.file('disk')], dir, demand: () => undefined, threads: 1 },
    scope,
  );
  const mount = await ImageMount.mount(path.join(dir, 'mnt'), [launch.memory, launch.disk]);
  scope.defer('unmount', () => mount.unmount());
  scope.defer('fail held reads', () => launch.failHeldReads());
  const r = records().find((x) => x.r.image === 0)!.r;
  const read = readChunk(mount.path('memory.img'), r.index);
  const outcome = read.done.then(
    () => null,
    (err: { stderr?: Buffer }) => String(err.stderr ?? err),
  );
  await until(() => launch.waitingReads === 1, 'the read to be held');
  await scope.close();
  t.match(await outcome, /Input\/output error/, 'the held read fails with EIO');
  t.same(await fsp.readdir(dir).then((d) => d.filter((n) => n === 'mnt')), [], 'unmounted and the mount point removed');
});
