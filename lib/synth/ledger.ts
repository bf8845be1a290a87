/**
 * A synthesis session's bookkeeping: what it received, what it fetched on
 * demand and asked for again, when it reached each milestone, and where the
 * segments that held guest reads wait for are. Pure (no I/O, an injected
 * clock), so the numbers a benchmark reads can be tested exactly.
 */
import { VmsynthError } from '../core/errors.js';
import type { Policy } from '../protocol/messages.js';
import type { BlockedReadStats, HeldReads } from './arrivals.js';
import type { HedgeStats } from './hedges.js';

/** Where a segment is, as a held guest read sees it. */
export type SegmentState = 'none' | 'queued' | 'requested' | 'applying' | 'received';

export interface SynthStats {
  policy: Policy;
  segments: number;
  /** Segments and bytes that came over the client's link. */
  segmentsReceived: number;
  bytesReceived: number;
  /** Segments and bytes taken from the cloudlet store instead. */
  segmentsFromStore: number;
  bytesFromStore: number;
  /** Segments and bytes fetched from the object store the client named, over the server's link. */
  segmentsFromObjects: number;
  bytesFromObjects: number;
  /**
   * Chunk lookaside: digest tables the client sent (and their bytes, not in
   * bytesReceived), segments it sent thin, and the chunks (and payload bytes)
   * taken from the store for them instead.
   */
  lookaside: { tables: number; tableBytes: number; thinSegments: number; chunks: number; bytesSaved: number };
  /** Demand fetches from a slow object store also asked of the client (hedges.ts). */
  hedges: HedgeStats;
  overlayBytes: number;
  /** Segments asked for on the demand lane. */
  demandFetches: number;
  /** Guest reads that needed a segment already on its way in the background. */
  outOfOrder: number;
  /** Segments that failed their hash and were asked for again. */
  retries: number;
  blockedReads: BlockedReadStats;
  /** Guest reads still waiting for the overlay when the stats were taken (at the end: reads the session failed). */
  heldReads: { reads: number; oldestMs: number; segments: { index: number; state: SegmentState }[] };
  /** From session start (manifest accepted). */
  resumedMs: number | null;
  firstResponseMs: number | null;
  completeMs: number | null;
  bytesReceivedBeforeFirstResponse: number | null;
  segmentsReceivedBeforeFirstResponse: number | null;
}

export class SessionLedger {
  private readonly t0: number;
  segmentsReceived = 0;
  bytesReceived = 0;
  segmentsFromStore = 0;
  bytesFromStore = 0;
  segmentsFromObjects = 0;
  bytesFromObjects = 0;
  demandFetches = 0;
  retries = 0;
  private readonly look = { tables: 0, tableBytes: 0, thinSegments: 0, chunks: 0, bytesSaved: 0 };
  resumedMs: number | null = null;
  firstResponseMs: number | null = null;
  completeMs: number | null = null;
  private bytesBefore: number | null = null;
  private segmentsBefore: number | null = null;
  /** Segments received and not yet applied. */
  private readonly applying = new Set<number>();
  /** Segments asked for again after failing their check (once each). */
  private readonly retried = new Set<number>();

  constructor(
    readonly policy: Policy,
    readonly segments: number,
    readonly overlayBytes: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.t0 = now();
  }

  /** Milliseconds since the session started. */
  ms(): number {
    return Math.round(this.now() - this.t0);
  }

  /** Segment `index` arrived with `bytes` bytes (from the client, or read from the store) and waits to be applied. */
  received(index: number, bytes: number, from: 'client' | 'store' | 'object' = 'client'): void {
    if (from === 'client') {
      this.segmentsReceived++;
      this.bytesReceived += bytes;
    }
    this.applying.add(index);
  }

  /** A segment from the store or the object store checked out and was applied (one that failed is not counted: the client sends it). */
  fromSource(from: 'store' | 'object', bytes: number): void {
    if (from === 'store') {
      this.segmentsFromStore++;
      this.bytesFromStore += bytes;
    } else {
      this.segmentsFromObjects++;
      this.bytesFromObjects += bytes;
    }
  }

  /** A digest table of `bytes` bytes arrived (chunk lookaside). */
  table(bytes: number): void {
    this.look.tables++;
    this.look.tableBytes += bytes;
  }

