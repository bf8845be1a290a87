/**
 * The synthesis server's segment pipeline: segments applied as they arrive,
 * in whatever order they come, through the verify ‖ decompress ‖ apply
 * stages of the one apply path (overlay/apply-segment.ts, on workers).
 *
 * Received segments wait in a p-queue whose priority puts segments a guest
 * read is blocked on ahead of background ones; as many run at once as there
 * are worker threads. A worker checks the segment's SHA-256, decompresses it
 * and writes its payload chunks and base references into the session's
 * files of received chunks (sparse, one per image, at the image's own
 * offsets). This thread — the one that answers FUSE — then only marks
 * chunks present: zero chunks need no bytes (the map says ZERO), and a SELF reference is copied from its target, or, when the
 * target's segment has not arrived yet (a demand fetch ran ahead of it),
 * waits for it and is redirected to that segment.
 */
import type { FileHandle } from 'node:fs/promises';
import PQueue from 'p-queue';
import { CHUNK_SIZE, ChunkSource } from '../fs/chunk-map.js';
import { chunkKey, ChunkKind, type SegmentInfo } from '../overlay/format.js';
import { readRecord } from '../overlay/records.js';
import { SegmentWorkers } from '../overlay/segment-workers.js';
import type { ChunkArrivals } from './arrivals.js';

export const Priority = { BACKGROUND: 0, DEMAND: 10 } as const;

export interface SegmentPipelineOptions {
  segments: readonly SegmentInfo[];
  /** Base image files, memory then disk. */
  base: string[];
  /** The files received chunks are applied into (sparse, image-sized), memory then disk. */
  received: string[];
  /** Open handles on them, for SELF copies on this thread. */
  receivedHandles: FileHandle[];
  arrivals: ChunkArrivals;
  threads: number;
}

export class SegmentPipeline {
  private readonly workers: SegmentWorkers;
  private readonly queue: PQueue;
  /** SELF chunks waiting for their target: target key → dependents. */
  private readonly dependents = new Map<number, { image: number; index: number }[]>();
  appliedSegments = 0;

  constructor(private readonly opts: SegmentPipelineOptions) {
    const threads = Math.max(1, opts.threads);
    this.workers = new SegmentWorkers(threads, { base: opts.base, out: opts.received });
    this.queue = new PQueue({ concurrency: threads });
  }

  /**
   * Verifies, decompresses and applies segment `index` (`rebuilt`: raw
   * bytes rebuilt by chunk lookaside, checked chunk by chunk); resolves when its
   * chunks are servable. Rejects with VMS_OVERLAY_CORRUPT when it does not
   * match its hash (nothing of it is marked present then).
   */
  apply(index: number, data: Buffer, priority: number, rebuilt = false): Promise<void> {
    return this.queue.add(
      async () => {
        const s = this.opts.segments[index]!;
        if (rebuilt) await this.workers.applyRebuilt(index, s, data);
        else await this.workers.apply(index, s, data);
        await this.markPresent(s);
        this.appliedSegments++;
      },
      { priority, id: String(index), throwOnTimeout: true },
    );
  }

  /**
   * Takes over segments another process applied (a keeper's maps were loaded into the arrivals):
   * their SELF chunks still waiting for a target wait for it here again, and one whose target
   * arrived but whose copy a crash cut short is copied now.
   */
  async adopt(applied: readonly number[]): Promise<void> {
    const arrivals = this.opts.arrivals;
    for (const index of applied) {
      const s = this.opts.segments[index];
      if (!s) continue;
      this.appliedSegments++;
      for (let i = 0; i < s.count; i++) {
        const r = readRecord(s.chunks, i);
        if (r.kind !== ChunkKind.SELF || !arrivals.isMissing(r.image, r.index)) continue;
        if (!arrivals.isMissing(r.refImage, r.refIndex)) {
          await this.copy(r.refImage, r.refIndex, r.image, r.index);
          continue;
        }
        const k = chunkKey(r.refImage, r.refIndex);
        const list = this.dependents.get(k);
        if (list) list.push({ image: r.image, index: r.index });
        else this.dependents.set(k, [{ image: r.image, index: r.index }]);
      }
    }
  }

  /** A guest read now waits for segment `index`, already received and still queued: move it ahead. */
  promote(index: number): boolean {
    try {
      this.queue.setPriority(String(index), Priority.DEMAND);
      return true;
    } catch {
      return false; // already running or done
    }
  }

  private async markPresent(s: SegmentInfo): Promise<void> {
    const arrivals = this.opts.arrivals;
    for (let i = 0; i < s.count; i++) {
      const r = readRecord(s.chunks, i);
      if (r.kind === ChunkKind.SELF) {
        if (arrivals.isMissing(r.refImage, r.refIndex)) {
          const k = chunkKey(r.refImage, r.refIndex);
          const list = this.dependents.get(k);
          if (list) list.push({ image: r.image, index: r.index });
          else this.dependents.set(k, [{ image: r.image, index: r.index }]);
          arrivals.redirect(r.image, r.index, arrivals.segmentFor(r.refImage, r.refIndex));
        } else {
          await this.copy(r.refImage, r.refIndex, r.image, r.index);
        }
      } else {
        await this.present(r.image, r.index, r.kind === ChunkKind.ZERO ? ChunkSource.ZERO : ChunkSource.OVERLAY);
      }
    }
  }

  /** Marks a chunk present, then fills the SELF chunks that waited for it. */
  private async present(image: number, index: number, source: ChunkSource): Promise<void> {
    this.opts.arrivals.arrived(image, index, source);
    const k = chunkKey(image, index);
    const deps = this.dependents.get(k);
    if (!deps) return;
    this.dependents.delete(k);
    for (const d of deps) await this.copy(image, index, d.image, d.index);
  }

  private async copy(fromImage: number, fromIndex: number, image: number, index: number): Promise<void> {
    const h = this.opts.receivedHandles;
    const buf = Buffer.allocUnsafe(CHUNK_SIZE); // one per copy: segments are marked concurrently
    await readFull(h[fromImage]!, buf, fromIndex * CHUNK_SIZE);
    await h[image]!.write(buf, 0, CHUNK_SIZE, index * CHUNK_SIZE);
    await this.present(image, index, ChunkSource.OVERLAY);
  }

  /** Waits for queued work to settle, then stops the workers. */
  async close(): Promise<void> {
    this.queue.clear();
    await this.queue.onIdle();
    await this.workers.close();
  }
}

async function readFull(h: FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await h.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) {
      buf.fill(0, done);
      return;
    }
    done += bytesRead;
  }
}
