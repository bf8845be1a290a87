/**
 * Where a session's segments come from, besides its client: the cloudlet
 * store (segments kept from earlier sessions) first, then the object store
 * the client named (fetched over the server's own link), and otherwise the
 * client, asked with a `want`. It owns the fetches under way and sends what
 * comes back to the session to apply (checked in the segment pipeline like a
 * received segment); a source that fails, or whose bytes fail their check,
 * hands the segment back to be asked of the client.
 */
import { asVmsynthError } from '../core/errors.js';
import type { ObjectSource } from '../store/object-source.js';
import type { SessionSource } from '../store/session-source.js';

export type SegmentOrigin = 'client' | 'store' | 'object';

export interface SourceCallbacks {
  /** Segment `index` arrived from a source: apply it. */
  got(index: number, data: Buffer, from: 'store' | 'object'): void;
  /** The source could not give segment `index` after all: ask the client. */
  lost(index: number): void;
}

export class SegmentSources {
  private readonly fetching = new Set<number>();

  constructor(
    private readonly store: SessionSource | undefined,
    private readonly objects: ObjectSource | undefined,
    private readonly cb: SourceCallbacks,
  ) {}

  /** Starts fetching segment `index` from the store or the object store; false when neither can give it. */
  take(index: number, demand: boolean): boolean {
    if (this.store?.has(index)) this.start(index, this.store.take(index), 'store');
    else if (this.objects?.usable) this.start(index, this.objects.fetch(index, demand), 'object');
    else return false;
    return true;
  }

  private start(index: number, fetched: Promise<Buffer | null>, from: 'store' | 'object'): void {
    this.fetching.add(index);
    void fetched.then((data) => {
      this.fetching.delete(index);
      if (data) this.cb.got(index, data, from);
      else this.cb.lost(index);
    });
  }

  /** Whether segment `index` is being fetched from a source (so not asked of the client). */
  isFetching(index: number): boolean {
    return this.fetching.has(index);
  }

  /** A guest read waits for segment `index`: if a source is fetching it, move it ahead there (true). */
  promote(index: number): boolean {
    if (!this.fetching.has(index)) return false;
    this.objects?.promote(index);
    return true;
  }

  /** These segments are asked of the client. */
  asked(segments: number[]): void {
    this.store?.miss(segments);
  }

  /** Segment `index` was applied; a received one (`keep`: its bytes) enters the store. */
  applied(index: number, bytes: number, from: SegmentOrigin, keep: Buffer | null): void {
    if (from === 'store') this.store?.hit(index, bytes);
    else if (keep) this.store?.admit(index, keep);
  }

  /** Whether a received segment's bytes should be kept for the store (it copies them before the pipeline takes them). */
  get keeps(): boolean {
    return this.store !== undefined;
  }

  /** Segment `index` from a source failed its check: that source gives it no more (the caller asks the client). */
  async rejected(index: number, from: 'store' | 'object', err: unknown): Promise<void> {
    if (from === 'store') await this.store?.reject(index);
    else this.objects?.fail(asVmsynthError(err), index);
  }

  /** Stops fetching; waits for segments being admitted to the store, and releases its lease. */
  async close(): Promise<void> {
    this.objects?.close();
    await this.store?.close();
  }
}
