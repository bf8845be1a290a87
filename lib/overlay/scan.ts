/**
 * Building an overlay, passes 1 and 2: which chunks of a custom VM differ
 * from its base, and which of those the base already holds elsewhere.
 * Streaming: images are read block by block and only per-chunk metadata
 * (~45 bytes per modified chunk, columnar in Entries) is kept.
 *
 *   1. scan: compare custom with base at the same offset; a differing chunk is
 *      ZERO if all zeros, otherwise its SHA-256 is kept and it is pending.
 *   2. lookaside: scan the base, fingerprint each non-zero chunk (16 sampled
 *      words), and only on a fingerprint hit hash it; a pending chunk whose
 *      digest and bytes equal a base chunk becomes a BASE reference (memory
 *      first, then disk, as Elijah ordered them).
 */
import { VmsynthError } from '../core/errors.js';
import { yieldNow } from '../core/scope.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { ChunkIndex } from './chunk-index.js';
import { BLOCK_BYTES, ChunkFile, isZero, sha256, ZERO_DIGEST } from './chunk-io.js';
import { ChunkKind, HASH_BYTES, Image } from './format.js';

/** The kind of a chunk that differs and is not yet known to be in the base. */
export const PENDING = 255;
const PRINT_BYTES = 8;

/** Growable per-chunk metadata, columnar. */
export class Entries {
  n = 0;
  image = new Uint8Array(1024);
  index = new Uint32Array(1024);
  kind = new Uint8Array(1024);
  refImage = new Uint8Array(1024);
  refIndex = new Uint32Array(1024);
  digest = new Uint8Array(1024 * HASH_BYTES);
  /** The 64-bit fingerprint of pending chunks (zero for others). */
  print = new Uint8Array(1024 * PRINT_BYTES);

  /** Adds a chunk; for a pending one, `content` gives its fingerprint. */
  push(image: Image, index: number, kind: number, digest: Uint8Array, content?: Buffer, at = 0): void {
    if (this.n === this.index.length) this.grow();
    const i = this.n++;
    this.image[i] = image;
    this.index[i] = index;
    this.kind[i] = kind;
    this.digest.set(digest, i * HASH_BYTES);
    if (content) fingerprint(content, at, this.print.subarray(i * PRINT_BYTES, (i + 1) * PRINT_BYTES));
  }

  digestOf(i: number): Uint8Array {
    return this.digest.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
  }

  printOf(i: number): Uint8Array {
    return this.print.subarray(i * PRINT_BYTES, (i + 1) * PRINT_BYTES);
  }

  private grow(): void {
    const cap = this.index.length * 2;
    const g = <T extends Uint8Array | Uint32Array>(a: T, n: number): T => {
      const b = new (a.constructor as new (n: number) => T)(n);
      b.set(a);
      return b;
    };
    this.image = g(this.image, cap);
    this.index = g(this.index, cap);
    this.kind = g(this.kind, cap);
    this.refImage = g(this.refImage, cap);
    this.refIndex = g(this.refIndex, cap);
    this.digest = g(this.digest, cap * HASH_BYTES);
    this.print = g(this.print, cap * PRINT_BYTES);
  }
}

/** 64-bit fingerprint of a chunk from 16 sampled 32-bit words; cheap pre-filter for base lookaside. */
function fingerprint(buf: Buffer, off: number, out: Uint8Array): Uint8Array {
  let h1 = 0x9e3779b9;
  let h2 = 0x85ebca6b;
  for (let k = 0; k < 16; k++) {
    const w = buf.readUInt32LE(off + k * 256 + ((k * 52) & 0xfc));
    h1 = Math.imul(h1 ^ w, 0x01000193);
    h2 = Math.imul(h2 + w, 0x5bd1e995) ^ (h2 >>> 15);
  }
  out[0] = h1;
  out[1] = h1 >>> 8;
  out[2] = h1 >>> 16;
  out[3] = h1 >>> 24;
  out[4] = h2;
  out[5] = h2 >>> 8;
  out[6] = h2 >>> 16;
  out[7] = h2 >>> 24;
  return out;
}

/** Both images must keep their base's size, in whole chunks. */
export function checkSameSize(base: ChunkFile, custom: ChunkFile, name: string): void {
  if (base.bytes !== custom.bytes) {
    throw new VmsynthError(
      'VMS_BASE_MISMATCH',
      `the custom ${name} image is ${custom.bytes} bytes, its base's is ${base.bytes}: a custom VM keeps its base's image sizes`,
    );
  }
  if (base.bytes % CHUNK_SIZE !== 0)
    throw new VmsynthError('VMS_USAGE', `${base.file} is not a whole number of 4 KiB chunks`);
}

