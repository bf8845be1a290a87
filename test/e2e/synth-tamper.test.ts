/**
 * Tampering in transit, on a real FUSE mount without a VM: 1,000 copies of
 * segments, each with exactly one bit flipped, are fed to the server's apply
 * path (LaunchImages.apply, what SynthSession.receive calls
 * for a segment from the network). Every one must be refused with
 * VMS_OVERLAY_CORRUPT and mark no chunk present; reads held through the mount
 * on the tampered segment's chunks must stay held while the bad copies are
 * refused, and return the custom VM's bytes once the genuine copy lands; at
 * the end both images read back through FUSE equal the custom images.
 *
 * Where the flips go (deterministic, no randomness): trial i tampers segment
 * i mod N (N segments), so every segment gets ⌊1000/N⌋ or ⌈1000/N⌉ trials;
 * the k-th of a segment's m trials flips bit round(k·(B−1)/(m−1)) of its B
 * compressed bits (bit 0 = the low bit of byte 0), i.e. evenly spaced over
 * the whole segment from its first bit to its last.
 *
 * One mount for all trials. Segments are handled in order: start held reads
 * on some of segment s's chunks, feed its tampered copies (concurrently, as
 * the queue allows), check, feed the genuine copy, check the held reads.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp, readdirSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { decompress } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import { Scope } from '../../lib/core/scope.js';
import { VmsynthError } from '../../lib/core/errors.js';
import { ChunkKind, KIND_NAMES } from '../../lib/overlay/format.js';
import { readRecord, type ChunkRecord } from '../../lib/overlay/records.js';
import { Overlay, type SegmentFile } from '../../lib/overlay/reader.js';
import { ChunkSource } from '../../lib/fs/chunk-map.js';
import { Priority } from '../../lib/synth/segment-pipeline.js';
import { readChunk, until } from '../helpers/fuse-reads.js';
import { generatedOverlay, mountLaunchImages } from '../helpers/launch-rig.js';
import type { GeneratedPair } from '../helpers/images.js';
import { mountsUnder } from '../helpers/leaks.js';

const run = promisify(execFile);
const CHUNK = 4096;
const TRIALS = 1000;
/** Reads held through the mount per segment (at most; fewer when it has fewer chunks). */
const HELD_PER_SEGMENT = 3;
const IMAGE_FILES = ['memory.img', 'disk.img'] as const;
t.teardown(removeTestRoot);

let pair: GeneratedPair;
let overlay: Overlay;
let segFile: SegmentFile;
let custom: [Buffer, Buffer];

t.before(async () => {
  ({ pair, overlay, segFile } = await generatedOverlay(testRoot));
  custom = [await fsp.readFile(pair.custom.memory), await fsp.readFile(pair.custom.disk)];
});
t.teardown(() => segFile?.close());

