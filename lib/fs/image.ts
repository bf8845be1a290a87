/**
 * An image file served through FUSE: a chunk map plus one reader per source.
 *
 * read() is the hot path of every guest page fault and disk read. It splits
 * the request by chunk source and fills the caller's buffer; it keeps the
 * counters that tell how much of an image the guest touched (bytes, reads,
 * distinct chunks), and, when given a TouchLog, the order in which chunks
 * were first read (access-order profiling).
 */
import type { FileHandle } from 'node:fs/promises';
import { VmsynthError } from '../core/errors.js';
import { ChunkMap, ChunkSource } from './chunk-map.js';
import type { TouchLog } from './touch-log.js';

/** Fills buf[bufOffset, bufOffset + length) with the image bytes at imageOffset. */
export type RangeReader = (buf: Buffer, bufOffset: number, length: number, imageOffset: number) => Promise<void>;

export interface ImageStats {
  reads: number;
  bytesRead: number;
  /** Distinct chunks read at least once. */
  chunksTouched: number;
}

export interface TouchTrace {
  log: TouchLog;
  /** This image's id in the log. */
  image: number;
}

/**
 * Holds a read until every chunk it covers has a servable source (early
 * start: MISSING chunks wait for their segment). Returns undefined when the
 * read may go ahead at once.
 */
export type ReadGate = (offset: number, length: number) => Promise<void> | undefined;

export class ImageFile {
  readonly stats: ImageStats = { reads: 0, bytesRead: 0, chunksTouched: 0 };
  private readonly touched: Uint8Array;

  constructor(
    readonly name: string,
    readonly map: ChunkMap,
    private readonly readers: Partial<Record<ChunkSource, RangeReader>>,
    private readonly trace?: TouchTrace,
    private readonly gate?: ReadGate,
  ) {
    this.touched = new Uint8Array(map.chunkCount);
  }

  get size(): number {
    return this.map.imageBytes;
  }

  /** Reads up to `length` bytes at `offset` into buf; returns the count (0 at EOF). */
  async read(buf: Buffer, length: number, offset: number): Promise<number> {
    const want = Math.max(0, Math.min(length, buf.length, this.map.imageBytes - offset));
    this.touch(offset, want);
    if (want > 0 && this.gate) {
      const held = this.gate(offset, want);
      if (held) await held;
    }
    const runs = this.map.runs(offset, want);
    let filled = 0;
    for (const run of runs) {
      const reader = this.readers[run.source];
      if (!reader) throw new VmsynthError('VMS_INTERNAL', `${this.name}: no reader for chunk source ${run.source}`);
      await reader(buf, run.offset - offset, run.length, run.offset);
      filled += run.length;
    }
    if (filled > 0) {
      this.stats.reads++;
      this.stats.bytesRead += filled;
    }
    return filled;
  }

  /** Marks the chunks of a read as touched when it arrives (not when it completes: a blocked read counts in request order). */
  private touch(offset: number, length: number): void {
    if (length === 0) return;
    const first = Math.floor(offset / this.map.chunkSize);
    const last = Math.floor((offset + length - 1) / this.map.chunkSize);
    for (let c = first; c <= last; c++) {
      if (this.touched[c] === 0) {
        this.touched[c] = 1;
        this.stats.chunksTouched++;
        this.trace?.log.record(this.trace.image, c);
      }
    }
  }
}

/** A reader serving bytes from a local file at the same offsets (a base image). */
export function fileReader(handle: FileHandle, what: string): RangeReader {
  return async (buf, bufOffset, length, imageOffset) => {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await handle.read(buf, bufOffset + done, length - done, imageOffset + done);
      if (bytesRead === 0) {
        throw new VmsynthError(
          'VMS_BASE_CORRUPT',
          `${what} ended at ${imageOffset + done}, before the size its manifest gives`,
        );
      }
      done += bytesRead;
    }
  };
}

export const zeroReader: RangeReader = (buf, bufOffset, length) => {
  buf.fill(0, bufOffset, bufOffset + length);
  return Promise.resolve();
};
