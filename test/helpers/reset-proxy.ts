/**
 * A TCP proxy for one vmsynth connection that cuts it with real resets
 * (socket.resetAndDestroy(): an RST, not a FIN) at a chosen point, for the
 * connection-reset tests. No lib code is involved: client and server see an
 * ordinary TCP peer that dies.
 *
 * It forwards whole frames in both directions (it reads their length prefix
 * and header; payloads pass through untouched) and counts the bytes:
 *
 * - `c2sAt`: client→server bytes are forwarded exactly up to a threshold
 *   (computed once the handshake, the client's frames before its first
 *   segment, has gone through), cutting the frame that crosses it; then the connection is
 *   reset. With `gate`, the proxy first stops forwarding at the threshold
 *   (a stalled link) until the gate opens or `gateLimitMs` passes, then
 *   resets: so a test can put the reset at an exact byte count *and* in a
 *   known state of the VM. Whether the gate opened is recorded.
 * - `resetOnServerFrame`: the connection is reset when the server sends a
 *   frame of that type, before it is forwarded (`resetAfterServerFrame`:
 *   just after it).
 * - `holdAfterClientFrame`: once the client sent a frame of that type, its
 *   `dsegment` frames (a handoff's delta) are held, each until the server
 *   asks for it with a `dwant`: what a target needs to resume goes through,
 *   the rest of the last pass waits (post-copy).
 * - reset(): by hand.
 */
import net from 'node:net';
import { decodeFrameBody } from '../../lib/protocol/frames.js';

export type ResetMode =
  /** Both sockets at once: the link died. */
  | 'both'
  /** The server-facing socket first, then the client-facing one as soon as the proxy sees that close: the server side died and the client hears an RST. */
  | 'server-first';

export interface ResetPlan {
  /** Client→server byte count (handshake included) at which to reset, given the handshake's bytes. */
  c2sAt?: (handshakeBytes: number) => number;
  /** At the threshold, hold the link until this resolves (it is called then), at most gateLimitMs; then reset. */
  gate?: (proxy: ResetProxy) => Promise<unknown>;
  gateLimitMs?: number;
  /** Reset when the server sends a frame of this type, before it is forwarded. */
  resetOnServerFrame?: string;
  /** Reset when the server sends a frame of this type, just after it is forwarded. */
  resetAfterServerFrame?: string;
  /** After the client's frame of this type, hold its `dsegment` frames until the server's `dwant` names them. */
  holdAfterClientFrame?: string;
  /**
   * Connections after the first pass straight through to the target (default: reset): a handed-off
   * client told to go where its source reached the target (the proxy) gets there.
   */
  passLater?: boolean;
  mode?: ResetMode;
}

export interface ResetRecord {
  /** performance.now() when the first socket was reset. */
  at: number;
  mode: ResetMode;
  trigger: 'c2s-threshold' | 'server-frame' | 'manual';
  /** Client→server bytes forwarded to the server before the reset (handshake included). */
  c2sForwarded: number;
  /** Client→server bytes read from the client (≥ forwarded: the rest was dropped). */
  c2sRead: number;
  s2cForwarded: number;
  handshakeBytes: number | null;
  threshold: number | null;
  /** performance.now() when the threshold was reached (the link stalled there until the reset). */
  thresholdAt: number | null;
  /** With a gate: whether it opened before the limit. */
  gateOpened: boolean | null;
  /** Server→client frame types forwarded before the reset, in order. */
  s2cTypes: string[];
}

const PREFIX = 4;

/** Cuts raw frames (length prefix included) out of a byte stream, without decoding them. */
class Splitter {
  private pending: Buffer = Buffer.alloc(0);

  push(d: Buffer): Buffer[] {
    let all = this.pending.length ? Buffer.concat([this.pending, d]) : d;
    const out: Buffer[] = [];
    while (all.length >= PREFIX) {
      const len = PREFIX + all.readUInt32BE(0);
      if (all.length < len) break;
      out.push(all.subarray(0, len));
      all = all.subarray(len);
    }
    this.pending = all;
    return out;
  }
}

