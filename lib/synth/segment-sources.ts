/**
 * Where a session's segments come from, besides its client: the cloudlet
 * store (segments kept from earlier sessions) first, then the object store
 * the client named (fetched over the server's own link), and otherwise the
 * client, asked with a `want`. It owns the fetches under way and sends what
 * comes back to the session to apply (checked in the segment pipeline like a
 * received segment); a source that fails, or whose bytes fail their check,
 * hands the segment back to be asked of the client.
 *
 * Chunk lookaside, for a segment the client sends after all: when the store
 * names chunks and the client offered it, a background segment's digest
 * table is asked first (`tables`); the payloads the store holds (found and
 * checked by SessionSource.plan) are left out of what the client sends
 * (`thin`), and put back here before the segment is applied, checked chunk
 * by chunk. A guest read that needs a segment whose table is still awaited
 * asks for the segment whole; a thin segment that fails its check is asked
 * for whole.
 *
 * What it costs is a round trip and CPU on both sides (the bench measured
 * its first response 0.3-2.7 s later when it ran from the start), so it
 * opens only once the first response is out (`open`), and where the store
 * holds nothing of this overlay it backs off: after SPARSE_AFTER tables in a
 * row with nothing found, only every PROBE_EVERY-th segment is looked up,
 * and a find goes back to every one.
 */
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { ChunkFile } from '../overlay/chunk-io.js';
import type { SegmentInfo } from '../overlay/format.js';
import { keptSlots, lookasideable, rebuildRaw } from '../overlay/thin.js';
import { decompressFrame } from '../overlay/zstd-frame.js';
import type { LookasidePlan } from '../store/lookaside.js';
import type { ObjectSource } from '../store/object-source.js';
import type { SessionSource } from '../store/session-source.js';
import { Hedges } from './hedges.js';

export type SegmentOrigin = 'client' | 'store' | 'object';

export interface SourceCallbacks {
  /** Segment `index` arrived from a source: apply it. */
  got(index: number, data: Buffer, from: 'store' | 'object'): void;
  /** The source could not give segment `index` after all: ask the client. */
  lost(index: number): void;
  /** A guest read has waited on the object store for segment `index` too long: ask the client too (Hedges). */
  hedge(index: number, afterMs: number): void;
}

/** A segment asked of the client thin: resent as such after a resume. */
export interface Thin {
  index: number;
  lane: 'demand' | 'background';
  omit: Buffer;
}

/** What a resumed client is asked for again (SynthSession.outstanding). */
export interface Outstanding {
  demand: number[];
  background: number[];
  tables: number[];
  thin: Thin[];
}

export interface LookasideOptions {
  segments: readonly SegmentInfo[];
  /** The base images (memory, disk), read for XOR payloads. */
  base: string[];
}

/** Tables in a row that found nothing, after which lookaside only probes. */
export const SPARSE_AFTER = 16;
/** While probing: one segment in this many has its table asked. */
export const PROBE_EVERY = 8;

export class SegmentSources {
  /** Segments being fetched, and from where. */
  private readonly fetching = new Map<number, 'store' | 'object'>();
  /** Segments whose digest table was asked of the client. */
  private readonly tableWait = new Set<number>();
  /** Segments asked of the client thin, with the payloads that fill them in. */
  private readonly thin = new Map<number, LookasidePlan>();
  /** Segments lookaside gave up on (a bad table, a thin segment that failed): asked whole from now on. */
  private readonly whole = new Set<number>();
  private opened = false;
  /** Tables in a row whose segment the store held nothing of, and segments passed over while probing. */
  private emptyRun = 0;
  private sinceProbe = 0;

  /** The base images, opened for lookaside. */
  private readonly baseFiles: ChunkFile[] = [];
  /** Demand fetches from the object store that also asked the client. */
  readonly hedges: Hedges;

