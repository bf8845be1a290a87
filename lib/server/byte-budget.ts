/**
 * A server-wide budget of bytes that connections may buffer before their
 * session starts: frames of unauthenticated connections and overlay
 * manifests (up to 512 MiB each) waiting for admission. Each connection
 * reserves a frame's length as soon as the frame's length prefix arrives,
 * before a byte of it is buffered, and gives back everything it holds when
 * its session starts or it ends. Pure bookkeeping; no I/O.
 */
import { VmsynthError } from '../core/errors.js';

export class ByteBudget {
  private used = 0;
  private readonly held = new Map<object, number>();

  constructor(readonly limit: number) {}

  /** Reserves `bytes` for `owner`, or throws VMS_BUSY when the budget has no room for them. */
  reserve(owner: object, bytes: number): void {
    if (this.used + bytes > this.limit) {
      const mib = (n: number) => Math.ceil(n / 2 ** 20);
      throw new VmsynthError(
        'VMS_BUSY',
        `the server is holding ${mib(this.used)} MiB for connections whose sessions have not started; a ${mib(bytes)} MiB frame does not fit its ${mib(this.limit)} MiB (retry shortly)`,
        { details: { limit: 'preSessionMemory', bytes, used: this.used, max: this.limit } },
      );
    }
    this.used += bytes;
    this.held.set(owner, (this.held.get(owner) ?? 0) + bytes);
  }

  /** Gives back everything `owner` holds; returns how many bytes that was. */
  release(owner: object): number {
    const n = this.held.get(owner);
    if (n === undefined) return 0;
    this.held.delete(owner);
    this.used -= n;
    return n;
  }

  /** Bytes reserved now. */
  get inUse(): number {
    return this.used;
  }
}
