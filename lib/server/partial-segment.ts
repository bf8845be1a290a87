/**
 * The received part of a segment whose frame a drop cut short, kept for the
 * resume, which asks only for the rest (docs/protocol.md, "resumed"). Pure.
 */
import { VmsynthError } from '../core/errors.js';

export class PartialSegment {
  private part: { index: number; data: Buffer } | null = null;
  /** Segment bytes received and then thrown away (a part that could not be kept or used). */
  discardedBytes = 0;

  /** The part kept now: segment and bytes. */
  get held(): { index: number; bytes: number } | null {
    return this.part ? { index: this.part.index, bytes: this.part.data.length } : null;
  }

  /**
   * A segment arrived whole, or (with `offset`) as the rest of the kept part:
   * returns it whole. A rest that does not follow the kept part is a protocol error.
   */
  complete(index: number, data: Buffer, offset?: number): Buffer {
    const p = this.part;
    if (offset !== undefined) {
      if (!p || p.index !== index || p.data.length !== offset)
        throw new VmsynthError(
          'VMS_PROTOCOL',
          `segment ${index} was sent from byte ${offset}, but the server holds ${p?.index === index ? `${p.data.length} bytes` : 'nothing'} of it`,
          {
            details: { reason: 'partial-offset', segment: index, offset, held: p?.index === index ? p.data.length : 0 },
          },
        );
      this.part = null;
      return Buffer.concat([p.data, data]);
    }
    if (p?.index === index) this.drop(); // sent whole again: the part is not needed
    return data;
  }

  /** What arrived of segment `index` before a drop (`offset`: the frame was itself the rest of the kept part). */
  keep(index: number, payload: Buffer, offset?: number): void {
    if (payload.length === 0) return;
    const p = this.part;
    if (offset !== undefined) {
      if (!p || p.index !== index || p.data.length !== offset) {
        this.discardedBytes += payload.length;
        return;
      }
      this.part = { index, data: Buffer.concat([p.data, payload]) };
      return;
    }
    if (p) this.drop();
    this.part = { index, data: Buffer.from(payload) };
  }

  /** Drops the kept part unless its segment is among `still` (still wanted). */
  keepOnly(still: readonly number[]): void {
    if (this.part && !still.includes(this.part.index)) this.drop();
  }

  drop(): void {
    this.discardedBytes += this.part?.data.length ?? 0;
    this.part = null;
  }

  /** The session ended: the part goes, uncounted. */
  clear(): void {
    this.part = null;
  }
}