/** The trial plan: trial i → segment i mod N, bit evenly spaced over that segment's compressed bits. */
function plan(sizes: readonly number[]): { segment: number; bit: number }[] {
  const n = sizes.length;
  const trials: { segment: number; bit: number }[] = [];
  for (let i = 0; i < TRIALS; i++) {
    const segment = i % n;
    const k = Math.floor(i / n);
    const m = Math.floor((TRIALS - 1 - segment) / n) + 1; // trials this segment gets
    const bits = sizes[segment]! * 8;
    trials.push({ segment, bit: m === 1 ? bits >> 1 : Math.round((k * (bits - 1)) / (m - 1)) });
  }
  return trials;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const threadIds = () => new Set(readdirSync('/proc/self/task'));

t.test(`${TRIALS} single-bit flips over every segment are all refused, and no bad byte is served`, async (t) => {
  const t0 = performance.now();
  const segs = overlay.body.segments;
  const n = segs.length;
  t.ok(n >= 16 && n <= TRIALS, `many segments (${n}), each tampered at least once`);
  const recs: ChunkRecord[][] = segs.map((s) => Array.from({ length: s.count }, (_, i) => readRecord(s.chunks, i)));
  const kinds = [0, 0, 0, 0, 0];
  for (const r of recs.flat()) kinds[r.kind]!++;
  t.ok(
    kinds.every((c) => c > 0),
    `every chunk kind is in the overlay (${kinds.map((c, k) => `${KIND_NAMES[k]} ${c}`).join(', ')})`,
  );
  const payloadSegs = recs.map((rs) => rs.some((r) => r.kind === ChunkKind.XOR || r.kind === ChunkKind.RAW));
  t.ok(
    payloadSegs.filter(Boolean).length >= 8,
    `most segments carry payload chunks (${payloadSegs.filter(Boolean).length} of ${n})`,
  );

  const genuine = segs.map((s) => Buffer.from(segFile.read(s)));
  const trials = plan(genuine.map((g) => g.length));
  const perSegment = segs.map(() => [] as number[]);
  trials.forEach((tr, i) => perSegment[tr.segment]!.push(i));
  // The plan really is spread: every segment, its first and last bit, every bit of a byte.
  t.ok(
    perSegment.every((l) => l.length >= Math.floor(TRIALS / n)),
    'every segment gets its share of trials',
  );
  t.ok(
    perSegment.every((l, s) => trials[l[0]!]!.bit === 0 && trials[l.at(-1)!]!.bit === genuine[s]!.length * 8 - 1),
    'each segment is flipped at its first and its last bit',
  );
  t.same(
    [...new Set(trials.map((tr) => tr.bit % 8))].sort(),
    [0, 1, 2, 3, 4, 5, 6, 7],
    'all eight bit positions of a byte are flipped',
  );

  // Threads before the rig, to check the apply workers (and anything else it started) are gone after it.
  await fsp.readFile(pair.custom.deviceState); // the libuv pool exists already
  const threadsBefore = threadIds();

  const scope = new Scope();
  let closed = false;
  t.teardown(() => (closed ? undefined : scope.close()));
  const demands = new Set<number>();
  const { launch, mount } = await mountLaunchImages(scope, path.join(testRoot, 'rig'), overlay, (s) => demands.add(s));
  const missingTotal = () => launch.memory.map.count(ChunkSource.MISSING) + launch.disk.map.count(ChunkSource.MISSING);

  let detected = 0;
  let byHash = 0;
  let markedNothing = 0;
  let silent = 0; // flipped copies that decompress cleanly to the right size: only the SHA-256 can catch them
  let heldReads = 0;
  let heldOk = 0;
  let heldStayedHeld = 0;
  const failures: string[] = [];
  const fail = (what: string) => {
    if (failures.length < 20) failures.push(what);
  };

  for (let s = 0; s < n; s++) {
    const s0 = segs[s]!;
    // Reads in flight on this segment's chunks: a payload chunk of each kind first, then whatever else it has.
    const pick: ChunkRecord[] = [];
    for (const want of [ChunkKind.RAW, ChunkKind.XOR, ChunkKind.SELF, ChunkKind.BASE, ChunkKind.ZERO]) {
      const r = recs[s]!.find((x) => x.kind === want);
      if (r && pick.length < HELD_PER_SEGMENT) pick.push(r);
    }
    const reads = pick.map((r) => ({ r, read: readChunk(mount.path(IMAGE_FILES[r.image]), r.index) }));
    heldReads += reads.length;
    await until(() => launch.waitingReads === reads.length, `${reads.length} held reads on segment ${s}`);
    if (reads.length && !demands.has(s)) fail(`segment ${s}: the held reads did not ask for it`);

    const missingBefore = missingTotal();
    const appliedBefore = launch.appliedSegments;
    const stillMissing = () => recs[s]!.every((r) => launch.isMissing(r.image, r.index));
    await Promise.all(
      perSegment[s]!.map((i) => {
        const { bit } = trials[i]!;
        const bad = Buffer.from(genuine[s]!); // a fresh copy each time: apply hands its buffer to a worker
        bad[bit >> 3]! ^= 1 << (bit & 7);
        try {
          // Only when the frame still declares the right size: a flip there could ask for gigabytes.
          if (zstdBinding.getFrameContentSize(bad) === s0.rawBytes && decompress(bad).length === s0.rawBytes) silent++;
        } catch {
          /* zstd noticed too */
        }
        return launch.apply(s, bad, Priority.DEMAND).then(
          () => fail(`trial ${i} (segment ${s}, bit ${bit}): accepted`),
          (err: unknown) => {
            if (err instanceof VmsynthError && err.code === 'VMS_OVERLAY_CORRUPT') detected++;
            else fail(`trial ${i} (segment ${s}, bit ${bit}): refused with ${String(err)}`);
            if (err instanceof VmsynthError && err.details.check === 'sha256') byHash++;
            if (stillMissing() && missingTotal() === missingBefore && launch.appliedSegments === appliedBefore)
              markedNothing++;
            else fail(`trial ${i} (segment ${s}, bit ${bit}): marked chunks present`);
          },
        );
      }),
    );
    // Let a wrongly released read reach dd before looking (a FUSE reply takes well under this).
    await new Promise((r) => setTimeout(r, 5));
    const stayed = reads.filter((x) => !x.read.finished()).length;
    heldStayedHeld += stayed;
    if (stayed !== reads.length || launch.waitingReads !== reads.length)
      fail(`segment ${s}: a held read finished on tampered copies only`);

    await launch.apply(s, Buffer.from(genuine[s]!), Priority.DEMAND);
    if (recs[s]!.some((r) => launch.isMissing(r.image, r.index)))
      fail(`segment ${s}: the genuine copy left chunks missing`);
    for (const { r, read } of reads) {
      const got = await read.done;
      if (got.equals(custom[r.image].subarray(r.index * CHUNK, (r.index + 1) * CHUNK))) heldOk++;
      else
        fail(
          `segment ${s}: held read of ${IMAGE_FILES[r.image]} chunk ${r.index} (${KIND_NAMES[r.kind]}) returned other bytes`,
        );
    }
  }

  t.same(failures, [], 'no trial misbehaved');
  t.equal(detected, TRIALS, `detected: ${detected}/${TRIALS} refused with VMS_OVERLAY_CORRUPT`);
  t.equal(markedNothing, TRIALS, `${markedNothing}/${TRIALS} marked no chunk present`);
  t.ok(heldReads >= n, `reads held through FUSE: ${heldReads} (on every segment)`);
  t.equal(heldStayedHeld, heldReads, "every held read stayed held while its segment's tampered copies were refused");
  t.equal(heldOk, heldReads, 'every held read returned the custom bytes once the genuine segment landed');
  t.equal(launch.appliedSegments, n, 'every genuine segment applied, once');
  t.equal(missingTotal(), 0, 'no chunk missing');
  // Not asserted (tests assert codes, not messages): which check caught them, and how many zstd alone would have let through.
  t.comment(
    `${byHash}/${TRIALS} refused by the segment SHA-256 check; ${silent}/${TRIALS} flipped copies decompress without error to the right size`,
  );

  for (const [img, file] of IMAGE_FILES.entries()) {
    const { stdout } = await run('sha256sum', [mount.path(file)]);
    t.equal(stdout.split(' ')[0], sha(custom[img]!), `${file} read entirely through FUSE == the custom image`);
  }

  closed = true;
  await scope.close();
  t.same(await mountsUnder(testRoot), [], 'no mount left under the test root');
  const lingering = [...threadIds()].filter((id) => !threadsBefore.has(id));
  t.same(lingering, [], 'no thread the rig started (apply workers, FUSE) is left');
  const ms = Math.round(performance.now() - t0);
  console.log(
    `# tamper: ${detected}/${TRIALS} detected over ${n} segments (${silent} would decompress cleanly), ${heldReads} held reads ok, one mount, ${ms} ms`,
  );
});
