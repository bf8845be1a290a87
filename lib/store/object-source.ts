/**
 * One synthesis session's segments from an object store: the overlay the
 * client named by URL (`s3://bucket/prefix`, pushed there by `vmsynth
 * overlay push`), fetched by the server over its own link with ranged GETs
 * of `overlay.segments`, several at once, demand-lane segments ahead of
 * background ones.
 *
 * The client's connection stays the fallback: the first failure (the object
 * missing, access denied, the store unreachable or too slow, or bytes that
 * fail their check) ends the object source for the rest of the session; the
 * session asks its client for that segment and every later one, and the
 * failure is published (log and metrics say so). Bytes fetched are
 * unverified, like a store read: the session applies them through the
 * segment pipeline, which checks them against the manifest.
 */
import PQueue from 'p-queue';
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, type VmsynthError } from '../core/errors.js';
import { SEGMENTS_FILE } from '../overlay/format.js';
import type { Overlay } from '../overlay/reader.js';
import { s3Url, type ObjectStore, type S3Location } from './object-store.js';

export class ObjectSource {
  private readonly queue: PQueue;
  private readonly abort = new AbortController();
  private failedWith: VmsynthError | null = null;
  /** A moving average of how long a ranged GET took here (ms), or null before one finished. */
  private ewmaMs: number | null = null;

  constructor(
    private readonly objects: ObjectStore,
    private readonly loc: S3Location,
    private readonly overlay: Overlay,
    private readonly session: string,
    parallel: number,
  ) {
    this.queue = new PQueue({ concurrency: Math.max(1, parallel) });
  }

  get url(): string {
    return s3Url(this.loc);
  }

  /** The typical time of one ranged GET in this session (ms), or null before one finished. */
  get typicalMs(): number | null {
    return this.ewmaMs;
  }

  /** True until the first failure. */
  get usable(): boolean {
    return this.failedWith === null && !this.abort.signal.aborted;
  }

  /** Segment `index`'s bytes (unverified), or null once the source has failed (ask the client). */
  async fetch(index: number, demand: boolean): Promise<Buffer | null> {
    const s = this.overlay.body.segments[index]!;
    try {
      const got = await this.queue.add(
        async () => {
          if (!this.usable) return null;
          const t0 = performance.now();
          const got = await this.objects.get(
            this.loc,
            SEGMENTS_FILE,
            { offset: s.offset, bytes: s.bytes },
            this.abort.signal,
          );
          const ms = performance.now() - t0;
          this.ewmaMs = this.ewmaMs === null ? ms : 0.75 * this.ewmaMs + 0.25 * ms;
          return got;
        },
        { priority: demand ? 10 : 0, id: String(index) },
      );
      return got ?? null;
    } catch (err) {
      if (!this.abort.signal.aborted) this.fail(asVmsynthError(err), index);
      return null;
    }
  }

  /** A guest read now waits for segment `index`, queued here in the background: fetch it next. */
  promote(index: number): void {
    try {
      this.queue.setPriority(String(index), 10);
    } catch {
      // already being fetched
    }
  }

  /** Ends the source: the segment's fetched bytes failed their check, or a fetch failed. */
  fail(err: VmsynthError, segment: number): void {
    if (this.failedWith) return;
    this.failedWith = err;
    const reason =
      (err.details.reason as string | undefined) ?? (err.code === 'VMS_OVERLAY_CORRUPT' ? 'corrupt' : 'error');
    publish('objectStoreFallback', { session: this.session, url: this.url, segment, reason, error: err });
  }

  close(): void {
    this.abort.abort();
    this.queue.clear();
  }
}
