/**
 * A TCP socket that speaks frames: both the server's connections and the
 * client use it. Incoming bytes are cut into frames (with the cap the
 * conversation stage allows) and handed over one at a time; a framing error
 * is reported once and the socket is not read further. Writes are queued by
 * the socket; `drained()` lets a sender of large payloads wait for room.
 */
import type net from 'node:net';
import { asVmsynthError, type VmsynthError } from '../core/errors.js';
import { encodeFrame, FrameDecoder, type Frame, type FrameHeader, type OutgoingHeader } from './frames.js';

const EMPTY = Buffer.alloc(0);

export interface FramedHandlers {
  frame(f: Frame): void;
  /** A framing error (oversized, malformed); the socket is still open. */
  invalid(err: VmsynthError): void;
  /** The connection is gone (end, reset or error); called once. */
  closed(err?: Error): void;
}

export class FramedSocket {
  private readonly decoder: FrameDecoder;
  private broken = false;
  private ended = false;
  bytesIn = 0;
  bytesOut = 0;
  /** The frame that was being received when the connection closed, cut short (see FrameDecoder.partialFrame). */
  private partial: { header: FrameHeader; payload: Buffer } | null = null;

  /** The frame cut short by the end of the connection (or being received now, if it is still open), once. */
  takePartial(): { header: FrameHeader; payload: Buffer } | null {
    const p = this.partial ?? (this.ended ? null : this.decoder.partialFrame());
    this.partial = null;
    return p;
  }
  /** Another party takes over the conversation (a connection that turned out to be a handoff's). */
  setHandlers(h: FramedHandlers): void {
    this.handlers = h;
  }

  /** performance.now() of the last bytes read and the last frame queued (keepalives and idle limits use them). */
  lastIn = performance.now();
  lastOut = performance.now();

  constructor(
    readonly socket: net.Socket,
    maxFrameBytes: number,
    private handlers: FramedHandlers,
  ) {
    this.decoder = new FrameDecoder({ maxFrameBytes });
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    let closed = false;
    const close = (err?: Error) => {
      if (closed) return;
      closed = true;
      this.ended = true;
      this.partial = this.decoder.partialFrame();
      this.decoder.release();
      this.handlers.closed(err);
    };
    socket.on('error', (err) => close(err));
    socket.on('close', () => close());
  }

  get open(): boolean {
    return !this.ended && !this.socket.destroyed;
  }

  setMaxFrameBytes(n: number): void {
    this.decoder.setMaxFrameBytes(n);
  }

  /** Called with each frame's length before it is buffered; may throw a VmsynthError to refuse it (null: no check). */
  setFrameCheck(check: ((bytes: number) => void) | null): void {
    this.decoder.onFrameStart = check;
  }

  private onData(d: Buffer): void {
    this.lastIn = performance.now();
    if (this.broken) return;
    this.bytesIn += d.length;
    // One frame at a time: the handler of a frame may change the cap for the next (hello raises it).
    for (;;) {
      let f: Frame | null;
      try {
        this.decoder.feed(d);
        d = EMPTY;
        f = this.decoder.next();
      } catch (err) {
        this.broken = true;
        this.decoder.release();
        this.handlers.invalid(asVmsynthError(err, 'VMS_PROTOCOL'));
        return;
      }
      if (!f) return;
      this.handlers.frame(f);
      if (this.broken || this.ended) return;
    }
  }

  /** Stops handing over frames (after a fatal error, while the goodbye is sent); later bytes are read and dropped, so the peer's close is still seen. */
  stopReading(): void {
    this.broken = true;
  }

  /** Queues one frame; returns false when the socket's buffer is over its high-water mark. */
  send(header: OutgoingHeader, payload?: Uint8Array): boolean {
    if (!this.open) return false;
    this.lastOut = performance.now();
    let ok = true;
    for (const part of encodeFrame(header, payload)) {
      if (this.bytesFlushed === this.bytesOut) this.flushedAt = performance.now(); // the wait starts now
      this.bytesOut += part.length;
      ok = this.socket.write(part, (err) => {
        if (err) return;
        this.bytesFlushed += part.length;
        this.flushedAt = performance.now();
      });
    }
    return ok;
  }

  /** Resolves when the socket's write buffer has room again (at once when it has). */
  drained(): Promise<void> {
    if (!this.socket.writableNeedDrain || !this.open) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.once('drain', done);
      this.socket.once('close', done);
    });
  }

  /** Ends the connection after queued frames are flushed; destroys it if the peer does not close within `ms`. */
  end(ms = 2000): void {
    if (this.socket.destroyed) return;
    this.socket.end();
    const timer = setTimeout(() => this.socket.destroy(), ms);
    timer.unref();
    this.socket.once('close', () => clearTimeout(timer));
  }

  /** Bytes the kernel has taken (their write completed), and when that last moved. */
  private bytesFlushed = 0;
  private flushedAt = performance.now();

  /**
   * How long the peer has left queued bytes unread: ms since the kernel last took any, while some
   * wait; 0 when none wait. (A slow link still moves; a peer that stopped reading does not.)
   */
  stalledMs(): number {
    if (this.bytesFlushed === this.bytesOut) return 0;
    return performance.now() - this.flushedAt;
  }

  destroy(): void {
    this.socket.destroy();
  }
}
