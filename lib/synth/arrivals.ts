/**
 * Which overlay chunks of a launch VM have arrived, and the guest reads
 * waiting for the rest: the blocking half of early start.
 *
 * Every overlay chunk starts MISSING in its image's chunk map, tagged with
 * the segment that carries it. A FUSE read that covers MISSING chunks is
 * held (the ImageFile's read gate): each segment it needs is reported once
 * through `demand`, and the read goes on when the last of its chunks has
 * been marked present, never before. Pure state and callbacks, no I/O, so
 * the blocking rules are testable without FUSE or a VM.
 */
import { VmsynthError } from '../core/errors.js';
import { ChunkSource, type ChunkMap } from '../fs/chunk-map.js';
import type { ReadGate } from '../fs/image.js';
import { chunkKey, chunkOfKey } from '../overlay/format.js';

interface Waiter {
  remaining: number;
  since: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export interface BlockedReadStats {
  /** Reads that had to wait for at least one chunk. */
  count: number;
  totalMs: number;
  maxMs: number;
  p50Ms: number;
  p90Ms: number;
}

/** The guest reads held at one moment: what a session that hangs is waiting for. */
export interface HeldReads {
  reads: number;
  /** How long the oldest held read has waited. */
  oldestMs: number;
  /** The segments they wait for, ascending (at most 20); -1 would be a chunk no longer missing whose read was not woken. */
  segments: number[];
}

/** Told of every change to the chunk maps (a keeper process serving the images mirrors them). */
export interface ArrivalsObserver {
  arrived(image: number, index: number, source: ChunkSource): void;
  redirected(image: number, index: number, segment: number): void;
}

/** The chunk maps' state, to hand to another process and back. */
export interface ArrivalsState {
  /** Per image, each chunk's source (ChunkMap.toBytes). */
  sources: Uint8Array[];
  /** Per image, the segment each MISSING chunk waits for (-1 otherwise). */
  segmentOf: Int32Array[];
}

export class ChunkArrivals {
  /** Told of each chunk that arrives or is redirected, after the change. */
  observer: ArrivalsObserver | null = null;
  /** Per image, per chunk: the segment that carries it while it is MISSING (-1 otherwise). */
  private readonly segmentOf: Int32Array[];
  /** Per image, chunks still MISSING: at 0 the gate lets every read through without a scan. */
  private readonly missing: number[];
  private readonly waiters = new Map<number, Waiter[]>();
  private readonly waits: number[] = [];
  private failure: Error | null = null;

  constructor(
    readonly maps: readonly ChunkMap[],
    /** Called once per held read for each segment it needs that is not present. */
    private readonly demand: (segment: number) => void,
    /** Called when a held read goes on, with how long it waited. */
    private readonly unblocked: (ms: number) => void = () => undefined,
  ) {
    this.segmentOf = maps.map((m) => new Int32Array(m.chunkCount).fill(-1));
    this.missing = maps.map(() => 0);
  }

  /** Marks an overlay chunk as not yet arrived, carried by `segment`. */
  expect(image: number, index: number, segment: number): void {
    if (!this.isMissing(image, index)) this.missing[image]!++;
    this.maps[image]!.set(index, ChunkSource.MISSING);
    this.segmentOf[image]![index] = segment;
  }

  /**
   * A MISSING chunk will now come with another segment (a SELF reference
   * waiting for its target's). Reads already held on it asked for the old
   * segment, which has landed: ask for the new one on their behalf, or in
   * demand-only nothing would ever bring it.
   */
  redirect(image: number, index: number, segment: number): void {
    if (this.maps[image]!.get(index) !== ChunkSource.MISSING) return;
    this.segmentOf[image]![index] = segment;
    this.observer?.redirected(image, index, segment);
    if (segment >= 0 && this.waiters.has(chunkKey(image, index))) this.demand(segment);
  }

  /** The maps and what each missing chunk waits for (copies). */
  state(): ArrivalsState {
    return { sources: this.maps.map((m) => m.toBytes()), segmentOf: this.segmentOf.map((a) => a.slice()) };
  }

  /** Takes over `state` (another process's, or a spec's); held reads are not touched. */
  load(state: ArrivalsState): void {
    this.maps.forEach((m, i) => {
      const seg = state.segmentOf[i];
      if (!seg || seg.length !== m.chunkCount)
        throw new VmsynthError(
          'VMS_INTERNAL',
          `image ${i}: ${seg?.length ?? 0} segment entries for ${m.chunkCount} chunks`,
        );
      m.load(state.sources[i]!);
      this.segmentOf[i]!.set(seg);
      this.missing[i] = m.count(ChunkSource.MISSING);
    });
  }

