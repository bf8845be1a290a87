/**
 * Which segment to ask the client for next (the server pulls; see
 * docs/protocol.md). Pure state, no I/O, so its order can be tested exactly.
 *
 * Two lanes:
 * - demand: segments a blocked guest read needs. They go out first, in the
 *   order the faults came, and are not held back by the in-flight bound: a
 *   blocked vCPU waits for them.
 * - background: every other segment in manifest (access) order, with at
 *   most `maxInFlightBytes` of compressed segment bytes requested but not
 *   yet received. That keeps the link busy without burying a later demand
 *   request under seconds of queued data.
 *
 * After a demand for segment k, the background stream continues from k + 1
 * (the guest is working there, and the manifest order is the access order).
 * The segments it skipped are not lost: the cursor wraps around to them at
 * the end.
 */
import { DEFAULTS } from '../core/defaults.js';
import { VmsynthError } from '../core/errors.js';

const QUEUED = 0;
const REQUESTED = 1;
const RECEIVED = 2;

export interface SchedulerOptions {
  /** Compressed bytes of each segment. */
  sizes: readonly number[];
  /** Background bytes requested but not received, at most (default DEFAULTS.maxInFlightKib, 2 MiB: measured in the demo at 38 Mbit/s, 4 MiB put 0.9 s of background ahead of a demand fetch); at least one segment is always allowed. */
  maxInFlightBytes?: number;
  /** False: demand lane only, no background stream (ISR's pure demand fetch). Default true. */
  background?: boolean;
}

export interface Request {
  index: number;
  lane: 'demand' | 'background';
}

export class SegmentScheduler {
  private readonly state: Uint8Array;
  /** Set once a guest read needed the segment. */
  private readonly demanded: Uint8Array;
  /** The lane a requested segment went out on (1 background, 2 demand): only background requests hold in-flight bytes. */
  private readonly lane: Uint8Array;
  private readonly demandQueue: number[] = [];
  private readonly maxInFlight: number;
  private cursor = 0;
  private inFlightBytes = 0;
  private receivedCount = 0;
  /** Demands for segments already on their way in the background (counted, not sent again). */
  outOfOrder = 0;

  constructor(private readonly opts: SchedulerOptions) {
    const n = opts.sizes.length;
    this.state = new Uint8Array(n);
    this.demanded = new Uint8Array(n);
    this.lane = new Uint8Array(n);
    this.maxInFlight = opts.maxInFlightBytes ?? DEFAULTS.maxInFlightKib * 1024;
  }

  get total(): number {
    return this.state.length;
  }

  get done(): boolean {
    return this.receivedCount === this.state.length;
  }

  get backgroundBytesInFlight(): number {
    return this.inFlightBytes;
  }

  private check(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= this.state.length) {
      throw new VmsynthError('VMS_PROTOCOL', `segment ${index} does not exist (the overlay has ${this.state.length})`);
    }
  }

  /** Requested and not yet received (a segment may arrive only then). */
  isRequested(index: number): boolean {
    this.check(index);
    return this.state[index] === REQUESTED;
  }

  /** Where segment `index` is: not asked for yet, asked for (on the wire or being applied), or applied. */
  stateOf(index: number): 'queued' | 'requested' | 'received' {
    this.check(index);
    return this.state[index] === RECEIVED ? 'received' : this.state[index] === REQUESTED ? 'requested' : 'queued';
  }

  /** A guest read has needed this segment. */
  isDemanded(index: number): boolean {
    this.check(index);
    return this.demanded[index] === 1;
  }

  /** A guest read needs segment `index`. Returns true when that puts a request on the demand lane. */
  demand(index: number): boolean {
    this.check(index);
    if (this.state[index] === RECEIVED || this.demanded[index]) return false;
    this.demanded[index] = 1;
    if (this.state[index] === REQUESTED) {
      this.outOfOrder++;
      return false;
    }
    this.demandQueue.push(index);
    if (index + 1 < this.state.length) this.cursor = index + 1;
    return true;
  }

  /** The next request to send, or null when nothing may be sent now (all requested, or the background bound is reached). */
  next(): Request | null {
    while (this.demandQueue.length > 0) {
      const index = this.demandQueue.shift()!;
      if (this.state[index] !== QUEUED) continue;
      this.state[index] = REQUESTED;
      this.lane[index] = 2;
      return { index, lane: 'demand' };
    }
    if (this.opts.background === false) return null;
    const n = this.state.length;
    for (let scanned = 0; scanned < n; scanned++) {
      const index = this.cursor;
      if (this.state[index] === QUEUED) {
        const size = this.opts.sizes[index]!;
        if (this.inFlightBytes > 0 && this.inFlightBytes + size > this.maxInFlight) return null;
        this.state[index] = REQUESTED;
        this.lane[index] = 1;
        this.inFlightBytes += size;
        this.cursor = (index + 1) % n;
        return { index, lane: 'background' };
      }
      this.cursor = (index + 1) % n;
    }
    return null;
  }

  /**
   * Segments asked for and not yet received, each on the lane it is wanted on now: demand when it
   * went out on the demand lane or a guest read has needed it since (a client that lost them is
   * asked for them again, the urgent ones first).
   */
  requested(): Request[] {
    const demand: Request[] = [];
    const background: Request[] = [];
    for (let index = 0; index < this.state.length; index++) {
      if (this.state[index] !== REQUESTED) continue;
      if (this.lane[index] === 2 || this.demanded[index]) demand.push({ index, lane: 'demand' });
      else background.push({ index, lane: 'background' });
    }
    return [...demand, ...background];
  }

  /** Every request that may be sent now, in order. */
  drain(): Request[] {
    const out: Request[] = [];
    for (let r = this.next(); r; r = this.next()) out.push(r);
    return out;
  }

  private release(index: number): void {
    if (this.lane[index] === 1) this.inFlightBytes -= this.opts.sizes[index]!;
    this.lane[index] = 0;
  }

  /** Segment `index` arrived and was applied. Returns false for a duplicate or one never requested. */
  received(index: number): boolean {
    this.check(index);
    if (this.state[index] !== REQUESTED) return false;
    this.release(index);
    this.state[index] = RECEIVED;
    this.receivedCount++;
    return true;
  }

  /** Segment `index` was applied before this scheduler existed (a session adopted from its keeper). */
  adopted(index: number): void {
    this.check(index);
    if (this.state[index] === RECEIVED) return;
    this.release(index);
    this.state[index] = RECEIVED;
    this.receivedCount++;
  }

  /** Segment `index` failed its check: ask for it again, ahead of everything else. */
  retry(index: number): void {
    this.check(index);
    if (this.state[index] !== REQUESTED) return;
    this.release(index);
    this.state[index] = QUEUED;
    this.demandQueue.unshift(index);
  }
}
