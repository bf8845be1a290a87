/**
 * Access-order profiles without a VM: how runs are merged (rankTouches) and
 * how much of an overlay an in-order stream must deliver before a run's
 * touched chunks are all present (prefixNeeded), before and after re-packing
 * a generated overlay by a profile. The real-guest profile is in
 * test/e2e/overlay-real.test.ts.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import path from 'node:path';
import { generatePair } from '../helpers/images.js';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { generateKey, loadSigningKey } from '../../lib/overlay/keys.js';
import { prefixNeeded, rankTouches } from '../../lib/offline/profile.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { readRecord } from '../../lib/overlay/records.js';
import { loadBase } from '../../lib/vm/base.js';

t.teardown(removeTestRoot);

const m = (index: number) => ({ image: 0, index });
const d = (index: number) => ({ image: 1, index });

t.test('rankTouches: earliest normalized position in any run first', async (t) => {
  t.same(rankTouches([]), [], 'no runs, no order');
  t.same(rankTouches([[m(5), d(2), m(1)]]), [m(5), d(2), m(1)], 'one run keeps its order, disk and memory interleaved');
  // Run A (4 touches) reaches m(9) at 3/4, run B first (0): m(9) ranks with m(1), ahead of it as
  // it was touched in two runs; m(2) is at 1/4 in A, 1/2 in B; m(3) at 1/2 in A only.
  t.same(
    rankTouches([
      [m(1), m(2), m(3), m(9)],
      [m(9), m(2)],
    ]),
    [m(9), m(1), m(2), m(3)],
    'a chunk early in any run comes early',
  );
  // m(1) and m(2) both reach position 0; m(1) was touched by two runs, m(2) by one.
  t.same(
    rankTouches([
      [m(2), m(1)],
      [m(1), m(3)],
    ]),
    [m(1), m(2), m(3)],
    'ties: touched in more runs first',
  );
  t.same(rankTouches([[m(4), m(4), m(6)]]), [m(4), m(6)], 'a chunk counts once per run');
  t.same(rankTouches([[m(7)], [d(7)]]), [m(7), d(7)], 'same index in different images are different chunks');
});

t.test('prefixNeeded: a profile order shortens the prefix a stream must deliver', async (t) => {
  const pair = await generatePair(process.env.VMSYNTH_BASE_DIR!, 'prof', path.join(testRoot, 'custom'), {
    memChunks: 4096,
    diskChunks: 2048,
    each: 40,
  });
  await generateKey();
  const key = await loadSigningKey();
  const base = await loadBase('prof');
  const opts = (out: string) => ({
    base: baseInput(base),
    custom: pair.custom,
    appPort: 8000,
    key,
    out,
    segmentBytes: 32 << 10,
  });
  await buildOverlay(opts(path.join(testRoot, 'default')));
  const plain = await Overlay.open(path.join(testRoot, 'default'), { trusted: null });
  t.ok(plain.body.segments.length > 4, `several segments (${plain.body.segments.length})`);

  // The "run" touches a few overlay chunks from the end of the default order, plus chunks not in the overlay.
  const last = plain.body.segments.at(-1)!;
  const tail = [readRecord(last.chunks, last.count - 1), readRecord(last.chunks, 0)].map(
    (r): { image: number; index: number } => ({ image: r.image, index: r.index }),
  );
  const run = [m(4095), ...tail, d(2047)];
  const overlayChunks = run.filter((c) => tail.includes(c)).length;
  const before = prefixNeeded(plain, run);
  t.equal(before.chunks, overlayChunks, 'only overlay chunks count');
  t.equal(before.prefixSegments, plain.body.segments.length, 'default order: the whole overlay must arrive');
  t.equal(before.prefixBytes, last.offset + last.bytes);

  await buildOverlay({
    ...opts(path.join(testRoot, 'profiled')),
    order: { chunks: rankTouches([run]), runs: 1, rank: 'test' },
  });
  const profiled = await Overlay.open(path.join(testRoot, 'profiled'), { trusted: null });
  const after = prefixNeeded(profiled, run);
  t.same(
    after,
    { chunks: overlayChunks, segments: 1, prefixSegments: 1, prefixBytes: profiled.body.segments[0]!.bytes },
    'profiled: the first segment is enough',
  );
  t.same(
    prefixNeeded(profiled, []),
    { chunks: 0, segments: 0, prefixSegments: 0, prefixBytes: 0 },
    'no touches, nothing needed',
  );
});
