/**
 * Building an overlay, passes 3 and 4: the order chunks are packed in, and
 * the packing.
 *
 *   3. order: profile order (first touches), then memory by offset, then disk.
 *   4. pack: walk in order; the first chunk with given content carries a
 *      payload (XOR against the base chunk at its offset when that leaves
 *      more zero words than the raw bytes, else RAW); later equal chunks
 *      become SELF references, so a reference always follows its target.
 *      Records and payloads fill ~1 MB segments (SegmentPacker), each one
 *      zstd frame with its chunks' digests behind the payloads.
 */
import { writeSync } from 'node:fs';
import { compress } from 'zstd-napi';
import { yieldNow } from '../core/scope.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { ChunkIndex } from './chunk-index.js';
import { ChunkFile, sha256, xorInto, zeroWords } from './chunk-io.js';
import { chunkKey, ChunkKind, HASH_BYTES, hasDigest, Image, type SegmentInfo } from './format.js';
import { encodeRecords, type ChunkRecord } from './records.js';
import { PENDING, type Entries } from './scan.js';

/** A chunk, named by image and index. */
export interface ChunkRef {
  image: Image;
  index: number;
}

export interface BuildOrder {
  /** Chunks in the order the guest first touched them (duplicates and unmodified chunks are ignored). */
  chunks: ChunkRef[];
  runs: number;
  rank: string;
}

/** Pass 3: apply order (indices into entries). */
export function orderEntries(entries: Entries, order?: BuildOrder): Uint32Array {
  const idx = new Uint32Array(entries.n);
  for (let i = 0; i < entries.n; i++) idx[i] = i;
  if (!order || order.chunks.length === 0) return idx; // scan order: memory by offset, then disk by offset
  const rank = new Map<number, number>();
  order.chunks.forEach((c, r) => {
    const key = chunkKey(c.image, c.index);
    if (!rank.has(key)) rank.set(key, r);
  });
  const r = new Float64Array(entries.n);
  for (let i = 0; i < entries.n; i++) r[i] = rank.get(chunkKey(entries.image[i]!, entries.index[i]!)) ?? Infinity;
  return idx.sort((x, y) => r[x]! - r[y]! || x - y);
}

/** Where a packer's compressed segments go: the overlay's segments file (a descriptor), or a function given each one and its offset. */
export type SegmentSink = number | ((z: Buffer, offset: number) => void);

/** Collects records and payloads into a segment; flush() compresses, writes and lists it. */
export class SegmentPacker {
  readonly table: SegmentInfo[] = [];
  /** Bytes written to the segments file so far. */
  offset = 0;
  private records: ChunkRecord[] = [];
  private readonly digests: Buffer;
  private digestCount = 0;
  /** The raw segment: payloads from 0; the digests are copied in behind them at flush. */
  private readonly raw: Buffer;
  private used = 0;
  private readonly maxRecords: number;

  constructor(
    private readonly sink: SegmentSink,
    private readonly segmentBytes: number,
    private readonly level: number,
  ) {
    // A segment of references only (no payload) still ends after this many records.
    this.maxRecords = Math.max(1024, (segmentBytes / CHUNK_SIZE) * 16);
    this.digests = Buffer.allocUnsafeSlow(this.maxRecords * HASH_BYTES);
    this.raw = Buffer.allocUnsafeSlow(segmentBytes + this.digests.length);
  }

  /** Where the next payload goes, starting a new segment when this one is full. */
  payloadSlot(): { buf: Buffer; offset: number } {
    if (this.used + CHUNK_SIZE > this.segmentBytes) this.flush();
    const offset = this.used;
    this.used += CHUNK_SIZE;
    return { buf: this.raw.subarray(offset, offset + CHUNK_SIZE), offset };
  }

  add(r: ChunkRecord, digest: Uint8Array): void {
    if (hasDigest(r.kind)) this.digests.set(digest, this.digestCount++ * HASH_BYTES);
    this.records.push(r);
    if (this.records.length >= this.maxRecords) this.flush();
  }

  flush(): void {
    if (this.records.length === 0) return;
    const rawBytes = this.used + this.digestCount * HASH_BYTES;
    this.digests.copy(this.raw, this.used, 0, this.digestCount * HASH_BYTES);
    const z = compress(this.raw.subarray(0, rawBytes), { compressionLevel: this.level });
    if (typeof this.sink === 'number') {
      let done = 0;
      while (done < z.length) done += writeSync(this.sink, z, done, z.length - done, this.offset + done);
    } else {
      this.sink(z, this.offset);
    }
    this.table.push({
      offset: this.offset,
      bytes: z.length,
      rawBytes,
      sha256: sha256(z),
      count: this.records.length,
      chunks: encodeRecords(this.records),
      digests: this.digestCount,
      tableSha256: sha256(this.digests.subarray(0, this.digestCount * HASH_BYTES)),
    });
    this.offset += z.length;
    this.records = [];
    this.digestCount = 0;
    this.used = 0;
  }
}

/** Pass 4: dedup against earlier overlay chunks, delta-encode, pack, compress. Returns chunk counts by kind. */
export async function pack(
  base: ChunkFile[],
  custom: ChunkFile[],
  entries: Entries,
  order: Uint32Array,
  delta: 'auto' | 'xor' | 'raw',
  packer: SegmentPacker,
  signal?: AbortSignal,
): Promise<number[]> {
  const kinds = [0, 0, 0, 0, 0];
  const self = new ChunkIndex(entries.n);
  const target = Buffer.allocUnsafeSlow(CHUNK_SIZE);
  const xor = Buffer.allocUnsafeSlow(CHUNK_SIZE);
  for (let k = 0; k < order.length; k++) {
    const e = order[k]!;
    const image = entries.image[e]! as Image;
    const index = entries.index[e]!;
    const digest = entries.digestOf(e);
    let kind = entries.kind[e]!;
    let refImage = entries.refImage[e]! as Image;
    let refIndex = entries.refIndex[e]!;
    let payloadOffset = 0;
    if (kind === PENDING) {
      const prior = self.get(digest);
      const content = custom[image]!.chunk(index);
      if (prior) custom[prior.image]!.readAt(target, prior.index * CHUNK_SIZE);
      if (prior && target.equals(content)) {
        kind = ChunkKind.SELF;
        refImage = prior.image as Image;
        refIndex = prior.index;
      } else {
        if (!prior) self.add(digest, { image, index });
        xorInto(xor, content, base[image]!.chunk(index));
        kind =
          delta === 'xor' || (delta === 'auto' && zeroWords(xor) > zeroWords(content)) ? ChunkKind.XOR : ChunkKind.RAW;
        const slot = packer.payloadSlot();
        (kind === ChunkKind.XOR ? xor : content).copy(slot.buf);
        payloadOffset = slot.offset;
      }
    }
    kinds[kind]!++;
    packer.add({ image, kind: kind as ChunkKind, refImage, index, refIndex, payloadOffset }, digest);
    if (k % 4096 === 4095) await yieldNow(signal);
  }
  packer.flush();
  return kinds;
}
