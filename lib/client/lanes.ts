/**
 * The client's two send lanes. Segment requests come on two lanes; a demand
 * request is served before any background segment not yet started (segments
 * are never interleaved), and `hurry` moves background segments not yet sent
 * to the demand lane. At most one segment sits in the socket's user-space
 * buffer at a time, so a demand request waits behind at most one segment
 * plus what the kernel buffers. After a drop the lanes are emptied: the
 * server asks again for what it still wants when the session resumes.
 *
 * Chunk lookaside (docs/protocol.md): `tables` asks for segments' digest
 * tables, sent at once, ahead of queued segments; `thin` asks for a segment
 * without some payload slots, sent thin when its turn comes. A thin form is
 * the same bytes every time (same slots, same zstd level), so a thin segment
 * cut by a drop resumes from a byte offset like any other.
 */
import type { promises as fsp } from 'node:fs';
import { compress } from 'zstd-napi';
import { VmsynthError } from '../core/errors.js';
import { payloadBytes, segmentDigests, SEGMENTS_FILE } from '../overlay/format.js';
import { thinPayloads } from '../overlay/thin.js';
import { decompressFrame } from '../overlay/zstd-frame.js';
import type { Overlay } from '../overlay/reader.js';
import type { FramedSocket } from '../protocol/framed-socket.js';
import type { ClientEvent, SegmentSend } from './types.js';

export interface LaneOptions {
  overlay: Overlay;
  file: fsp.FileHandle;
  /** The connection segments go on now, or null while there is none. */
  io(): FramedSocket | null;
  maxBytesPerSecond?: number;
  tamper?: (index: number, data: Buffer, attempt: number) => Buffer;
  /** Holds the background lane while it returns true (given the bytes sent so far). */
  hold?: (bytesSent: number) => boolean;
  event(e: ClientEvent): void;
  fail(e: Error): void;
  /** Milliseconds on the session's clock. */
  at(): number;
}

export class SendLanes {
  private demand: number[] = [];
  private background: number[] = [];
  private readonly attempts = new Map<number, number>();
  /** Segments asked for thin: the payload slots to leave out (kept across a drop; a new `thin` replaces it). */
  private readonly omit = new Map<number, Buffer>();
  /** Segments decompressed for their table, kept for the thin request that may follow (until it, a `want`, or a drop). */
  private readonly raws = new Map<number, Buffer>();
  private tableQueue: Promise<void> = Promise.resolve();
  /** Payload bytes left out of thin segments. */
  bytesOmitted = 0;
  tablesSent = 0;
  tableBytes = 0;
  private sending = false;
  private paceUntil = 0;
  private closed = false;
  /** A segment the server holds the first `bytes` of (after a resume): it is sent from there. */
  private resumeAt: { index: number; bytes: number } | null = null;
  bytesSent = 0;
  segmentsSent = 0;
  demandRequests = 0;
  hurried = 0;
  readonly sends: SegmentSend[] = [];

  constructor(private readonly o: LaneOptions) {}

  /** The server asks for these segments whole (even one it asked for thin before). */
  want(lane: 'demand' | 'background', segments: number[]): void {
    for (const i of segments) {
      this.omit.delete(i);
      this.raws.delete(i);
    }
    this.enqueue(lane, segments);
  }

  private enqueue(lane: 'demand' | 'background', segments: number[]): void {
    if (lane === 'demand') {
      this.demandRequests += segments.length;
      this.demand.push(...segments);
      // A demand request jumps the queue: drop it from the background lane if it is there.
      for (const i of segments) this.takeFromBackground(i);
    } else {
      this.background.push(...segments);
    }
    void this.pump();
  }

  /** The server holds some of segment `segment`'s payloads: send it without them. */
  thin(segment: number, lane: 'demand' | 'background', omit: Buffer): void {
    this.omit.set(segment, omit);
    this.enqueue(lane, [segment]);
  }

  /** The server asks for these segments' digest tables: they go now, ahead of queued segments. */
  tables(segments: number[]): void {
    const io = this.o.io();
    this.tableQueue = this.tableQueue
      .then(async () => {
        for (const index of segments) {
          const s = this.o.overlay.body.segments[index];
          if (!s || this.closed || this.o.io() !== io || !io) return;
          const raw = decompressFrame(await this.readSegment(index), s.rawBytes);
          if (this.closed || this.o.io() !== io) return;
          this.raws.set(index, raw);
          const table = segmentDigests(raw, s);
          io.send({ type: 'table', index }, table);
          this.tablesSent++;
          this.tableBytes += table.length;
          this.bytesSent += table.length;
        }
      })
      .catch((err: unknown) => this.o.fail(err as Error));
  }

