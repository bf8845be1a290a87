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
import { plainValueEnd, unpackOne } from '../../lib/core/msgpack.js';
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

/** A piece of the stream: its bytes, how many of them are segment payload, and the frame it ends, if it ends one. */
interface Piece {
  bytes: Buffer;
  segmentBytes: number;
  frameDone: Record<string, unknown> | null;
}

/**
 * Follows frames through a byte stream without holding them: each fed chunk comes back as pieces,
 * split where a frame's header ends and where a frame ends, so a cut can fall on any byte.
 */
export class FrameTracker {
  private prefix = Buffer.alloc(0);
  /** Bytes of the current frame's body still to come (after the prefix). */
  private left = 0;
  private head: Buffer[] = [];
  private header: Record<string, unknown> | null = null;

  feed(d: Buffer): Piece[] {
    const out: Piece[] = [];
    while (d.length > 0) {
      if (this.left === 0 && this.header === null && this.head.length === 0) {
        // The length prefix.
        const k = Math.min(d.length, PREFIX - this.prefix.length);
        this.prefix = Buffer.concat([this.prefix, d.subarray(0, k)]);
        out.push({ bytes: d.subarray(0, k), segmentBytes: 0, frameDone: null });
        d = d.subarray(k);
        if (this.prefix.length === PREFIX) {
          this.left = this.prefix.readUInt32BE(0);
          this.prefix = Buffer.alloc(0);
          this.head = [Buffer.alloc(0)];
        }
        continue;
      }
      if (this.header === null) {
        // The header: kept until it decodes (a map at the front of the body).
        const k = Math.min(d.length, this.left);
        const part = d.subarray(0, k);
        const have = Buffer.concat([...this.head, part]);
        const h = headerOf(Buffer.concat([Buffer.alloc(PREFIX), have]), true);
        if (!h) {
          this.head = [have];
          this.left -= k;
          out.push({ bytes: part, segmentBytes: 0, frameDone: null });
          d = d.subarray(k);
          if (this.left === 0) this.endFrame(out, { type: '<undecodable>' });
          continue;
        }
        // The header ends inside `part`: what follows it is payload.
        const headerEnd = h.end - (have.length - part.length);
        out.push({ bytes: part.subarray(0, headerEnd), segmentBytes: 0, frameDone: null });
        this.left -= headerEnd;
        this.header = h.value as Record<string, unknown>;
        this.head = [];
        d = d.subarray(headerEnd);
        if (this.left === 0) this.endFrame(out, this.header);
        continue;
      }
      const k = Math.min(d.length, this.left);
      this.left -= k;
      out.push({ bytes: d.subarray(0, k), segmentBytes: this.header.type === 'segment' ? k : 0, frameDone: null });
      d = d.subarray(k);
      if (this.left === 0) this.endFrame(out, this.header);
    }
    return out;
  }

  private endFrame(out: Piece[], header: Record<string, unknown>): void {
    out[out.length - 1]!.frameDone = header;
    this.header = null;
    this.head = [];
  }
}

function headerOf(raw: Buffer): Record<string, unknown>;
function headerOf(raw: Buffer, partial: true): { value: unknown; end: number } | null;
function headerOf(raw: Buffer, partial = false): Record<string, unknown> | { value: unknown; end: number } | null {
  if (partial) {
    try {
      const body = raw.subarray(PREFIX);
      const end = plainValueEnd(body);
      return { value: unpackOne(body.subarray(0, end)), end };
    } catch {
      return null;
    }
  }
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
    const c2s = new FrameTracker();
    const s2c = new Splitter();
    client.on('data', (d: Buffer) => {
      if (live()) this.fromClient(d, c2s, pair);
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

  /**
   * Client bytes go on as they come (cut-through, as a link forwards them): a cut at a segment byte
   * count forwards exactly up to it, and what came after it is lost with the link.
   */
  private fromClient(d: Buffer, tracker: FrameTracker, pair: { client: net.Socket; upstream: net.Socket }): void {
    for (const piece of tracker.feed(d)) {
      if (piece.segmentBytes > 0) {
        const cut = this.cuts.find(
          (c) => c.atSegmentBytes !== undefined && this.segmentBytes + piece.segmentBytes >= c.atSegmentBytes,
        );
        if (cut) {
          const k = cut.atSegmentBytes! - this.segmentBytes;
          pair.upstream.write(piece.bytes.subarray(0, k));
          this.segmentBytes += k;
          // Nothing more goes on this connection; what was forwarded reaches the server before the reset.
          this.cuts = this.cuts.filter((c) => c !== cut);
          this.current = null;
          setTimeout(() => this.fire(cut, pair), 20);
          return;
        }
        this.segmentBytes += piece.segmentBytes;
      }
      pair.upstream.write(piece.bytes);
      const done = piece.frameDone;
      if (done?.type === 'segment') {
        const index = done.index as number;
        this.segmentsForwarded.set(index, (this.segmentsForwarded.get(index) ?? 0) + 1);
      } else if (done?.type === 'offload') {
        const id = done.id as number;
        this.offloadsForwarded.set(id, (this.offloadsForwarded.get(id) ?? 0) + 1);
      }
    }
  }

  close(): void {
    this.server.close();
    this.current?.client.destroy();
    this.current?.upstream.destroy();
  }
}
