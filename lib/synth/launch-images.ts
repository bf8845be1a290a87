/**
 * The launch VM's disk and memory images while its overlay streams in:
 * chunk maps over base | received overlay chunks | zeros, the files received
 * chunks are applied into (sparse, one per image, at the image's own
 * offsets), the arrivals that hold guest reads of missing chunks, and the
 * segment pipeline. No VM and no network: a session mounts the images and
 * feeds `apply`; tests do the same without a guest.
 *
 * Mounted here, in this process, or by a keeper process (keeper.ts) that
 * outlives it: then the chunk maps here are the mirror the pipeline marks,
 * every change goes to the keeper, and held reads are the keeper's. A
 * server that starts adopts a keeper a previous one left (`adopt`).
 */
import { appendFileSync, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { VmsynthError } from '../core/errors.js';
import type { Scope } from '../core/scope.js';
import { ChunkMap, ChunkSource } from '../fs/chunk-map.js';
import { checkFuseDevice, ImageMount, type MountOptions } from '../fs/fuse-images.js';
import { fileReader, ImageFile, zeroReader } from '../fs/image.js';
import type { OverlayBody, SegmentInfo } from '../overlay/format.js';
import { readRecord } from '../overlay/records.js';
import { ChunkArrivals, type BlockedReadStats, type HeldReads } from './arrivals.js';
import { KeeperLink } from './keeper-link.js';
import type { KeeperPool } from './keeper-pool.js';
import { bytesU32, int32Bytes, u32Bytes, type KeeperSpec } from './keeper-wire.js';
import { SegmentPipeline } from './segment-pipeline.js';

/** The chunks delta segments brought, kept for an adopting server: u32 each, the disk's with bit 31 set. */
const DELTA_CHUNKS_FILE = 'delta.chunks';

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
  /** Mount in a keeper process that outlives this one (the server does); else in this process. */
  keeper?: { session: string; domain: string; graceMs: number; pool?: KeeperPool };
  /** Adopt the keeper a previous server left in `dir`: its maps, its mount, the files it serves. */
  adopt?: boolean;
}

/** Where a launch VM's images are mounted. */
export interface MountedImages {
  mountpoint: string;
  memory: string;
  disk: string;
}

export class LaunchImages {
  private link: KeeperLink | null = null;
  /** The segments an adopted keeper had applied. */
  adoptedSegments: number[] = [];
  /** Per image, the chunks a handoff's delta segments brought (what a later handoff must send too). */
  private readonly fromDelta = [new Set<number>(), new Set<number>()];

  private constructor(
    private readonly opts: LaunchImageOptions,
    private readonly arrivals: ChunkArrivals,
    readonly memory: ImageFile,
    readonly disk: ImageFile,
    private readonly pipeline: SegmentPipeline,
    /** The overlay's segments, then a handoff's delta segments as they are announced. */
    private readonly segments: SegmentInfo[],
    /** Memory and disk as a handoff's passes read them: the same maps, without the guest's counters or gate (read only complete images). */
    readonly views: [ImageFile, ImageFile],
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
    const flags = opts.adopt ? 'r+' : 'w+';
    const receivedHandles = [await open(received[0]!, flags), await open(received[1]!, flags)];
    if (!opts.adopt) {
      await receivedHandles[0]!.truncate(body.base.memory.bytes);
      await receivedHandles[1]!.truncate(body.base.disk.bytes);
    }
    const baseHandles = [await open(opts.base[0], 'r'), await open(opts.base[1], 'r')];
    const readers = (i: number) => ({
      [ChunkSource.BASE]: fileReader(baseHandles[i]!, opts.base[i]!),
      [ChunkSource.ZERO]: zeroReader,
      [ChunkSource.OVERLAY]: fileReader(receivedHandles[i]!, received[i]!),
    });
    const image = (i: number, name: string) => new ImageFile(name, maps[i]!, readers(i), undefined, arrivals.gate(i));
    const segments = [...body.segments];
    const pipeline = new SegmentPipeline({
      segments,
      base: [...opts.base],
      received,
      receivedHandles,
      arrivals,
      threads: opts.threads,
    });
    scope.defer('stop the apply workers', () => pipeline.close());
    const launch = new LaunchImages(opts, arrivals, image(0, 'memory.img'), image(1, 'disk.img'), pipeline, segments, [
      new ImageFile('memory.img', maps[0]!, readers(0)),
      new ImageFile('disk.img', maps[1]!, readers(1)),
    ]);
    if (opts.adopt) await launch.adoptKeeper(scope);
    return launch;
  }

  private keeperEvents() {
    return {
      demand: (segment: number) => this.opts.demand(segment),
      unblocked: (ms: number) => this.opts.unblocked?.(ms),
    };
  }

  /** Connects to the keeper a previous server left and takes over its maps and applied segments. */
  private async adoptKeeper(scope: Scope): Promise<void> {
    const kept = await fsp.readFile(this.deltaFile).catch(() => Buffer.alloc(0));
    for (const k of bytesU32(kept)) this.fromDelta[k >= 2 ** 31 ? 1 : 0]!.add(k % 2 ** 31);
    const got = await KeeperLink.adopt(this.opts.dir, this.keeperEvents());
    if (!got) throw new VmsynthError('VMS_SESSION_GONE', `no live keeper serves the images in ${this.opts.dir}`);
    this.arrivals.load(got.state);
    this.adoptedSegments = got.state.applied;
    this.useKeeper(got.link, scope);
    await this.pipeline.adopt(got.state.applied);
  }