  /** The segment a MISSING chunk waits for (-1 when present). */
  segmentFor(image: number, index: number): number {
    return this.segmentOf[image]![index]!;
  }

  /** Overlay chunks not arrived yet, both images. */
  get missingChunks(): number {
    return this.missing.reduce((a, b) => a + b, 0);
  }

  isMissing(image: number, index: number): boolean {
    return this.maps[image]!.get(index) === ChunkSource.MISSING;
  }

  /** The chunk is now servable from `source` (OVERLAY or ZERO): wakes the reads that waited only for it. */
  arrived(image: number, index: number, source: ChunkSource): void {
    if (this.isMissing(image, index)) this.missing[image]!--;
    this.maps[image]!.set(index, source);
    this.segmentOf[image]![index] = -1;
    this.observer?.arrived(image, index, source);
    const k = chunkKey(image, index);
    const list = this.waiters.get(k);
    if (!list) return;
    this.waiters.delete(k);
    const now = performance.now();
    for (const w of list) {
      if (--w.remaining === 0) {
        this.waits.push(now - w.since);
        this.unblocked(now - w.since);
        w.resolve();
      }
    }
  }

  /** The read gate for one image. */
  gate(image: number): ReadGate {
    const map = this.maps[image]!;
    const segOf = this.segmentOf[image]!;
    return (offset, length) => {
      if (this.failure) return Promise.reject(this.failure);
      if (this.missing[image] === 0) return undefined;
      const first = Math.floor(offset / map.chunkSize);
      const last = Math.floor((offset + length - 1) / map.chunkSize);
      let missing: number[] | null = null;
      for (let c = first; c <= last; c++) {
        if (map.get(c) === ChunkSource.MISSING) (missing ??= []).push(c);
      }
      if (!missing) return undefined;
      return new Promise<void>((resolve, reject) => {
        const w: Waiter = { remaining: missing.length, since: performance.now(), resolve, reject };
        const asked = new Set<number>();
        for (const c of missing) {
          const k = chunkKey(image, c);
          const list = this.waiters.get(k);
          if (list) list.push(w);
          else this.waiters.set(k, [w]);
          const s = segOf[c]!;
          if (s >= 0 && !asked.has(s)) {
            asked.add(s);
            this.demand(s);
          }
        }
      });
    };
  }

  /** Every segment a held read waits for (unordered, each once). */
  waitingSegments(): number[] {
    const out = new Set<number>();
    for (const k of this.waiters.keys()) {
      const { image, index } = chunkOfKey(k);
      const s = this.segmentOf[image]![index]!;
      if (s >= 0) out.add(s);
    }
    return [...out];
  }

  /** Reads waiting now. */
  get waiting(): number {
    return this.heldReads().size;
  }

  /** The reads held now, how long the oldest has waited and the segments they wait for. */
  held(): HeldReads {
    const reads = this.heldReads();
    const now = performance.now();
    let oldest = 0;
    for (const w of reads) oldest = Math.max(oldest, now - w.since);
    const segments = new Set<number>();
    for (const k of this.waiters.keys()) {
      const { image, index } = chunkOfKey(k);
      segments.add(this.segmentOf[image]![index]!);
    }
    return {
      reads: reads.size,
      oldestMs: Math.round(oldest),
      segments: [...segments].sort((a, b) => a - b).slice(0, 20),
    };
  }

  /** Each held read once (a read waiting for several chunks is listed under each). */
  private heldReads(): Set<Waiter> {
    const all = new Set<Waiter>();
    for (const list of this.waiters.values()) for (const w of list) all.add(w);
    return all;
  }

  /** Fails every held read and every later one (teardown: QEMU gets EIO instead of hanging FUSE). */
  failAll(err: Error = new VmsynthError('VMS_INTERRUPTED', 'the synthesis session ended')): void {
    this.failure ??= err;
    const all = this.heldReads();
    this.waiters.clear();
    for (const w of all) w.reject(this.failure);
  }

  stats(): BlockedReadStats {
    const sorted = [...this.waits].sort((a, b) => a - b);
    const at = (q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : 0);
    const round = (x: number) => Math.round(x * 10) / 10;
    return {
      count: sorted.length,
      totalMs: round(sorted.reduce((a, b) => a + b, 0)),
      maxMs: round(sorted.at(-1) ?? 0),
      p50Ms: round(at(0.5)),
      p90Ms: round(at(0.9)),
    };
  }
}