function headerOf(raw: Buffer): { type: string; index?: unknown; segments?: unknown } {
  try {
    return decodeFrameBody(raw.subarray(PREFIX)).header;
  } catch {
    return { type: '<undecodable>' };
  }
}

export class ResetProxy {
  private readonly server: net.Server;
  private client: net.Socket | null = null;
  private upstream: net.Socket | null = null;
  private readonly c2s = new Splitter();
  private readonly s2c = new Splitter();
  private c2sForwarded = 0;
  private c2sRead = 0;
  private s2cForwarded = 0;
  private handshakeBytes: number | null = null;
  private threshold: number | null = null;
  private thresholdAt: number | null = null;
  private gateOpened: boolean | null = null;
  /** Set at the threshold: nothing more goes to the server. */
  private stalled = false;
  /** With holdAfterClientFrame, once that frame went: held `dsegment` frames by index, and the indexes asked for. */
  private holding = false;
  private readonly held = new Map<number, Buffer>();
  private readonly wanted = new Set<number>();
  /** Connections passed straight through (passLater), closed with the proxy. */
  private readonly passed: net.Socket[] = [];
  /** `dsegment` frames held back, and let through on a `dwant`, so far. */
  heldCount = 0;
  releasedCount = 0;
  readonly s2cTypes: string[] = [];
  private record: ResetRecord | null = null;
  private resolveReset!: (r: ResetRecord) => void;
  /** Resolves when the proxy resets the connection. */
  readonly resetDone: Promise<ResetRecord>;
  /** Set when a side closed on its own before any reset (the proxy then closes the other). */
  closedWithoutReset = false;

  private constructor(
    private readonly target: { host: string; port: number },
    private readonly plan: ResetPlan,
  ) {
    this.resetDone = new Promise((resolve) => {
      this.resolveReset = resolve;
    });
    this.server = net.createServer((socket) => this.accept(socket));
  }

  static async listen(target: { host: string; port: number }, plan: ResetPlan = {}): Promise<ResetProxy> {
    const p = new ResetProxy(target, plan);
    await new Promise<void>((resolve, reject) => {
      p.server.once('error', reject);
      p.server.listen(0, '127.0.0.1', () => resolve());
    });
    return p;
  }