  private useKeeper(link: KeeperLink, scope: Scope): void {
    this.link = link;
    this.arrivals.observer = link;
    // Steps run newest first: on close, held reads fail, then the keeper ends (unmount, exit),
    // and letting go finds nothing left to let go of; on release, only letting go runs.
    scope.defer('let go of the keeper', () => link.detach());
    scope.defer(`end the keeper of ${this.mountpoint}`, () => link.close(this.mountpoint), { lasting: true });
    scope.defer('fail held guest reads', () => this.failHeldReads(), { lasting: true });
  }

  /** The keeper's process id, when a keeper serves the images. */
  get keeperPid(): number | null {
    return this.link?.pid ?? null;
  }

  private get mountpoint(): string {
    return path.join(this.opts.dir, 'mnt');
  }

  /** The images' paths once mounted (an adopted keeper's mount). */
  mounted(): MountedImages {
    const mp = this.mountpoint;
    return { mountpoint: mp, memory: path.join(mp, 'memory.img'), disk: path.join(mp, 'disk.img') };
  }

  /**
   * Mounts both images (memory.img, disk.img) at `mountpoint`. When `scope`
   * closes, held guest reads fail first (QEMU gets EIO instead of hanging
   * the unmount), then the mount goes.
   */
  async mount(mountpoint: string, opts: MountOptions, scope: Scope): Promise<MountedImages> {
    const keeper = this.opts.keeper;
    if (keeper) {
      const { pool, ...k } = keeper;
      if (path.resolve(mountpoint) !== this.mountpoint)
        throw new VmsynthError('VMS_INTERNAL', `a keeper mounts at ${this.mountpoint}, not ${mountpoint}`);
      await checkFuseDevice(opts.fuseDevice);
      // Changes from here on reach the keeper: queued until it listens, after the state it starts from.
      const link = KeeperLink.create(this.keeperEvents());
      this.arrivals.observer = link;
      const state = this.arrivals.state();
      const { body } = this.opts;
      const spec: KeeperSpec = {
        ...k,
        mountpoint: this.mountpoint,
        base: this.opts.base,
        received: [`${this.opts.dir}/memory.received`, `${this.opts.dir}/disk.received`],
        sizes: [body.base.memory.bytes, body.base.disk.bytes],
        sources: [state.sources[0]!, state.sources[1]!],
        segmentOf: [int32Bytes(state.segmentOf[0]!), int32Bytes(state.segmentOf[1]!)],
      };
      try {
        await link.start(this.opts.dir, spec, pool);
      } catch (err) {
        this.arrivals.observer = null;
        throw err;
      }
      this.useKeeper(link, scope);
      return this.mounted();
    }
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
  async apply(index: number, data: Buffer, priority: number, rebuilt = false): Promise<void> {
    await this.pipeline.apply(index, data, priority, rebuilt);
    this.link?.applied(index);
  }

  /**
   * Announces a handoff's delta segment `index` (numbered after the
   * overlay's): its chunks are missing from now on, and a guest read of one
   * waits for it (and asks for it through `demand`) until `apply` brings it.
   * Announce a pass's segments only once the previous pass is applied.
   */
  expectDelta(index: number, info: SegmentInfo): void {
    if (index < this.opts.body.segments.length || this.segments[index])
      throw new VmsynthError('VMS_INTERNAL', `delta segment ${index} is not new`);
    this.segments[index] = info;
    const byImage: number[][] = [[], []];
    for (let i = 0; i < info.count; i++) {
      const r = readRecord(info.chunks, i);
      this.arrivals.expect(r.image, r.index, index);
      this.fromDelta[r.image]!.add(r.index);
      byImage[r.image]!.push(r.index);
    }
    byImage.forEach((chunks, image) => chunks.length > 0 && this.link?.expected(image, index, chunks));
    // Kept in the run directory: a server that adopts this session must still send them in a later handoff.
    appendFileSync(this.deltaFile, u32Bytes(byImage.flatMap((c, image) => c.map((i) => image * 2 ** 31 + i))));
  }

  private get deltaFile(): string {
    return path.join(this.opts.dir, DELTA_CHUNKS_FILE);
  }

  /** Per image, ascending: the chunks delta segments brought (a handoff from here sends them too). */
  deltaChunks(): [number[], number[]] {
    const sorted = (s: Set<number>) => [...s].sort((a, b) => a - b);
    return [sorted(this.fromDelta[0]!), sorted(this.fromDelta[1]!)];
  }

  /** The overlay's segment count: delta segments are numbered from here. */
  get overlaySegments(): number {
    return this.opts.body.segments.length;
  }

  /** Segment `index`'s entry: the overlay's, or a delta segment's once announced. */
  segmentInfo(index: number): SegmentInfo | undefined {
    return this.segments[index];
  }

  /** The base's image files, memory then disk. */
  get baseFiles(): readonly [string, string] {
    return this.opts.base;
  }

  /** Overlay and delta chunks not arrived yet, both images. */
  get missingChunks(): number {
    return this.arrivals.missingChunks;
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
    this.link?.fail();
    this.arrivals.failAll(err);
  }

  /** The guest reads held now (a keeper's: as of its last report, at most 0.1 s old). */
  heldReads(): HeldReads {
    return this.link?.held ?? this.arrivals.held();
  }

  /** Guest reads held now (each counted once). */
  get waitingReads(): number {
    return this.link ? this.link.held.reads : this.arrivals.waiting;
  }

  /** How long guest reads that had to wait waited (a keeper's: since it started). */
  blockedReads(): BlockedReadStats {
    return this.link?.blocked ?? this.arrivals.stats();
  }

  /** Whether chunk `index` of image `image` (0 memory, 1 disk) has not arrived yet. */
  isMissing(image: number, index: number): boolean {
    return this.arrivals.isMissing(image, index);
  }
}
