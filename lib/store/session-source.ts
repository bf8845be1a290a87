/**
 * One synthesis session's view of the cloudlet store, by segment index: which
 * of its overlay's segments the store holds (take them from here instead of
 * asking the client), and where received segments go (admit them, in the
 * background, after they checked out). While the view is open the overlay is
 * leased: none of its segments is evicted.
 *
 * The bytes `take` returns are unverified; the session applies them through
 * the segment pipeline, which checks them against the manifest's SHA-256
 * exactly as a received segment, and calls `reject` when they fail: the entry
 * is dropped and the session asks its client instead.
 *
 * Chunk lookaside (lookaside.ts): a segment the store does not hold whole may
 * still have payloads in stored segments of other overlays; `plan` finds and
 * checks them, and a segment admitted to the store has its chunks indexed.
 */
import PQueue from 'p-queue';
import { publish } from '../core/diagnostics.js';
import { compress } from 'zstd-napi';
import { sha256 } from '../overlay/chunk-io.js';
import { asBuffer } from '../overlay/records.js';
import { checkTable } from '../overlay/thin.js';
import type { Overlay } from '../overlay/reader.js';
import { decompressFrame } from '../overlay/zstd-frame.js';
import { baseKey, chunkRows, planLookaside, readStoredRaw, type LookasidePlan } from './lookaside.js';
import type { SegmentStore } from './segment-store.js';

export interface SessionSourceOptions {
  /** Whether segments received from the client enter the store (config `storeReceived`). */
  admitReceived: boolean;
  /** Admitted bytes waiting to be written, at most; more are skipped (default 64 MiB). */
  maxPendingBytes?: number;
  /** The overlay's manifest as received, kept with it (a handoff to here may name the overlay by id). */
  manifest?: Uint8Array;
}

export class SessionSource {
  private readonly release: () => void;
  private readonly writes = new PQueue({ concurrency: 1 });
  private pendingBytes = 0;
  /** Segments whose stored copy failed (or vanished) this session: asked of the client from now on. */
  private readonly rejected = new Set<number>();
  private closed = false;
  private readonly base: string;
  /** Whether lookaside can find anything: the store named chunks when the session began. */
  readonly lookaside: boolean;
  /** Stored segments lately decompressed for lookaside (neighbouring segments of one overlay often draw on the same ones). */
  private readonly raws = new Map<string, Buffer>();
  /** Segments rebuilt from thin ones, to enter the store when the session ends. */
  private readonly rebuilt: { index: number; raw: Buffer }[] = [];
  private rebuiltBytes = 0;

  constructor(
    private readonly store: SegmentStore,
    private readonly overlay: Overlay,
    private readonly session: string,
    private readonly opts: SessionSourceOptions,
  ) {
    const id = store.addOverlay(overlay, opts.manifest);
    this.release = store.lease(id, `${process.pid}:${session}`);
    this.base = baseKey(overlay.body);
    this.lookaside = store.namesChunks();
  }

  /**
   * Segment `index`'s digest table came from the client: checks it against
   * the signed manifest (throws VMS_OVERLAY_CORRUPT), then finds which of its
   * payloads the store holds. Null: none, send it whole.
   */
  async plan(
    index: number,
    table: Buffer,
    baseChunk: (image: number, index: number) => Buffer,
  ): Promise<LookasidePlan | null> {
    const s = this.overlay.body.segments[index]!;
    checkTable(index, s, table);
    if (this.closed) return null;
    const storedRaw = (sha: Buffer) => this.storedRaw(sha);
    const plan = await planLookaside({ store: this.store, base: this.base, baseChunk, storedRaw }, s, table);
    for (const k of [...this.raws.keys()]) if (!this.store.has(Buffer.from(k, 'hex'))) this.raws.delete(k); // dropped
    return plan;
  }

  private async storedRaw(sha: Buffer): Promise<Buffer | null> {
    const key = sha.toString('hex');
    const hit = this.raws.get(key);
    if (hit) {
      this.raws.delete(key); // most recent last
      this.raws.set(key, hit);
      return hit;
    }
    const raw = await readStoredRaw(this.store, sha);
    if (raw) this.raws.set(key, raw);
    while (this.raws.size > 4) this.raws.delete(this.raws.keys().next().value!);
    return raw;
  }