  address(): { host: string; port: number } {
    const a = this.server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  /** The reset, once it happened. */
  get resetRecord(): ResetRecord | null {
    return this.record;
  }

  private accept(client: net.Socket): void {
    if (this.client) {
      if (!this.plan.passLater) return void client.resetAndDestroy();
      const up = net.connect(this.target);
      this.passed.push(client, up);
      for (const [x, y] of [
        [client, up],
        [up, client],
      ] as const) {
        x.on('error', () => y.destroy());
        x.on('close', () => y.destroy());
        x.pipe(y);
      }
      return;
    }
    if (!this.plan.passLater) this.server.close(); // one connection per proxy
    this.client = client;
    client.pause();
    const upstream = net.connect(this.target);
    this.upstream = upstream;
    const closed = () => {
      if (this.record) return; // after a reset, reset() deals with both sides
      this.closedWithoutReset = true;
      client.destroy();
      upstream.destroy();
    };
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
    client.on('close', closed);
    upstream.on('close', closed);
    upstream.once('connect', () => {
      upstream.setNoDelay(true);
      client.setNoDelay(true);
      client.resume();
    });
    client.on('data', (d: Buffer) => this.fromClient(d));
    upstream.on('data', (d: Buffer) => this.fromServer(d));
  }

  private fromClient(d: Buffer): void {
    if (this.record || this.stalled) return;
    this.c2sRead += d.length;
    for (const raw of this.c2s.push(d)) {
      if (this.record || this.stalled) return;
      // The handshake is every frame before the first segment: hello, session, and the first
      // offload request, which the client sends as soon as it hears `accepted`.
      const h = headerOf(raw);
      if (this.handshakeBytes === null && h.type === 'segment') {
        this.handshakeBytes = this.c2sForwarded;
        if (this.plan.c2sAt) this.threshold = this.plan.c2sAt(this.handshakeBytes);
      }
      if (this.holding && h.type === 'dsegment' && typeof h.index === 'number' && !this.wanted.has(h.index)) {
        this.held.set(h.index, raw);
        this.heldCount++;
        continue;
      }
      this.forward(raw);
      if (h.type === this.plan.holdAfterClientFrame) this.holding = true;
    }
  }

  /** Sends one client frame on, or the part of it up to the threshold, and then stalls and resets. */
  private forward(raw: Buffer): void {
    if (!this.upstream) return;
    if (this.threshold === null || this.c2sForwarded + raw.length < this.threshold) {
      this.upstream.write(raw);
      this.c2sForwarded += raw.length;
      return;
    }
    const part = raw.subarray(0, this.threshold - this.c2sForwarded);
    if (part.length) this.upstream.write(part);
    this.c2sForwarded += part.length;
    this.stalled = true;
    this.thresholdAt = performance.now();
    if (!this.plan.gate) {
      this.reset(this.plan.mode ?? 'both', 'c2s-threshold');
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), this.plan.gateLimitMs ?? 15_000);
    });
    void Promise.race([
      this.plan.gate(this).then(
        () => true,
        () => false,
      ),
      limit,
    ]).then((opened) => {
      clearTimeout(timer);
      this.gateOpened = opened;
      this.reset(this.plan.mode ?? 'both', 'c2s-threshold');
    });
  }

  private fromServer(d: Buffer): void {
    if (this.record || !this.client) return;
    for (const raw of this.s2c.push(d)) {
      if (this.record) return;
      const h = headerOf(raw);
      const type = h.type;
      if (this.plan.resetOnServerFrame === type) {
        this.reset(this.plan.mode ?? 'both', 'server-frame');
        return;
      }
      this.client.write(raw);
      this.s2cForwarded += raw.length;
      this.s2cTypes.push(type);
      for (const w of this.typeWaiters.get(type) ?? []) w();
      this.typeWaiters.delete(type);
      if (type === 'dwant' && Array.isArray(h.segments))
        for (const i of h.segments as number[]) {
          this.wanted.add(i);
          const held = this.held.get(i);
          if (held) {
            this.held.delete(i);
            this.releasedCount++;
            this.forward(held);
          }
        }
      if (this.plan.resetAfterServerFrame === type) {
        // (on the next turn: the frame just written goes out first)
        setImmediate(() => this.reset(this.plan.mode ?? 'both', 'server-frame'));
        return;
      }
    }
  }

  private readonly typeWaiters = new Map<string, Array<() => void>>();

  /** Resolves once the server has sent (and the proxy forwarded) a frame of this type. */
  serverSent(type: string): Promise<void> {
    if (this.s2cTypes.includes(type)) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.typeWaiters.get(type) ?? [];
      list.push(resolve);
      this.typeWaiters.set(type, list);
    });
  }

  /** Resets the connection now (idempotent); returns the record. */
  reset(mode: ResetMode = 'both', trigger: ResetRecord['trigger'] = 'manual'): ResetRecord {
    if (this.record) return this.record;
    this.record = {
      at: performance.now(),
      mode,
      trigger,
      c2sForwarded: this.c2sForwarded,
      c2sRead: this.c2sRead,
      s2cForwarded: this.s2cForwarded,
      handshakeBytes: this.handshakeBytes,
      threshold: this.threshold,
      thresholdAt: this.thresholdAt,
      gateOpened: this.gateOpened,
      s2cTypes: [...this.s2cTypes],
    };
    const client = this.client;
    const upstream = this.upstream;
    if (mode === 'both' || !upstream || upstream.destroyed) {
      client?.resetAndDestroy();
      upstream?.resetAndDestroy();
    } else {
      upstream.once('close', () => client?.resetAndDestroy());
      upstream.resetAndDestroy();
    }
    this.resolveReset(this.record);
    return this.record;
  }

  close(): void {
    if (this.server.listening) this.server.close();
    for (const x of this.passed) x.destroy();
    this.client?.destroy();
    this.upstream?.destroy();
  }
}
