/**
 * Property tests of the packer: for random small images built from a small
 * alphabet of chunk contents (so zeros, base copies and self duplicates are
 * common), random segment sizes and random profile orders, every modified
 * chunk lands in exactly one segment, every reference resolves within its
 * segment (earlier in the table) or an earlier segment, and applying the
 * overlay gives back the custom images.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import fc from 'fast-check';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { prng } from '../helpers/images.js';
import { buildOverlay } from '../../lib/overlay/builder.js';
import { generateKey, loadSigningKey, type SigningKey } from '../../lib/overlay/keys.js';
import { ChunkKind, Image } from '../../lib/overlay/format.js';
import { readRecord } from '../../lib/overlay/records.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { applyToImages } from '../../lib/overlay/image-rebuild.js';

t.teardown(removeTestRoot);
const CHUNK = 4096;
let key: SigningKey;
t.before(async () => {
  await generateKey();
  key = await loadSigningKey();
});

/** Alphabet: 0 = zeros, 1..5 = fixed random contents, 6 = the chunk's own base content with one byte changed. */
function materialize(plan: number[], alphabet: Buffer[], base?: Buffer): Buffer {
  const out = Buffer.alloc(plan.length * CHUNK);
  plan.forEach((p, i) => {
    if (p === 6 && base) {
      base.copy(out, i * CHUNK, i * CHUNK, (i + 1) * CHUNK);
      out.writeUInt8(out.readUInt8(i * CHUNK + 7) ^ 0x5a, i * CHUNK + 7);
    } else {
      alphabet[p % 6]!.copy(out, i * CHUNK);
    }
  });
  return out;
}

const images = fc.record({
  mem: fc.array(fc.integer({ min: 0, max: 6 }), { minLength: 1, maxLength: 40 }),
  disk: fc.array(fc.integer({ min: 0, max: 6 }), { minLength: 1, maxLength: 24 }),
  changeMem: fc.array(fc.integer({ min: 0, max: 7 }), { minLength: 40, maxLength: 40 }),
  changeDisk: fc.array(fc.integer({ min: 0, max: 7 }), { minLength: 24, maxLength: 24 }),
  segmentChunks: fc.integer({ min: 1, max: 6 }),
  profile: fc.array(fc.record({ image: fc.constantFrom(Image.MEMORY, Image.DISK), index: fc.nat(39) }), {
    maxLength: 30,
  }),
  seed: fc.integer({ min: 1, max: 1 << 30 }),
});

let run = 0;
t.test('every chunk in exactly one segment; every reference resolves backwards; round trip', async (t) => {
  await fc.assert(
    fc.asyncProperty(images, async (p) => {
      const dir = path.join(testRoot, `p${run++}`);
      const alphabet = [
        Buffer.alloc(CHUNK),
        ...[1, 2, 3, 4, 5].map((k) => {
          const b = Buffer.alloc(CHUNK);
          prng(p.seed + k)(b);
          return b;
        }),
      ];
      const bm = materialize(
        p.mem.map((x) => (x === 6 ? 1 : x)),
        alphabet,
      );
      const bd = materialize(
        p.disk.map((x) => (x === 6 ? 2 : x)),
        alphabet,
      );
      // custom: change code 7 keeps the base chunk, others replace it.
      const cm = materialize(
        p.mem.map((_, i) => p.changeMem[i]!),
        alphabet,
        bm,
      );
      const cd = materialize(
        p.disk.map((_, i) => p.changeDisk[i]!),
        alphabet,
        bd,
      );
      p.mem.forEach((_, i) => {
        if (p.changeMem[i] === 7) bm.copy(cm, i * CHUNK, i * CHUNK, (i + 1) * CHUNK);
      });
      p.disk.forEach((_, i) => {
        if (p.changeDisk[i] === 7) bd.copy(cd, i * CHUNK, i * CHUNK, (i + 1) * CHUNK);
      });
      await fsp.mkdir(dir);
      const baseFiles = { memory: path.join(dir, 'bm'), disk: path.join(dir, 'bd') };
      await fsp.writeFile(baseFiles.memory, bm);
      await fsp.writeFile(baseFiles.disk, bd);
      const id = (b: Buffer) => ({ bytes: b.length, sha256: createHash('sha256').update(b).digest('hex') });
      await fsp.writeFile(path.join(dir, 'cm'), cm);
      await fsp.writeFile(path.join(dir, 'cd'), cd);
      await fsp.writeFile(path.join(dir, 'ds'), 'state');
      const profile = p.profile.filter((c) => c.index < (c.image === Image.MEMORY ? p.mem.length : p.disk.length));
      await buildOverlay({
        base: { name: 'b', files: baseFiles, identity: { memory: id(bm), disk: id(bd) } },
        custom: { memory: path.join(dir, 'cm'), disk: path.join(dir, 'cd'), deviceState: path.join(dir, 'ds') },
        appPort: 1,
        key,
        out: path.join(dir, 'ov'),
        segmentBytes: p.segmentChunks * CHUNK,
        order: profile.length ? { chunks: profile, runs: 1, rank: 'test' } : undefined,
      });
      // Overlay.open validates the table itself; check the properties explicitly too.
      const ov = await Overlay.open(path.join(dir, 'ov'), { trusted: null });
      const placed = new Map<string, number>();
      ov.body.segments.forEach((s, si) => {
        for (let i = 0; i < s.count; i++) {
          const r = readRecord(s.chunks, i);
          const k = `${r.image}/${r.index}`;
          if (placed.has(k)) throw new Error(`${k} is in two segments`);
          if (r.kind === ChunkKind.SELF && !placed.has(`${r.refImage}/${r.refIndex}`))
            throw new Error(`${k} refers forward`);
          placed.set(k, si);
        }
      });
      const modified = [
        [bm, cm, p.mem.length],
        [bd, cd, p.disk.length],
      ] as const;
      modified.forEach(([b, c, n], image) => {
        for (let i = 0; i < n; i++) {
          const differs = !b.subarray(i * CHUNK, (i + 1) * CHUNK).equals(c.subarray(i * CHUNK, (i + 1) * CHUNK));
          if (differs !== placed.has(`${image}/${i}`))
            throw new Error(`chunk ${image}/${i}: differs=${differs} but placed=${placed.has(`${image}/${i}`)}`);
        }
      });
      await fsp.copyFile(baseFiles.memory, path.join(dir, 'om'));
      await fsp.copyFile(baseFiles.disk, path.join(dir, 'od'));
      await applyToImages(ov, [baseFiles.memory, baseFiles.disk], [path.join(dir, 'om'), path.join(dir, 'od')], {
        threads: 0,
      });
      if (!(await fsp.readFile(path.join(dir, 'om'))).equals(cm)) throw new Error('memory differs after apply');
      if (!(await fsp.readFile(path.join(dir, 'od'))).equals(cd)) throw new Error('disk differs after apply');
      await fsp.rm(dir, { recursive: true });
    }),
    { numRuns: 60 },
  );
  t.pass('60 random overlays packed and round-tripped');
});