  constructor(
    private readonly store: SessionSource | undefined,
    private readonly objects: ObjectSource | undefined,
    private readonly cb: SourceCallbacks,
    private readonly look: LookasideOptions | null = null,
  ) {
    this.hedges = new Hedges(
      (index, afterMs) => this.cb.hedge(index, afterMs),
      () => this.objects?.typicalMs ?? null,
    );
    try {
      for (const f of look?.base ?? []) this.baseFiles.push(new ChunkFile(f));
    } catch (err) {
      for (const f of this.baseFiles) f.close();
      throw err;
    }
  }

  /** A base chunk's bytes (memory 0, disk 1), a fresh buffer. */
  private baseChunk(image: number, index: number): Buffer {
    const b = Buffer.allocUnsafe(CHUNK_SIZE);
    this.baseFiles[image]!.readAt(b, index * CHUNK_SIZE);
    return b;
  }

  /** Lookaside may start (the first response is out, or the policy has none to protect). */
  open(): void {
    this.opened = true;
  }

  /** Whether segment `index`, bound for the client's background lane, should have its digest table asked first. */
  wantsTable(index: number): boolean {
    if (
      !this.opened ||
      this.look === null ||
      this.store?.lookaside !== true ||
      this.whole.has(index) ||
      !lookasideable(this.look.segments[index]!)
    )
      return false;
    return this.emptyRun < SPARSE_AFTER || ++this.sinceProbe % PROBE_EVERY === 0;
  }

  /** Segment `index`'s table is asked of the client. */
  askTable(index: number): void {
    this.tableWait.add(index);
  }

  /** A guest read needs segment `index` now: if its table is still awaited, stop waiting (true: ask for it whole). */
  cancelTable(index: number): boolean {
    if (!this.tableWait.delete(index)) return false;
    this.whole.add(index);
    return true;
  }

  /**
   * Segment `index`'s table arrived: the plan (ask for it thin), null (ask for
   * it whole), or 'ignored' (not awaited: a guest read asked for it whole
   * meanwhile). A table that fails its check is not used.
   */
  async table(index: number, data: Buffer): Promise<LookasidePlan | null | 'ignored'> {
    if (!this.tableWait.has(index) || !this.store || !this.look) return 'ignored';
    const plan = await this.store
      .plan(index, data, (i, c) => this.baseChunk(i, c))
      .catch((err: unknown) => {
        publish('progress', { step: `segment ${index}: its digest table was not used (${(err as Error).message})` });
        return null;
      });
    if (!this.tableWait.delete(index)) return 'ignored';
    if (plan) this.thin.set(index, plan);
    else this.whole.add(index);
    this.emptyRun = plan ? 0 : this.emptyRun + 1;
    return plan;
  }

  /** Segment `index` arrived thin: its raw bytes, put back together (unchecked: the pipeline checks every chunk). Throws VMS_PROTOCOL when it was not asked thin. */
  rebuild(index: number, data: Buffer): Buffer {
    const plan = this.thin.get(index);
    const s = this.look?.segments[index];
    if (!plan || !s)
      throw new VmsynthError('VMS_PROTOCOL', `segment ${index} arrived thin, but was not asked for thin`);
    const thin = decompressFrame(data, keptSlots(s, plan.omit) * CHUNK_SIZE);
    return rebuildRaw(s, plan.table, thin, plan.omit, (slot) => plan.fills.get(slot)!);
  }

  /** A segment asked thin arrived whole, or thin and applied (`ok`), or thin and failed its check (asked whole from now on). */
  settleThin(index: number, ok: boolean | null): { chunks: number; bytes: number } | null {
    const plan = this.thin.get(index);
    if (!plan) return null;
    this.thin.delete(index);
    if (ok === false) this.whole.add(index);
    if (!ok) return null;
    const chunks = plan.fills.size;
    this.store?.chunkHit(index, chunks, chunks * CHUNK_SIZE);
    return { chunks, bytes: chunks * CHUNK_SIZE };
  }

