import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { generatePair, type GeneratedPair } from '../helpers/images.js';
import { baseInput, buildOverlay, type BuildOptions } from '../../lib/overlay/builder.js';
import { generateKey, loadSigningKey } from '../../lib/overlay/keys.js';
import { applyOverlay, verifyOverlay } from '../../lib/offline/apply.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { inspectOverlay } from '../../lib/overlay/inspect.js';
import { ChunkKind, Image } from '../../lib/overlay/format.js';
import { readRecord } from '../../lib/overlay/records.js';
import { loadBase } from '../../lib/vm/base.js';

t.teardown(removeTestRoot);

const bases = process.env.VMSYNTH_BASE_DIR!;
let pair: GeneratedPair;
let opts: (out: string) => BuildOptions;

t.before(async () => {
  pair = await generatePair(bases, 'gen', path.join(testRoot, 'custom'), {
    memChunks: 2048,
    diskChunks: 1024,
    each: 40,
  });
  await generateKey();
  const key = await loadSigningKey();
  const base = await loadBase('gen');
  opts = (out) => ({
    base: baseInput(base),
    custom: pair.custom,
    appPort: 8000,
    key,
    out,
    segmentBytes: 64 << 10,
  });
});

async function sameFile(t: { ok: (v: unknown, m: string) => void }, a: string, b: string, what: string): Promise<void> {
  const [x, y] = await Promise.all([fsp.readFile(a), fsp.readFile(b)]);
  t.ok(x.equals(y), `${what} is byte-identical`);
}

t.test('apply(base, create(base, custom)) == custom, with every chunk kind', async (t) => {
  const out = path.join(testRoot, 'ov1');
  const r = await buildOverlay(opts(out));
  t.ok(r.segments > 1, `several segments (${r.segments})`);
  const k = r.body.stats.chunks;
  t.ok(k[ChunkKind.ZERO]! >= pair.planted.zero, `zero chunks found (${k[ChunkKind.ZERO]})`);
  t.ok(
    k[ChunkKind.BASE]! >= pair.planted.baseMem + pair.planted.baseDisk,
    `base references found (${k[ChunkKind.BASE]})`,
  );
  t.ok(k[ChunkKind.SELF]! >= pair.planted.selfDup, `self references found (${k[ChunkKind.SELF]})`);
  t.ok(k[ChunkKind.XOR]! >= pair.planted.edit, `small edits become XOR deltas (${k[ChunkKind.XOR]})`);
  t.ok(k[ChunkKind.RAW]! > 0, `new chunks are raw (${k[ChunkKind.RAW]})`);

  const synth = path.join(testRoot, 'synth1');
  const a = await applyOverlay({ overlay: out, base: 'gen', out: synth, threads: 2 });
  await sameFile(t, path.join(synth, 'memory.raw'), pair.custom.memory, 'memory');
  await sameFile(t, path.join(synth, 'disk.raw'), pair.custom.disk, 'disk');
  await sameFile(t, path.join(synth, 'device.state'), pair.custom.deviceState, 'device state');
  t.equal(a.apply.segments, r.segments);
  const resumable = await loadBase(synth);
  t.equal(resumable.manifest.memory.sha256, a.memory.sha256, 'the output is a loadable base directory');

  const v = await verifyOverlay({ overlay: out, base: 'gen' });
  t.equal(
    v.chunks,
    k.reduce((x, y) => x + y, 0),
    'verify checks every chunk',
  );

  const o = await Overlay.open(out, { trusted: null });
  const rep = inspectOverlay(o);
  t.equal(rep.segments, r.segments);
  t.ok(rep.ratio > 0 && rep.ratio < 1, `overlay smaller than naive (${rep.ratio.toFixed(3)})`);
  t.equal(rep.naiveBytes, (rep.modifiedChunks.memory + rep.modifiedChunks.disk) * 4096);
});

t.test('a profile order puts touched chunks first, and still round-trips (0 and 1 worker threads)', async (t) => {
  const o1 = await Overlay.open(path.join(testRoot, 'ov1'), { trusted: null });
  const all: Array<{ image: Image; index: number }> = [];
  for (const s of o1.body.segments) for (let i = 0; i < s.count; i++) all.push(readRecord(s.chunks, i));
  const order = [all.at(-1)!, all.at(-7)!, all[3]!].map((r) => ({ image: r.image, index: r.index }));
  const out = path.join(testRoot, 'ov2');
  await buildOverlay({ ...opts(out), order: { chunks: order, runs: 1, rank: 'test' } });
  const o2 = await Overlay.open(out, { trusted: null });
  const first = o2.body.segments[0]!;
  const head = [0, 1, 2].map((i) => readRecord(first.chunks, i)).map((r) => ({ image: r.image, index: r.index }));
  t.same(head, order, 'the profiled chunks lead the first segment');
  t.equal(o2.body.order.kind, 'profile');
  for (const threads of [0, 1]) {
    const synth = path.join(testRoot, `synth2-${threads}`);
    await applyOverlay({ overlay: out, base: 'gen', out: synth, threads, verifyBase: false });
    await sameFile(t, path.join(synth, 'memory.raw'), pair.custom.memory, `memory (${threads} threads)`);
    await sameFile(t, path.join(synth, 'disk.raw'), pair.custom.disk, `disk (${threads} threads)`);
  }
});

t.test(
  'tiny segments (many smaller than 4 KiB compressed, some without payload) apply through the worker pools',
  async (t) => {
    const out = path.join(testRoot, 'ov-tiny');
    const r = await buildOverlay({ ...opts(out), segmentBytes: 4096 });
    t.ok(
      r.body.segments.some((s) => s.bytes < 4096),
      "some segments are smaller than Node's buffer pool slab",
    );
    for (const threads of [1, 2]) {
      const synth = path.join(testRoot, `synth-tiny-${threads}`);
      await applyOverlay({ overlay: out, base: 'gen', out: synth, threads, verifyBase: false });
      await sameFile(t, path.join(synth, 'memory.raw'), pair.custom.memory, `memory (${threads} workers)`);
      await sameFile(t, path.join(synth, 'disk.raw'), pair.custom.disk, `disk (${threads} workers)`);
    }
    const v = await verifyOverlay({ overlay: out, base: 'gen', threads: 2 });
    t.equal(v.segments, r.segments, 'verify through the segment pool');
  },
);

t.test('the base is found by its hashes when not named', async (t) => {
  const synth = path.join(testRoot, 'synth3');
  const a = await applyOverlay({ overlay: path.join(testRoot, 'ov1'), out: synth, verifyBase: false });
  t.equal(a.base, 'gen');
});

t.test('an existing output is refused unless forced', async (t) => {
  await t.rejects(buildOverlay(opts(path.join(testRoot, 'ov1'))), { code: 'VMS_OVERLAY_EXISTS' });
  await t.rejects(
    applyOverlay({ overlay: path.join(testRoot, 'ov1'), base: 'gen', out: path.join(testRoot, 'synth1') }),
    { code: 'VMS_OVERLAY_EXISTS' },
  );
});