  /** A thin segment of `chunks` chunks filled from the store checked out and was applied. */
  chunkHit(index: number, chunks: number, bytes: number): void {
    this.store.count('chunkHits', chunks);
    this.store.count('chunkHitBytes', bytes);
    publish('storeChunkHit', { session: this.session, segment: index, chunks, bytes });
  }

  private sha(index: number): Uint8Array {
    return this.overlay.body.segments[index]!.sha256;
  }

  /** Whether the store holds segment `index` (and it has not failed this session). */
  has(index: number): boolean {
    return !this.closed && !this.rejected.has(index) && this.store.has(this.sha(index));
  }

  /** Segment `index`'s stored bytes, unverified, or null (not stored after all: ask the client). */
  async take(index: number): Promise<Buffer | null> {
    const data = await this.store.read(this.sha(index)).catch(() => null);
    if (!data) this.rejected.add(index);
    return data;
  }

  /** Segment `index` came from the store and checked out. */
  hit(index: number, bytes: number): void {
    this.store.count('hits');
    this.store.count('hitBytes', bytes);
    publish('storeHit', { session: this.session, segment: index, bytes });
  }

  /** These segments were asked of the client: the store did not have them. */
  miss(segments: number[]): void {
    this.store.count('misses', segments.length);
    publish('storeMiss', { session: this.session, segments: segments.length });
  }

  /** Segment `index`'s stored bytes failed their check: drop the entry, ask the client. */
  async reject(index: number): Promise<void> {
    this.rejected.add(index);
    await this.store.drop(this.sha(index), 'sha256');
  }

  /** Segment `index`, received and verified, enters the store in the background. */
  admit(index: number, data: Buffer): void {
    const rawBytes = this.overlay.body.segments[index]!.rawBytes;
    this.queueWrite(index, data.length, () => ({ compressed: data, raw: () => decompressFrame(data, rawBytes) }));
  }

  /**
   * Segment `index`, rebuilt from a thin one and verified chunk by chunk
   * (`raw`), enters the store if compressing it again gives the bytes the
   * manifest signs (the same zstd and level as the builder: deterministic).
   * Compressing costs the thread that answers FUSE ~10 ms a MiB, so it waits
   * for the session's end (close).
   */
  admitRebuilt(index: number, raw: Buffer): void {
    const cap = this.opts.maxPendingBytes ?? 64 << 20;
    if (!this.opts.admitReceived || this.closed || this.rebuiltBytes + raw.length > cap) return;
    this.rebuiltBytes += raw.length;
    this.rebuilt.push({ index, raw });
  }

  /**
   * Writes segment `index` to the store in the background, and names its
   * chunks: `make` gives its compressed bytes (null: not fit to store) and its
   * raw bytes; `bytes` count against the cap on pending writes.
   */
  private queueWrite(
    index: number,
    bytes: number,
    make: () => { compressed: Buffer; raw: () => Uint8Array } | null,
  ): void {
    const cap = this.opts.maxPendingBytes ?? 64 << 20;
    if (!this.opts.admitReceived || this.closed || this.pendingBytes + bytes > cap) return;
    this.pendingBytes += bytes;
    void this.writes.add(async () => {
      try {
        const sha = this.sha(index);
        const w = make();
        if (w && ((await this.store.put(sha, w.compressed)) || (this.store.has(sha) && !this.store.chunksIndexed(sha))))
          this.store.indexChunks(sha, this.base, chunkRows(this.overlay.body.segments[index]!, w.raw()));
      } catch (err) {
        publish('cleanupFailed', { what: `store segment ${index} of session ${this.session}`, error: err });
      } finally {
        this.pendingBytes -= bytes;
      }
    });
  }

  /** Waits for admitted segments to be written, then releases the lease. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.rebuiltBytes = 0;
    for (const { index, raw } of this.rebuilt.splice(0)) {
      const s = this.overlay.body.segments[index]!;
      this.queueWrite(index, raw.length, () => {
        const z = compress(raw, { compressionLevel: this.overlay.body.compression.level });
        return sha256(z).equals(asBuffer(s.sha256)) ? { compressed: z, raw: () => raw } : null;
      });
    }
    this.closed = true;
    await this.writes.onIdle();
    this.release();
  }
}
