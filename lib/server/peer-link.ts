/**
 * One end of a handoff conversation between two cloudlets
 * (protocol/handoff-messages.ts), over a FramedSocket: messages checked by
 * the given parser and handed over one at a time, sends that wait for room
 * when the socket's buffer is full, keepalive pings, and a single end with a
 * typed reason (the peer's error, a protocol error, silence, or the socket
 * closing).
 */
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import type { FramedSocket } from '../protocol/framed-socket.js';
import type { Frame, OutgoingHeader } from '../protocol/frames.js';
import { FRAME_CAPS } from '../protocol/messages.js';

export interface PeerLinkOptions<M> {
  parse(f: Frame): M;
  /** Each message, in order. A throw ends the link with that error (told to the peer). */
  message(m: M): void;
  /** The link ended (once): `err` says why, null when this side closed it. */
  ended(err: VmsynthError | null): void;
  /** A ping goes out after this long without sending; silence for 3× this ends the link. */
  keepaliveMs: number;
  /** Who the peer is, for messages. */
  peer: string;
}

export class PeerLink<M extends { type: string }> {
  private over = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly io: FramedSocket,
    private readonly o: PeerLinkOptions<M>,
  ) {
    io.setMaxFrameBytes(FRAME_CAPS.streaming);
    io.setFrameCheck(null);
    io.setHandlers({
      frame: (f) => {
        if (this.over) return;
        try {
          const m = o.parse(f);
          if (m.type === 'ping') return;
          if (m.type === 'error') {
            const e = m as unknown as { code: string; message: string };
            return this.end(
              new VmsynthError('VMS_HANDOFF', `${o.peer}: ${e.code}: ${e.message}`, {
                details: { peerCode: e.code.slice(0, 40) },
              }),
              false,
            );
          }
          o.message(m);
        } catch (err) {
          this.end(asVmsynthError(err, 'VMS_PROTOCOL'));
        }
      },
      invalid: (err) => this.end(err),
      closed: (err) =>
        this.end(
          new VmsynthError('VMS_PEER_GONE', `the connection to ${o.peer} closed${err ? ` (${err.message})` : ''}`, {
            details: { reason: 'closed' },
          }),
          false,
        ),
    });
    const tick = Math.max(10, Math.min(1000, o.keepaliveMs / 2));
    this.timer = setInterval(() => this.check(), tick);
    this.timer.unref();
  }

  private check(): void {
    const now = performance.now();
    if (now - this.io.lastIn > 3 * this.o.keepaliveMs)
      return this.end(
        new VmsynthError('VMS_PEER_GONE', `${this.o.peer} sent nothing for ${Math.round(now - this.io.lastIn)} ms`, {
          details: { reason: 'idle' },
        }),
      );
    if (now - this.io.lastOut >= this.o.keepaliveMs) this.io.send({ type: 'ping' });
  }

  get open(): boolean {
    return !this.over;
  }

  /** Bytes sent and received so far (frames included). */
  get bytes(): { out: number; in: number } {
    return { out: this.io.bytesOut, in: this.io.bytesIn };
  }

  /** Queues a message; resolves when the socket has room for more (large payloads wait here). */
  async send(header: OutgoingHeader, payload?: Uint8Array): Promise<void> {
    if (this.over) return;
    if (!this.io.send(header, payload)) await this.io.drained();
  }

  /** Ends the link: `err` is told to the peer (when `tell`), and given to `ended`; null closes it cleanly. */
  end(err: VmsynthError | null, tell = true): void {
    if (this.over) return;
    this.over = true;
    clearInterval(this.timer);
    if (err && tell) this.io.send({ type: 'error', code: err.code, message: err.message.slice(0, 4000) });
    this.io.end(500);
    this.o.ended(err);
  }
}