  /** Segment `index` as stored in the overlay (compressed). */
  private async readSegment(index: number): Promise<Buffer> {
    const s = this.o.overlay.body.segments[index]!;
    const data = Buffer.allocUnsafe(s.bytes);
    const { bytesRead } = await this.o.file.read(data, 0, s.bytes, s.offset);
    if (bytesRead !== s.bytes)
      throw new VmsynthError('VMS_OVERLAY_CORRUPT', `${SEGMENTS_FILE} ends inside segment ${index}`);
    return data;
  }

  /** Segments asked for in the background that a blocked guest read needs: those not yet sent go next; one already sent (or being sent) is not sent again. */
  hurry(segments: number[]): void {
    for (const i of segments) {
      if (!this.takeFromBackground(i)) continue;
      this.demand.push(i);
      this.hurried++;
    }
    void this.pump();
  }

  /** The connection changed (dropped): what was queued is forgotten, the server asks again. */
  clear(): void {
    this.demand = [];
    this.background = [];
    this.resumeAt = null;
    this.raws.clear();
  }

  /** The server holds the first `bytes` of segment `index` (`resumed`): only the rest goes. */
  resumeSegment(index: number, bytes: number): void {
    this.resumeAt = { index, bytes };
  }

  /** Sends what is queued, if anything may go now (a new connection, a hold released). */
  restart(): void {
    void this.pump();
  }

  close(): void {
    this.closed = true;
    void this.o.file.close().catch(() => undefined);
  }

  private takeFromBackground(i: number): boolean {
    const k = this.background.indexOf(i);
    if (k < 0) return false;
    this.background.splice(k, 1);
    return true;
  }

  private async pump(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    const segs = this.o.overlay.body.segments;
    try {
      while (!this.closed) {
        if (this.o.maxBytesPerSecond) {
          const wait = this.paceUntil - performance.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
          if (this.closed) break;
        }
        const io = this.o.io();
        if (!io) break;
        const lane = this.demand.length ? 'demand' : 'background';
        if (lane === 'background' && this.o.hold?.(this.bytesSent)) break;
        const index = lane === 'demand' ? this.demand.shift() : this.background.shift();
        if (index === undefined) break;
        const s = segs[index]!;
        let data = await this.readSegment(index);
        const omit = this.omit.get(index);
        if (omit) {
          const raw = this.raws.get(index) ?? decompressFrame(data, s.rawBytes);
          this.raws.delete(index);
          const kept = thinPayloads(s, raw, omit);
          this.bytesOmitted += payloadBytes(s) - kept.length;
          data = compress(kept, { compressionLevel: this.o.overlay.body.compression.level });
        }
        const attempt = (this.attempts.get(index) ?? 0) + 1;
        this.attempts.set(index, attempt);
        if (this.o.tamper) data = this.o.tamper(index, data, attempt);
        // The connection may have dropped while the segment was read: it is asked for again after the resume.
        if (this.closed || this.o.io() !== io) break;
        const from = this.resumeAt?.index === index && this.resumeAt.bytes < data.length ? this.resumeAt.bytes : 0;
        if (this.resumeAt?.index === index) this.resumeAt = null;
        const thin = omit ? { thin: true } : {};
        if (from > 0) io.send({ type: 'segment', index, offset: from, ...thin }, data.subarray(from));
        else io.send({ type: 'segment', index, ...thin }, data);
        this.sends.push({ ms: this.o.at(), index, lane, bytes: data.length - from });
        this.bytesSent += data.length - from;
        this.segmentsSent++;
        if (this.o.maxBytesPerSecond)
          this.paceUntil =
            Math.max(this.paceUntil, performance.now()) + (data.length / this.o.maxBytesPerSecond) * 1000;
        this.o.event({
          type: 'segment',
          index,
          lane,
          sent: this.segmentsSent,
          total: segs.length,
          bytesSent: this.bytesSent,
          overlayBytes: this.o.overlay.segmentsBytes,
        });
        await io.drained();
      }
    } catch (err) {
      this.o.fail(err as Error);
    } finally {
      this.sending = false;
    }
  }
}
