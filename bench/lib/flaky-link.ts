/**
 * A link between a vmsynth client and server that drops, for the resume
 * tests and the first-response bench's drops: a TCP proxy that accepts any number of connections one after the
 * other, forwards whole frames both ways, and cuts the current connection
 * with real resets (RST) when told: at a count of segment bytes forwarded
 * (cutting the segment that crosses it partway), when the server sends a
 * frame of some type, or by hand. While the link is down, new connections
 * are reset at once. Each upstream connection may come from another local
 * address (127.0.0.1, then 127.0.0.2, ...), so the server sees the client
 * move.
 *
 * It counts what the server was sent: every segment frame forwarded whole
 * (by index), the segment payload bytes forwarded (partial ones included),
 * and every offload frame (by id). No lib code is involved but the frame
 * header decoder.
 */
import net from 'node:net';
import { decodeFrameBody } from '../../lib/protocol/frames.js';

const PREFIX = 4;

/** Cuts raw frames (length prefix included) out of a byte stream. */
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

function headerOf(raw: Buffer): Record<string, unknown> {
  try {
    return decodeFrameBody(raw.subarray(PREFIX)).header;
  } catch {
    return { type: '<undecodable>' };
  }
}

interface Cut {
  /** Segment payload bytes forwarded (all connections) at which to cut. */
  atSegmentBytes?: number;
  /** Cut when the server sends a frame this returns true for, before it is forwarded. */
  onServerFrame?: (h: Record<string, unknown>) => boolean;
  /** Keep the link down this long after the cut (new connections are reset). */
  downMs: number;
  resolve: () => void;
}

export class FlakyLink {
  private readonly server: net.Server;
  private current: { client: net.Socket; upstream: net.Socket } | null = null;
  private downUntil = 0;
  private cuts: Cut[] = [];
  connections = 0;
  drops = 0;
  /** Segment frames forwarded whole to the server, by index: how many times. */
  readonly segmentsForwarded = new Map<number, number>();
  /** Segment payload bytes forwarded to the server, partial frames included. */
  segmentBytes = 0;
  /** Offload frames forwarded whole, by id: how many times. */
  readonly offloadsForwarded = new Map<number, number>();
  /** Every frame type the server sent, in order, with the connection it went on. */
  readonly s2c: Array<{ conn: number; type: string }> = [];
  /** The server-side source address of each connection. */
  readonly sources: string[] = [];

  private constructor(
    private readonly target: { host: string; port: number },
    private readonly localAddresses: string[],
  ) {
    this.server = net.createServer((s) => this.accept(s));
  }

  /** A link to `target`, listening on `listenHost`; upstream connections come from `localAddresses` in turn. */
  static async open(
    target: { host: string; port: number },
    localAddresses = ['127.0.0.1'],
    listenHost = '127.0.0.1',
  ): Promise<FlakyLink> {
    const l = new FlakyLink(target, localAddresses);
    await new Promise<void>((r) => l.server.listen(0, listenHost, r));
    return l;
  }

  get address(): string {
    const a = this.server.address() as net.AddressInfo;
    return `${a.address}:${a.port}`;
  }

  /** Cuts when `segmentBytes` reaches `at`; resolves at the cut. */
  cutAtSegmentBytes(at: number, downMs = 0): Promise<void> {
    return new Promise((resolve) => this.cuts.push({ atSegmentBytes: at, downMs, resolve }));
  }

  /** Cuts when the server sends a frame `match` accepts (it is not forwarded); resolves at the cut. */
  cutOnServerFrame(match: (h: Record<string, unknown>) => boolean, downMs = 0): Promise<void> {
    return new Promise((resolve) => this.cuts.push({ onServerFrame: match, downMs, resolve }));
  }

  /** Cuts the current connection now, and keeps the link down for `downMs`. */
  cut(downMs = 0, pair = this.current): void {
    this.drops++;
    this.downUntil = Date.now() + downMs;
    if (this.current === pair) this.current = null;
    pair?.client.resetAndDestroy();
    pair?.upstream.resetAndDestroy();
  }

  private fire(cut: Cut, pair = this.current): void {
    this.cuts = this.cuts.filter((c) => c !== cut);
    this.cut(cut.downMs, pair);
    cut.resolve();
  }

  private accept(client: net.Socket): void {
    client.on('error', () => undefined);
    if (Date.now() < this.downUntil) {
      client.resetAndDestroy();
      return;
    }
    const n = this.connections++;
    const localAddress = this.localAddresses[n % this.localAddresses.length]!;
    this.sources.push(localAddress);
    client.pause();
    const upstream = net.connect({ ...this.target, localAddress });
    upstream.on('error', () => undefined);
    const pair = { client, upstream };
    this.current = pair;
    const live = () => this.current === pair;
    const closed = () => {
      if (!live()) return;
      this.current = null;
      client.destroy();
      upstream.destroy();
    };
    client.on('close', closed);
    upstream.on('close', closed);
    upstream.once('connect', () => {
      upstream.setNoDelay(true);
      client.setNoDelay(true);
      client.resume();
    });
    const c2s = new Splitter();
    const s2c = new Splitter();
    client.on('data', (d: Buffer) => {
      for (const raw of c2s.push(d)) {
        if (!live()) return;
        this.fromClient(raw, pair);
      }
    });
    upstream.on('data', (d: Buffer) => {
      for (const raw of s2c.push(d)) {
        if (!live()) return;
        const h = headerOf(raw);
        const cut = this.cuts.find((c) => c.onServerFrame?.(h));
        if (cut) return this.fire(cut, pair);
        this.s2c.push({ conn: n, type: String(h.type) });
        client.write(raw);
      }
    });
  }

  private fromClient(raw: Buffer, pair: { client: net.Socket; upstream: net.Socket }): void {
    const upstream = pair.upstream;
    const h = headerOf(raw);
    if (h.type !== 'segment') {
      if (h.type === 'offload')
        this.offloadsForwarded.set(h.id as number, (this.offloadsForwarded.get(h.id as number) ?? 0) + 1);
      upstream.write(raw);
      return;
    }
    const payload = Number(h.payloadBytes ?? 0);
    const headerBytes = raw.length - payload;
    const cut = this.cuts.find(
      (c) => c.atSegmentBytes !== undefined && this.segmentBytes + payload >= c.atSegmentBytes,
    );
    if (cut) {
      const k = cut.atSegmentBytes! - this.segmentBytes;
      upstream.write(raw.subarray(0, headerBytes + k));
      this.segmentBytes += k;
      // Nothing more goes on this connection; the partial frame reaches the server before the reset.
      this.cuts = this.cuts.filter((c) => c !== cut);
      this.current = null;
      setTimeout(() => this.fire({ ...cut, resolve: cut.resolve }, pair), 20);
      return;
    }
    upstream.write(raw);
    this.segmentBytes += payload;
    const index = h.index as number;
    this.segmentsForwarded.set(index, (this.segmentsForwarded.get(index) ?? 0) + 1);
  }

  close(): void {
    this.server.close();
    this.current?.client.destroy();
    this.current?.upstream.destroy();
  }
}
