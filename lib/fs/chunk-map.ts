/**
 * Chunk maps: where each 4 KiB chunk of a launch-VM image comes from.
 *
 * A chunk map is pure state (no I/O): one byte per chunk naming its source.
 * The FUSE layer asks it to split a read into runs of chunks with the same
 * source, then serves each run from that source. A base resumed as it is
 * (`vmsynth base resume`) is all BASE; a launch VM being synthesized starts
 * with its overlay chunks MISSING (a read blocks and becomes a demand fetch,
 * synth/arrivals.ts) and turns them OVERLAY, or ZERO, as segments land.
 */
import { VmsynthError } from '../core/errors.js';

export const CHUNK_SIZE = 4096;

export const ChunkSource = {
  /** Same bytes as the base image at the same offset. */
  BASE: 0,
  /** All zeros. */
  ZERO: 1,
  /** Overlay bytes that have arrived and been applied. */
  OVERLAY: 2,
  /** Overlay bytes that have not arrived yet. */
  MISSING: 3,
} as const;
export type ChunkSource = (typeof ChunkSource)[keyof typeof ChunkSource];

/** A byte range of the image whose chunks all share one source. */
export interface Run {
  source: ChunkSource;
  /** Offset in the image. */
  offset: number;
  length: number;
}

export class ChunkMap {
  readonly chunkCount: number;
  private readonly sources: Uint8Array;

  constructor(
    readonly imageBytes: number,
    readonly chunkSize: number = CHUNK_SIZE,
    initial: ChunkSource = ChunkSource.BASE,
  ) {
    if (!Number.isSafeInteger(imageBytes) || imageBytes < 0) {
      throw new VmsynthError('VMS_INTERNAL', `invalid image size ${imageBytes}`);
    }
    if (!Number.isInteger(chunkSize) || chunkSize <= 0 || (chunkSize & (chunkSize - 1)) !== 0) {
      throw new VmsynthError('VMS_INTERNAL', `chunk size must be a power of two, got ${chunkSize}`);
    }
    this.chunkCount = Math.ceil(imageBytes / chunkSize);
    this.sources = new Uint8Array(this.chunkCount).fill(initial);
  }

  get(chunk: number): ChunkSource {
    this.check(chunk);
    return this.sources[chunk] as ChunkSource;
  }

  set(chunk: number, source: ChunkSource): void {
    this.check(chunk);
    this.sources[chunk] = source;
  }

  /** A copy of every chunk's source, one byte each (a keeper process gets and gives back maps so). */
  toBytes(): Uint8Array {
    return this.sources.slice();
  }

  /** Sets every chunk's source from `bytes` (as toBytes gave them). */
  load(bytes: Uint8Array): void {
    if (bytes.length !== this.chunkCount)
      throw new VmsynthError('VMS_INTERNAL', `a chunk map of ${this.chunkCount} chunks cannot load ${bytes.length}`);
    for (const s of bytes) if (s > ChunkSource.MISSING) throw new VmsynthError('VMS_INTERNAL', `no chunk source ${s}`);
    this.sources.set(bytes);
  }

  /** Number of chunks with the given source. */
  count(source: ChunkSource): number {
    let n = 0;
    for (const s of this.sources) if (s === source) n++;
    return n;
  }

  /**
   * Splits the read [offset, offset + length) into maximal runs of chunks
   * that share a source, clamped to the image end. A read past the end
   * yields no runs.
   */
  runs(offset: number, length: number): Run[] {
    const end = Math.min(offset + length, this.imageBytes);
    const out: Run[] = [];
    let pos = offset;
    while (pos < end) {
      const chunk = Math.floor(pos / this.chunkSize);
      const source = this.sources[chunk] as ChunkSource;
      let next = (chunk + 1) * this.chunkSize;
      let c = chunk + 1;
      while (next < end && this.sources[c] === source) {
        next += this.chunkSize;
        c++;
      }
      const runEnd = Math.min(next, end);
      out.push({ source, offset: pos, length: runEnd - pos });
      pos = runEnd;
    }
    return out;
  }

  private check(chunk: number): void {
    if (!Number.isInteger(chunk) || chunk < 0 || chunk >= this.chunkCount) {
      throw new VmsynthError('VMS_INTERNAL', `chunk ${chunk} out of range 0..${this.chunkCount - 1}`);
    }
  }
}
