/**
 * `overlay share` on generated overlays over one base: an overlay shares all
 * of its payload with itself (every segment fully), and an overlay whose
 * memory changes were replaced by new random content shares exactly its disk
 * payload with the original (found by content, whichever image A kept it in).
 */
import { removeTestRoot, testRoot } from '../helpers/env.js';
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { overlayShare } from '../../lib/offline/share.js';
import { ChunkKind, Image } from '../../lib/overlay/format.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { readRecord } from '../../lib/overlay/records.js';
import { generatedOverlays } from '../helpers/images.js';

t.teardown(removeTestRoot);

const { pair, build: buildOver } = await generatedOverlays('shared', path.join(testRoot, 'custom'), {
  memChunks: 2048,
  diskChunks: 1024,
  each: 40,
});
const build = (out: string, custom: typeof pair.custom) => buildOver(custom, out);

const a = path.join(testRoot, 'a');
await build(a, pair.custom);

/** Payload (XOR and RAW) chunks of an overlay, per image. */
async function payload(dir: string): Promise<{ memory: number; disk: number }> {
  const o = await Overlay.open(dir, { trusted: null });
  const n = { memory: 0, disk: 0 };
  for (const s of o.body.segments)
    for (let i = 0; i < s.count; i++) {
      const r = readRecord(s.chunks, i);
      if (r.kind === ChunkKind.XOR || r.kind === ChunkKind.RAW) n[r.image === Image.MEMORY ? 'memory' : 'disk']++;
    }
  return n;
}

t.test('an overlay shares everything with itself', async (t) => {
  const r = await overlayShare(a, a);
  const p = await payload(a);
  t.equal(r.sharedChunks, p.memory + p.disk);
  t.equal(r.sharedFraction, 1);
  t.ok(r.sameBase);
  const withPayload = (await Overlay.open(a, { trusted: null })).body.segments.filter((s) =>
    Array.from({ length: s.count }, (_, i) => readRecord(s.chunks, i).kind).some(
      (k) => k === ChunkKind.XOR || k === ChunkKind.RAW,
    ),
  );
  t.equal(r.segmentsFullyShared, withPayload.length, 'every segment with a payload, fully');
  t.equal(r.bytesSharedEstimate, r.bytesFullyShared);
});

t.test('new memory content: exactly the disk payload is shared', async (t) => {
  const mem = await fsp.readFile(pair.custom.memory);
  const baseMem = await fsp.readFile(path.join(process.env.VMSYNTH_BASE_DIR!, 'shared', 'memory.raw'));
  // Every memory chunk the customization changed gets content no other chunk has.
  for (let i = 0; i < mem.length; i += 4096)
    if (!mem.subarray(i, i + 4096).equals(baseMem.subarray(i, i + 4096))) randomBytes(4096).copy(mem, i);
  const custom = { ...pair.custom, memory: path.join(testRoot, 'memory-b.raw') };
  await fsp.writeFile(custom.memory, mem);
  const b = path.join(testRoot, 'b');
  await build(b, custom);
  const pb = await payload(b);
  // B's disk is A's. Some of its chunks were SELF copies of A's memory payload in A, and are RAW in B
  // (their memory source changed): A holds their content all the same, by digest.
  const r = await overlayShare(a, b);
  t.equal(r.sharedChunks, pb.disk, 'shared: the disk payload, no memory chunk');
  t.equal(r.b.payloadChunks, pb.memory + pb.disk);
  t.ok(r.sharedFraction > 0 && r.sharedFraction < 1, `fraction ${r.sharedFraction.toFixed(3)}`);
  t.ok(r.bytesSharedEstimate < r.b.segmentsBytes);
});