  /** A thin segment was applied, `chunks` of its chunks (`bytes` payload bytes) from the store. */
  lookaside(chunks: number, bytes: number): void {
    this.look.thinSegments++;
    this.look.chunks += chunks;
    this.look.bytesSaved += bytes;
  }

  /** Segment `index` is applied, or failed: it no longer waits. */
  settled(index: number): void {
    this.applying.delete(index);
  }

  isApplying(index: number): boolean {
    return this.applying.has(index);
  }

  /** A segment that failed its check may be asked for again once; true (and counted) when this is that once. */
  mayRetry(index: number): boolean {
    if (this.retried.has(index)) return false;
    this.retried.add(index);
    this.retries++;
    return true;
  }

  /** The session was adopted from a previous server: its VM ran, and its overlay was complete, that many ms into it then. */
  adopted(at: { resumedMs: number | null; completeMs: number | null; firstResponseMs: number | null }): void {
    this.resumedMs = at.resumedMs;
    this.completeMs = at.completeMs;
    this.firstResponseMs = at.firstResponseMs;
  }

  resumed(): number {
    this.resumedMs = this.ms();
    return this.resumedMs;
  }

  complete(): number {
    this.completeMs = this.ms();
    return this.completeMs;
  }

  /** An offload reply came back; the first one is the first response (returns its ms, null for later ones). */
  replied(): number | null {
    if (this.firstResponseMs !== null) return null;
    this.firstResponseMs = this.ms();
    this.bytesBefore = this.bytesReceived;
    this.segmentsBefore = this.segmentsReceived;
    return this.firstResponseMs;
  }

  /** Held reads with where each segment they wait for is; `schedulerState` tells segments not received yet. */
  held(h: HeldReads, schedulerState: (index: number) => 'queued' | 'requested' | 'received'): SynthStats['heldReads'] {
    const state = (i: number): SegmentState =>
      i < 0 || i >= this.segments ? 'none' : this.applying.has(i) ? 'applying' : schedulerState(i);
    return {
      reads: h.reads,
      oldestMs: h.oldestMs,
      segments: h.segments.map((index) => ({ index, state: state(index) })),
    };
  }

  stats(live: {
    outOfOrder: number;
    blockedReads: BlockedReadStats;
    heldReads: SynthStats['heldReads'];
    hedges: HedgeStats;
  }): SynthStats {
    return {
      policy: this.policy,
      segments: this.segments,
      segmentsReceived: this.segmentsReceived,
      bytesReceived: this.bytesReceived,
      segmentsFromStore: this.segmentsFromStore,
      bytesFromStore: this.bytesFromStore,
      segmentsFromObjects: this.segmentsFromObjects,
      bytesFromObjects: this.bytesFromObjects,
      lookaside: { ...this.look },
      hedges: live.hedges,
      overlayBytes: this.overlayBytes,
      demandFetches: this.demandFetches,
      outOfOrder: live.outOfOrder,
      retries: this.retries,
      blockedReads: live.blockedReads,
      heldReads: live.heldReads,
      resumedMs: this.resumedMs,
      firstResponseMs: this.firstResponseMs,
      completeMs: this.completeMs,
      bytesReceivedBeforeFirstResponse: this.bytesBefore,
      segmentsReceivedBeforeFirstResponse: this.segmentsBefore,
    };
  }
}

/**
 * Why a segment from the client is refused, or null: it must have been asked
 * for, and not be a second copy of one being applied (40 copies of one
 * segment were once all accepted, and counted: 22 of 21 segments received).
 */
export function unexpectedSegment(index: number, asked: boolean, applying: boolean): VmsynthError | null {
  if (!asked)
    return new VmsynthError('VMS_PROTOCOL', `segment ${index} was not asked for`, { details: { segment: index } });
  if (applying)
    return new VmsynthError('VMS_PROTOCOL', `segment ${index} was sent twice`, {
      details: { reason: 'duplicate-segment', segment: index },
    });
  return null;
}

/** The held guest reads, as the end of an error message ("" when there are none). */
export function describeHeld(h: SynthStats['heldReads']): string {
  if (!h.reads) return '';
  const segs = h.segments.map((x) => `${x.index} (${x.state})`).join(', ');
  return `; ${h.reads} guest read(s) were still waiting for the overlay, the oldest for ${h.oldestMs} ms, on segment(s) ${segs}`;
}
