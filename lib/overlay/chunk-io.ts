/**
 * Chunk-level helpers shared by the overlay builder and applier: reading
 * images block by block or chunk by chunk (synchronously: both are CPU-bound
 * batch jobs with their own process), zero tests, XOR, and digests.
 */
import { hash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, writeSync, writevSync } from 'node:fs';
import { VmsynthError } from '../core/errors.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';

export const ZERO_CHUNK: Buffer = Buffer.alloc(CHUNK_SIZE);
export const ZERO_DIGEST: Buffer = sha256(ZERO_CHUNK);
export const BLOCK_BYTES = 1 << 20;

export function sha256(data: Uint8Array): Buffer {
  return hash('sha256', data, 'buffer');
}

export function isZero(buf: Buffer, offset = 0): boolean {
  return buf.compare(ZERO_CHUNK, 0, CHUNK_SIZE, offset, offset + CHUNK_SIZE) === 0;
}

/** out = a XOR b, one chunk, 32 bits at a time. */
export function xorInto(out: Uint8Array, a: Uint8Array, b: Uint8Array): void {
  xorAt(out, 0, a, 0, b, 0);
}

/**
 * out[o..] = a[ao..] XOR b[bo..], one chunk: the offsets spare the hot paths
 * a subarray (a Buffer object) per operand.
 */
export function xorAt(out: Uint8Array, o: number, a: Uint8Array, ao: number, b: Uint8Array, bo: number): void {
  const po = out.byteOffset + o,
    pa = a.byteOffset + ao,
    pb = b.byteOffset + bo;
  if ((po | pa | pb) % 4 === 0) {
    // Whole-buffer views indexed by offset: a new view per chunk costs 3-5x the XOR itself.
    const O = words(out.buffer),
      X = words(a.buffer),
      Y = words(b.buffer);
    for (let i = po >> 2, x = pa >> 2, y = pb >> 2, e = i + CHUNK_SIZE / 4; i < e; i++, x++, y++) O[i] = X[x]! ^ Y[y]!;
    return;
  }
  for (let i = 0; i < CHUNK_SIZE; i++) out[o + i] = a[ao + i]! ^ b[bo + i]!;
}

const views = new WeakMap<ArrayBufferLike, Int32Array>();

/** An Int32Array over a whole ArrayBuffer, cached. */
function words(ab: ArrayBufferLike): Int32Array {
  let v = views.get(ab);
  if (!v) {
    v = new Int32Array(ab, 0, ab.byteLength >> 2);
    views.set(ab, v);
  }
  return v;
}

/** Number of zero 32-bit words in a chunk: the builder's measure of how compressible a payload is. */
export function zeroWords(c: Uint8Array): number {
  let n = 0;
  if (c.byteOffset % 4 === 0) {
    const w = words(c.buffer);
    for (let i = c.byteOffset >> 2, e = i + CHUNK_SIZE / 4; i < e; i++) if (w[i] === 0) n++;
    return n;
  }
  for (let i = 0; i < CHUNK_SIZE; i += 4) if ((c[i]! | c[i + 1]! | c[i + 2]! | c[i + 3]!) === 0) n++;
  return n;
}

/**
 * A file opened for positional chunk I/O, with a one-block read cache for
 * sequential access through chunk(). Writes bypass the cache: a file
 * that is written is read with readAt().
 */
export class ChunkFile {
  readonly fd: number;
  readonly bytes: number;
  private readonly block: Buffer = Buffer.allocUnsafeSlow(BLOCK_BYTES);
  private blockStart = -1;
  private blockLen = 0;

  constructor(
    readonly file: string,
    flags: 'r' | 'r+' = 'r',
  ) {
    try {
      this.fd = openSync(file, flags);
    } catch (err) {
      throw new VmsynthError(
        'VMS_USAGE',
        `cannot open ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        { cause: err },
      );
    }
    this.bytes = fstatSync(this.fd).size;
  }

  /** Reads exactly buf.length bytes at `offset` (zeros past the end of the file). */
  readAt(buf: Uint8Array, offset: number): void {
    let done = 0;
    while (done < buf.length) {
      const n = readSync(this.fd, buf, done, buf.length - done, offset + done);
      if (n === 0) {
        buf.fill(0, done);
        return;
      }
      done += n;
    }
  }

  /** A view of chunk `index`, valid until the next call (served from a cached 1 MiB block). */
  chunk(index: number): Buffer {
    const at = this.cached(index);
    return this.block.subarray(at, at + CHUNK_SIZE);
  }

  /** The cached block chunk() serves from (valid until the next call). */
  get cache(): Buffer {
    return this.block;
  }

  /** Makes chunk `index` resident in `cache`; returns where it starts there. */
  cached(index: number): number {
    const off = index * CHUNK_SIZE;
    if (off < this.blockStart || off + CHUNK_SIZE > this.blockStart + this.blockLen) {
      this.blockStart = off - (off % BLOCK_BYTES);
      this.blockLen = Math.min(BLOCK_BYTES, Math.max(CHUNK_SIZE, this.bytes - this.blockStart));
      this.readAt(this.block.subarray(0, this.blockLen), this.blockStart);
    }
    return off - this.blockStart;
  }

  writeAt(buf: Uint8Array, offset: number): void {
    let done = 0;
    while (done < buf.length) done += writeSync(this.fd, buf, done, buf.length - done, offset + done);
  }

  /** Writes `bufs` back to back at `offset`: one pwritev, unless the kernel takes less (then the rest in plain writes). */
  writevAt(bufs: Uint8Array[], offset: number): void {
    const len = bufs.reduce((n, b) => n + b.length, 0);
    const done = writevSync(this.fd, bufs, offset);
    if (done < len) this.writeAt(Buffer.concat(bufs).subarray(done), offset + done);
  }

  close(): void {
    closeSync(this.fd);
  }
}