/** Pass 1: chunks that differ from the base at the same offset. */
export async function scan(
  base: ChunkFile[],
  custom: ChunkFile[],
  entries: Entries,
  trimmed: Array<[number, number]>,
  signal?: AbortSignal,
): Promise<{ trimmedChunks: number; modified: number[] }> {
  const a = Buffer.allocUnsafeSlow(BLOCK_BYTES);
  const b = Buffer.allocUnsafeSlow(BLOCK_BYTES);
  const modified = [0, 0];
  let trimmedChunks = 0;
  // Disk chunks come in increasing order: walk the sorted trimmed ranges with a cursor.
  const ranges = [...trimmed].sort((x, y) => x[0] - y[0]);
  let r = 0;
  const isTrimmed = (i: number) => {
    while (r < ranges.length && ranges[r]![1] <= i) r++;
    return r < ranges.length && ranges[r]![0] <= i;
  };
  for (const image of [Image.MEMORY, Image.DISK]) {
    const bf = base[image]!;
    const cf = custom[image]!;
    for (let off = 0; off < bf.bytes; off += BLOCK_BYTES) {
      const len = Math.min(BLOCK_BYTES, bf.bytes - off);
      bf.readAt(a.subarray(0, len), off);
      cf.readAt(b.subarray(0, len), off);
      if (a.compare(b, 0, len, 0, len) !== 0) {
        for (let c = 0; c < len; c += CHUNK_SIZE) {
          if (a.compare(b, c, c + CHUNK_SIZE, c, c + CHUNK_SIZE) === 0) continue;
          const index = (off + c) / CHUNK_SIZE;
          modified[image]!++;
          if (isZero(b, c)) {
            entries.push(image, index, ChunkKind.ZERO, ZERO_DIGEST);
            if (image === Image.DISK && isTrimmed(index)) trimmedChunks++;
          } else {
            entries.push(image, index, PENDING, sha256(b.subarray(c, c + CHUNK_SIZE)), b, c);
          }
        }
      }
      if ((off / BLOCK_BYTES) % 64 === 63) await yieldNow(signal);
    }
  }
  return { trimmedChunks, modified };
}

/** Pass 2: pending chunks equal to some base chunk become BASE references. */
export async function lookaside(
  base: ChunkFile[],
  custom: ChunkFile[],
  entries: Entries,
  signal?: AbortSignal,
): Promise<void> {
  const byDigest = new ChunkIndex(entries.n);
  const byPrint = new ChunkIndex(entries.n);
  const fp = new Uint8Array(PRINT_BYTES);
  const scratch = Buffer.allocUnsafeSlow(CHUNK_SIZE);
  let pending = 0;
  for (let i = 0; i < entries.n; i++) {
    if (entries.kind[i] !== PENDING) continue;
    pending++;
    byDigest.add(entries.digestOf(i), { image: 0, index: i });
    byPrint.add(entries.printOf(i), { image: 0, index: 0 });
  }
  if (pending === 0) return;
  const a = Buffer.allocUnsafeSlow(BLOCK_BYTES);
  for (const image of [Image.MEMORY, Image.DISK]) {
    const bf = base[image]!;
    for (let off = 0; off < bf.bytes; off += BLOCK_BYTES) {
      const len = Math.min(BLOCK_BYTES, bf.bytes - off);
      bf.readAt(a.subarray(0, len), off);
      for (let c = 0; c < len; c += CHUNK_SIZE) {
        fingerprint(a, c, fp);
        if (!byPrint.get(fp) || isZero(a, c)) continue;
        const hit = byDigest.get(sha256(a.subarray(c, c + CHUNK_SIZE)));
        if (!hit) continue;
        const e = hit.index;
        if (entries.kind[e] !== PENDING) continue;
        custom[entries.image[e]!]!.readAt(scratch, entries.index[e]! * CHUNK_SIZE);
        if (scratch.compare(a, c, c + CHUNK_SIZE) !== 0) continue;
        entries.kind[e] = ChunkKind.BASE;
        entries.refImage[e] = image;
        entries.refIndex[e] = (off + c) / CHUNK_SIZE;
      }
      if ((off / BLOCK_BYTES) % 64 === 63) await yieldNow(signal);
    }
  }
  // Self-duplicates of a chunk found in the base share its reference.
  for (let i = 0; i < entries.n; i++) {
    if (entries.kind[i] !== PENDING) continue;
    const first = byDigest.get(entries.digestOf(i))!.index;
    if (entries.kind[first] !== ChunkKind.BASE) continue;
    entries.kind[i] = ChunkKind.BASE;
    entries.refImage[i] = entries.refImage[first]!;
    entries.refIndex[i] = entries.refIndex[first]!;
  }
}