  /**
   * What a resumed client is asked for again: of the segments asked for and not yet received
   * (`requested`, each on its lane now), those not being applied and not coming from the store or
   * the object store; and, listed apart, what lookaside asked for (tables, thin segments).
   */
  outstanding(
    requested: readonly { index: number; lane: 'demand' | 'background' }[],
    isApplying: (index: number) => boolean,
  ): Outstanding {
    const out: Outstanding = { demand: [], background: [], tables: [...this.tableWait], thin: [] };
    const laneOf = new Map(requested.map((r) => [r.index, r.lane]));
    for (const [index, p] of this.thin)
      if (!isApplying(index)) out.thin.push({ index, omit: p.omit, lane: laneOf.get(index) ?? 'background' });
    this.hedges.resumed(); // hedged segments still racing are listed below (isFetching is false for them)
    for (const r of requested)
      if (!isApplying(r.index) && !this.isFetching(r.index) && !this.inLookaside(r.index)) out[r.lane].push(r.index);
    return out;
  }

  /** Whether segment `index` waits on lookaside (its table, or asked thin): a resume asks for it that way again. */
  inLookaside(index: number): boolean {
    return this.tableWait.has(index) || this.thin.has(index);
  }

  /** Starts fetching segment `index` from the store or the object store; false when neither can give it. */
  take(index: number, demand: boolean): boolean {
    if (this.store?.has(index)) this.start(index, this.store.take(index), 'store');
    else if (this.objects?.usable) {
      this.start(index, this.objects.fetch(index, demand), 'object');
      if (demand) this.hedges.arm(index);
    } else return false;
    return true;
  }

  private start(index: number, fetched: Promise<Buffer | null>, from: 'store' | 'object'): void {
    this.fetching.set(index, from);
    void fetched.then((data) => {
      this.fetching.delete(index);
      if (from === 'object' && this.hedges.fromObject(index, data !== null) === 'drop') return;
      if (data) this.cb.got(index, data, from);
      else this.cb.lost(index);
    });
  }

  /** Whether segment `index` is being fetched from a source and not also asked of the client (so the client must not send it). */
  isFetching(index: number): boolean {
    return this.fetching.has(index) && !this.hedges.awaitsClient(index);
  }

  /**
   * The client sent segment `index` (`bytes` long): 'drop' it (a hedge the object store won),
   * 'refuse' it (a source is fetching it, and it was not asked of the client), or 'use' it.
   */
  clientCopy(index: number, bytes: number): 'use' | 'drop' | 'refuse' {
    const v = this.hedges.fromClient(index, bytes);
    if (v === 'use' && this.fetching.has(index)) return 'refuse';
    return v === 'hedge' ? 'use' : v;
  }

  /** A guest read waits for segment `index`: if a source is fetching it, move it ahead there (true). */
  promote(index: number): boolean {
    const from = this.fetching.get(index);
    if (from === undefined) return false;
    if (from === 'object') {
      this.objects?.promote(index);
      this.hedges.arm(index);
    }
    return true;
  }

  /** These segments are asked of the client. */
  asked(segments: number[]): void {
    this.store?.miss(segments);
  }

  /** Segment `index` was applied; a received one (`keep`: its bytes) enters the store. */
  applied(index: number, bytes: number, from: SegmentOrigin, keep: Buffer | null, rebuilt = false): void {
    if (from === 'store') this.store?.hit(index, bytes);
    else if (keep && rebuilt) this.store?.admitRebuilt(index, keep);
    else if (keep) this.store?.admit(index, keep);
  }

  /** Whether a received segment's bytes should be kept for the store (it copies them before the pipeline takes them). */
  get keeps(): boolean {
    return this.store !== undefined;
  }

  /**
   * Segment `index` from a source failed its check: that source gives it no more. Resolves
   * true when the client's copy is on its way already (a hedge), false when the caller must ask for it.
   */
  async rejected(index: number, from: 'store' | 'object', err: unknown): Promise<boolean> {
    if (from === 'store') {
      await this.store?.reject(index);
      return false;
    }
    this.objects?.fail(asVmsynthError(err), index);
    return this.hedges.objectRejected(index);
  }

  /** Stops fetching; waits for segments being admitted to the store, and releases its lease. */
  async close(): Promise<void> {
    this.hedges.close();
    this.objects?.close();
    await this.store?.close();
    for (const f of this.baseFiles.splice(0)) f.close();
  }
}
