/**
 * The launch VM's disk and memory images while its overlay streams in:
 * chunk maps over base | received overlay chunks | zeros, the files received
 * chunks are applied into (sparse, one per image, at the image's own
 * offsets), the arrivals that hold guest reads of missing chunks, and the
 * segment pipeline. No VM and no network: a session mounts the images and
 * feeds `apply`; tests do the same without a guest.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { Scope } from '../core/scope.js';
import { ChunkMap, ChunkSource } from '../fs/chunk-map.js';
import { ImageMount, type MountOptions } from '../fs/fuse-images.js';
import { fileReader, ImageFile, zeroReader } from '../fs/image.js';
import type { OverlayBody } from '../overlay/format.js';
import { readRecord } from '../overlay/records.js';
import { ChunkArrivals, type BlockedReadStats, type HeldReads } from './arrivals.js';
import { SegmentPipeline } from './segment-pipeline.js';

export interface LaunchImageOptions {
  body: OverlayBody;
  /** Base image files, memory then disk. */
  base: [string, string];
  /** Where the files of received chunks go. */
  dir: string;
  /** A guest read needs this segment. */
  demand: (segment: number) => void;
  /** A held guest read went on after waiting this long. */
  unblocked?: (ms: number) => void;
  /** Worker threads for verify + decompress + apply. */
  threads: number;
}

/** Where a launch VM's images are mounted. */
export interface MountedImages {
  mountpoint: string;
  memory: string;
  disk: string;
}

export class LaunchImages {
  private constructor(
    private readonly arrivals: ChunkArrivals,
    readonly memory: ImageFile,
    readonly disk: ImageFile,
    private readonly pipeline: SegmentPipeline,
  ) {}

  /** Creates the files and the pipeline; everything is released by `scope`. */
  static async create(opts: LaunchImageOptions, scope: Scope): Promise<LaunchImages> {
    const { body } = opts;
    const maps = [new ChunkMap(body.base.memory.bytes), new ChunkMap(body.base.disk.bytes)];
    const arrivals = new ChunkArrivals(maps, opts.demand, opts.unblocked);
    body.segments.forEach((s, si) => {
      for (let i = 0; i < s.count; i++) {
        const r = readRecord(s.chunks, i);
        arrivals.expect(r.image, r.index, si);
      }
    });
    const handles: FileHandle[] = [];
    scope.defer('close the image files', () => Promise.all(handles.map((h) => h.close())));
    const open = async (file: string, flags: string) => {
      const h = await fsp.open(file, flags);
      handles.push(h);
      return h;
    };
    const received = [`${opts.dir}/memory.received`, `${opts.dir}/disk.received`];
    const receivedHandles = [await open(received[0]!, 'w+'), await open(received[1]!, 'w+')];
    await receivedHandles[0]!.truncate(body.base.memory.bytes);
    await receivedHandles[1]!.truncate(body.base.disk.bytes);
    const baseHandles = [await open(opts.base[0], 'r'), await open(opts.base[1], 'r')];
    const image = (i: number, name: string) =>
      new ImageFile(
        name,
        maps[i]!,
        {
          [ChunkSource.BASE]: fileReader(baseHandles[i]!, opts.base[i]!),
          [ChunkSource.ZERO]: zeroReader,
          [ChunkSource.OVERLAY]: fileReader(receivedHandles[i]!, received[i]!),
        },
        undefined,
        arrivals.gate(i),
      );
    const pipeline = new SegmentPipeline({
      segments: body.segments,
      base: [...opts.base],
      received,
      receivedHandles,
      arrivals,
      threads: opts.threads,
    });
    scope.defer('stop the apply workers', () => pipeline.close());
    return new LaunchImages(arrivals, image(0, 'memory.img'), image(1, 'disk.img'), pipeline);
  }

  /**
   * Mounts both images (memory.img, disk.img) at `mountpoint`. When `scope`
   * closes, held guest reads fail first (QEMU gets EIO instead of hanging
   * the unmount), then the mount goes.
   */
  async mount(mountpoint: string, opts: MountOptions, scope: Scope): Promise<MountedImages> {
    const mount = await ImageMount.mount(mountpoint, [this.memory, this.disk], opts);
    scope.defer(`unmount ${mount.mountpoint}`, () => mount.unmount());
    scope.defer('fail held guest reads', () => this.failHeldReads());
    return { mountpoint: mount.mountpoint, memory: mount.path('memory.img'), disk: mount.path('disk.img') };
  }

  /**
   * Verifies, decompresses and applies segment `index` as received; resolves
   * when its chunks are servable, rejects with VMS_OVERLAY_CORRUPT when it
   * does not check out (nothing of it is marked present then). `rebuilt`:
   * raw bytes rebuilt by chunk lookaside, checked chunk by chunk.
   */
  apply(index: number, data: Buffer, priority: number, rebuilt = false): Promise<void> {
    return this.pipeline.apply(index, data, priority, rebuilt);
  }

  /** A guest read now waits for segment `index`, received and still queued: move it ahead. */
  promote(index: number): boolean {
    return this.pipeline.promote(index);
  }

  /** Segments applied so far. */
  get appliedSegments(): number {
    return this.pipeline.appliedSegments;
  }

  /** Fails every held guest read and every later one (teardown). */
  failHeldReads(err?: Error): void {
    this.arrivals.failAll(err);
  }

  /** The guest reads held now. */
  heldReads(): HeldReads {
    return this.arrivals.held();
  }

  /** Guest reads held now (each counted once). */
  get waitingReads(): number {
    return this.arrivals.waiting;
  }

  /** How long guest reads that had to wait waited. */
  blockedReads(): BlockedReadStats {
    return this.arrivals.stats();
  }

  /** Whether chunk `index` of image `image` (0 memory, 1 disk) has not arrived yet. */
  isMissing(image: number, index: number): boolean {
    return this.arrivals.isMissing(image, index);
  }
}
