/**
 * Hedged demand fetches: a guest read waits on a segment the object store is
 * fetching, and the object store is slower than it usually is. After the
 * hedge delay the client is asked for the segment too (on its demand lane),
 * and whichever copy arrives first is applied; the other is dropped when it
 * comes. So a slow object store costs a held read at most the delay plus the
 * client's time, and a healthy one costs the client's link nothing.
 *
 * The delay is HEDGE_FACTOR times the object store's typical fetch time in
 * this session (ObjectSource.typicalMs), within [HEDGE_MIN_MS, HEDGE_MAX_MS],
 * and HEDGE_FIRST_MS before any fetch has finished.
 *
 * This module owns only the race's state: which segments are asked of both,
 * and which copy is to be dropped. Pure but for its timers.
 */

export const HEDGE_FACTOR = 3;
export const HEDGE_MIN_MS = 100;
export const HEDGE_MAX_MS = 500;
export const HEDGE_FIRST_MS = 300;

export interface HedgeStats {
  /** Segments asked of the client as well, after the hedge delay. */
  hedged: number;
  /** Client copies that came after the object store's, dropped, and their bytes (over the client's link for nothing). */
  dropped: number;
  droppedBytes: number;
}

/** What to do with a copy that came. */
export type CopyVerdict = 'use' | 'drop';

export class Hedges {
  private readonly timers = new Map<number, NodeJS.Timeout>();
  /** Asked of both; no copy has come yet. */
  private readonly racing = new Set<number>();
  /** The object store's copy came first: the client's is dropped. */
  private readonly objectFirst = new Set<number>();
  /** The client's copy came first: the object store's is dropped. */
  private readonly clientFirst = new Set<number>();
  /** Segments asked of the client as a hedge; client copies dropped (the object store's came first), and their bytes. */
  private readonly counts = { hedged: 0, dropped: 0, droppedBytes: 0 };

  constructor(
    /** The delay ran out: ask the client for segment `index` on its demand lane. */
    private readonly fire: (index: number, afterMs: number) => void,
    /** The object store's typical fetch time in this session, or null before one finished. */
    private readonly typicalMs: () => number | null,
  ) {}

  /** How long a guest read waits on the object store before the client is asked too. */
  delayMs(): number {
    const typical = this.typicalMs();
    if (typical === null) return HEDGE_FIRST_MS;
    return Math.min(HEDGE_MAX_MS, Math.max(HEDGE_MIN_MS, Math.round(HEDGE_FACTOR * typical)));
  }

  /** A guest read waits on segment `index`, which the object store is fetching: start its clock. */
  arm(index: number): void {
    if (this.timers.has(index) || this.racing.has(index) || this.clientFirst.has(index)) return;
    const afterMs = this.delayMs();
    const timer = setTimeout(() => {
      this.timers.delete(index);
      this.racing.add(index);
      this.counts.hedged++;
      this.fire(index, afterMs);
    }, afterMs);
    timer.unref();
    this.timers.set(index, timer);
  }

  /**
   * The object store's fetch of segment `index` ended (`got`: with bytes). 'use': apply
   * them (or, without bytes, ask the client as usual); 'drop': the client's copy was
   * taken, or (without bytes) the client was already asked.
   */
  fromObject(index: number, got: boolean): CopyVerdict {
    this.disarm(index);
    if (this.clientFirst.delete(index)) return 'drop';
    if (!this.racing.delete(index)) return 'use';
    if (!got) return 'drop'; // the client's copy is on its way
    this.objectFirst.add(index);
    return 'use';
  }

  /**
   * The client sent segment `index` (`bytes` long): 'hedge' (asked as a hedge, and first: use
   * it, though the object store is still fetching), 'drop' (the object store's copy came
   * first), or 'use' (no hedge: the usual checks apply).
   */
  fromClient(index: number, bytes: number): CopyVerdict | 'hedge' {
    if (this.objectFirst.delete(index)) {
      this.counts.dropped++;
      this.counts.droppedBytes += bytes;
      return 'drop';
    }
    if (!this.racing.delete(index)) return 'use';
    this.clientFirst.add(index);
    return 'hedge';
  }

  /** Whether the client was asked for segment `index` as a hedge and its copy is still awaited (so it may come though a source is fetching). */
  awaitsClient(index: number): boolean {
    return this.racing.has(index);
  }

  /** The object store's copy of segment `index` failed its check: true when the client's copy is still on its way (do not ask again). */
  objectRejected(index: number): boolean {
    return this.objectFirst.delete(index);
  }

  /**
   * The client reconnects (its lanes were emptied): the segments it must be asked for again
   * (still racing); and no late copy of the others will come.
   */
  resumed(): number[] {
    this.objectFirst.clear();
    return [...this.racing];
  }

  stats(): HedgeStats {
    return { ...this.counts };
  }

  close(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  private disarm(index: number): void {
    const t = this.timers.get(index);
    if (t === undefined) return;
    clearTimeout(t);
    this.timers.delete(index);
  }
}
