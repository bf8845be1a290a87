/**
 * Frames of the vmsynth wire protocol (docs/protocol.md): how messages are
 * cut out of a TCP byte stream, and capped before they are buffered.
 *
 *   u32 big-endian L | header: L - P bytes of MessagePack | payload: P bytes
 *
 * The header is a MessagePack map (plain: no msgpackr records or extension
 * types, so any MessagePack decoder reads it) with a string `type` and, when
 * the frame has a payload, its size P as `payloadBytes`. Payloads (segments,
 * the overlay manifest, offload bodies) are raw bytes, never re-encoded.
 *
 * FrameDecoder is pure: feed it bytes in any split, it yields whole frames,
 * and it refuses a frame larger than the caps as soon as its length prefix
 * arrives, before buffering it.
 */
import { VmsynthError } from '../core/errors.js';
import { NotPlainError, packr, plainValueEnd, unpackOne } from '../core/msgpack.js';

/** Largest header (MessagePack map) a peer may send. */
export const MAX_HEADER_BYTES = 64 << 10;
/** Largest frame (header + payload): the largest payload type is the overlay manifest. */
export const MAX_FRAME_BYTES = 512 << 20;
const PREFIX = 4;
/** Frames at least this large are received into one buffer of their size (see FrameDecoder.big). */
const BIG_FRAME = 256 << 10;

export interface FrameHeader {
  type: string;
  payloadBytes?: number;
  [field: string]: unknown;
}

/** A header to send: its type and fields (encodeFrame adds payloadBytes). */
export type OutgoingHeader = { type: string } & Record<string, unknown>;

export interface Frame {
  header: FrameHeader;
  payload: Buffer;
}

export interface FrameLimits {
  maxFrameBytes?: number;
  maxHeaderBytes?: number;
}

/** "an offload message", "a hello frame": a message type (as the peer sent it, cut to 40 characters) with its article. */
export function aType(type: string, noun = 'message'): string {
  const t = type.slice(0, 40);
  return `${/^[aeiou]/i.test(t) ? 'an' : 'a'} ${t} ${noun}`;
}

function protocolError(message: string, details: Record<string, unknown> = {}): VmsynthError {
  return new VmsynthError('VMS_PROTOCOL', message, { details });
}

/** Encodes one frame as buffers to write in order (prefix + header, then the payload untouched). */
export function encodeFrame(header: OutgoingHeader, payload?: Uint8Array): Buffer[] {
  const p = payload?.length ?? 0;
  const h = packr.pack(p > 0 ? { ...header, payloadBytes: p } : header);
  if (h.length > MAX_HEADER_BYTES)
    throw new VmsynthError(
      'VMS_FRAME_TOO_LARGE',
      `${aType(header.type, 'header')} of ${h.length} bytes exceeds ${MAX_HEADER_BYTES}`,
    );
  const head = Buffer.allocUnsafe(PREFIX + h.length);
  head.writeUInt32BE(h.length + p, 0);
  h.copy(head, PREFIX);
  return p > 0 ? [head, Buffer.from(payload!.buffer, payload!.byteOffset, payload!.byteLength)] : [head];
}

/** Parses the bytes of one frame (without its length prefix). */
export function decodeFrameBody(body: Buffer, limits: FrameLimits = {}): Frame {
  // The header's size is not on the wire: it is the frame minus the payload, and the payload
  // size is in the header. Decode the map from the front, then check that it ends exactly there.
  const window = body.subarray(0, Math.min(body.length, limits.maxHeaderBytes ?? MAX_HEADER_BYTES));
  let headerBytes: number;
  try {
    headerBytes = plainValueEnd(window);
  } catch (err) {
    if (!(err instanceof NotPlainError)) throw err;
    throw protocolError(`a frame header is not plain MessagePack: ${err.message}`, { reason: 'header-encoding' });
  }
  let header: unknown;
  try {
    header = unpackOne(window.subarray(0, headerBytes));
  } catch (err) {
    throw protocolError(`a frame header is not valid MessagePack (${(err as Error).message})`, {
      reason: 'header-encoding',
    });
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header) || Buffer.isBuffer(header))
    throw protocolError('a frame header is not a MessagePack map');
  const h = header as Record<string, unknown>;
  if (typeof h.type !== 'string' || h.type.length === 0) throw protocolError('a frame header has no "type" string');
  const p = h.payloadBytes ?? 0;
  if (!Number.isSafeInteger(p) || (p as number) < 0)
    throw protocolError(`${aType(h.type, 'frame')} has an invalid payloadBytes`, { type: h.type });
  if (headerBytes === 0 || headerBytes + (p as number) !== body.length) {
    throw protocolError(
      `${aType(h.type, 'frame')} of ${body.length} bytes does not split into its header and a ${p as number}-byte payload`,
      { type: h.type },
    );
  }
  return { header: h as FrameHeader, payload: body.subarray(headerBytes) };
}

/** Cuts frames out of a byte stream. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private maxFrame: number;
  private failed: VmsynthError | null = null;
  /** The frame whose length was read has been let in by onFrameStart. */
  private started = false;
  /**
   * A large frame being received, in one buffer of its exact size: each read is copied in and
   * dropped, so the frame costs its own size and no more, and nothing of it outlives release().
   * (Kept as the socket's 64 KiB reads and joined at the end, a 512 MiB manifest held 1 GiB at
   * its peak, and the reads' memory went back to the system only after a garbage collection.)
   */
  private big: { buf: Buffer; filled: number } | null = null;
  /**
   * Called once per frame, with its length, as soon as the length prefix is read and before the
   * frame is buffered; may throw a VmsynthError to refuse it (a budget of bytes, for example).
   */
  onFrameStart: ((bytes: number) => void) | null = null;

  constructor(private readonly limits: FrameLimits = {}) {
    this.maxFrame = limits.maxFrameBytes ?? MAX_FRAME_BYTES;
  }

  /** Changes the frame cap as the conversation moves on (small before hello, a manifest's size for the session, a segment's after). */
  setMaxFrameBytes(n: number): void {
    this.maxFrame = n;
  }

  /** Bytes held for a frame not yet complete. */
  get pending(): number {
    return this.buffered + (this.big?.filled ?? 0);
  }

  /**
   * The frame being received, cut short: its header (when all of it has arrived) and the part of
   * its payload that has. A receiver whose connection dropped keeps a segment's received part this
   * way, so the sender need not send those bytes again. Null when nothing of a frame is buffered, or
   * its header has not all arrived or is not valid.
   */
  partialFrame(): { header: FrameHeader; payload: Buffer } | null {
    if (this.failed) return null;
    let bytes: Buffer;
    if (this.big) bytes = this.big.buf.subarray(0, this.big.filled);
    else if (this.buffered > PREFIX) bytes = Buffer.concat(this.chunks);
    else return null;
    const body = bytes.subarray(PREFIX);
    try {
      const end = plainValueEnd(
        body.subarray(0, Math.min(body.length, this.limits.maxHeaderBytes ?? MAX_HEADER_BYTES)),
      );
      const header = unpackOne(body.subarray(0, end));
      if (typeof header !== 'object' || header === null || Array.isArray(header) || header instanceof Uint8Array)
        return null;
      const h = header as FrameHeader;
      if (typeof h.type !== 'string') return null;
      return { header: h, payload: body.subarray(end) };
    } catch {
      return null; // the header has not all arrived, or is not plain MessagePack
    }
  }

  /** The error that ended the stream, if one has: set as soon as it is found, even when the push that found it returned frames. */
  get error(): VmsynthError | null {
    return this.failed;
  }

  /** Adds bytes to the stream; next() cuts frames out of them. Throws the error that ended the stream, if one has. */
  feed(data: Buffer): void {
    if (this.failed) throw this.failed;
    if (this.big && this.big.filled < this.big.buf.length) {
      const k = Math.min(data.length, this.big.buf.length - this.big.filled);
      data.copy(this.big.buf, this.big.filled, 0, k);
      this.big.filled += k;
      data = data.subarray(k);
    }
    // (Empty chunks are not kept: nothing then walks over them.)
    if (data.length > 0) {
      this.chunks.push(data);
      this.buffered += data.length;
    }
  }

  /**
   * The next whole frame, or null until more bytes come. Each frame is checked against the cap in
   * force when it is cut, so a receiver that raises the cap after a frame (hello, then the session's
   * manifest) gets the new cap for the frame after it, however TCP split or joined the two. (The cap
   * was applied to every frame of a read at once: a hello and a manifest arriving in one read failed
   * with VMS_FRAME_TOO_LARGE, the same bytes 100 ms apart did not.) Throws VMS_FRAME_TOO_LARGE or
   * VMS_PROTOCOL; the stream is then unusable, and every later call throws the same error.
   */
  next(): Frame | null {
    if (this.failed) throw this.failed;
    try {
      if (this.big) {
        if (this.big.filled < this.big.buf.length) return null;
        const whole = this.big.buf;
        this.big = null;
        this.started = false;
        return decodeFrameBody(whole.subarray(PREFIX), this.limits);
      }
      if (this.buffered < PREFIX) return null;
      const len = this.peekLength();
      if (len > this.maxFrame)
        throw new VmsynthError('VMS_FRAME_TOO_LARGE', `a frame of ${len} bytes exceeds the limit of ${this.maxFrame}`, {
          details: { bytes: len, limit: this.maxFrame },
        });
      if (len === 0) throw protocolError('an empty frame');
      if (!this.started) {
        this.onFrameStart?.(PREFIX + len);
        this.started = true;
      }
      if (this.buffered < PREFIX + len) {
        if (PREFIX + len >= BIG_FRAME) this.startBig(PREFIX + len);
        return null;
      }
      this.started = false;
      const body = this.take(PREFIX + len).subarray(PREFIX);
      return decodeFrameBody(body, this.limits);
    } catch (err) {
      if (err instanceof VmsynthError) {
        this.failed = err;
        this.release();
      }
      throw err;
    }
  }

  /**
   * Adds bytes; returns every frame they complete, under the cap in force now. Frames that came whole
   * before an error are never dropped because of what follows them: a push that completes frames and
   * then meets the error returns the frames, sets `error`, and the next push throws it. (It threw at
   * once, losing them, so the frames a stream yielded depended on how TCP cut it; fuzzing found a
   * hello followed by a bad frame in one read losing the hello.)
   */
  push(data: Buffer): Frame[] {
    this.feed(data);
    const frames: Frame[] = [];
    try {
      for (let f = this.next(); f; f = this.next()) frames.push(f);
    } catch (err) {
      if (!(err instanceof VmsynthError) || frames.length === 0) throw err;
    }
    return frames;
  }

  /** Moves what is buffered of a large frame (all of it is that frame's) into one buffer of the frame's size. */
  private startBig(n: number): void {
    const buf = Buffer.allocUnsafeSlow(n);
    let filled = 0;
    for (const c of this.chunks) {
      c.copy(buf, filled);
      filled += c.length;
    }
    this.chunks = [];
    this.buffered = 0;
    this.big = { buf, filled };
  }

  /** Drops every buffered byte (the connection is gone): nothing of a half-received frame outlives it. */
  release(): void {
    this.chunks = [];
    this.buffered = 0;
    this.big = null;
  }

  private peekLength(): number {
    // A prefix cut across chunks is joined into the first chunk, copying its own bytes only, so it
    // is read in constant time however the stream was cut. (Concatenating every buffered chunk on
    // each push made a frame fed a byte at a time quadratic: found by fuzzing, a 2 KB stream took
    // 250 ms that way; a 16 KiB frame took 15 s, a 64 KiB pre-hello frame minutes.)
    while (this.chunks[0]!.length < PREFIX) {
      const a = this.chunks[0]!;
      const b = this.chunks[1]!; // there is one: at least PREFIX bytes are buffered, in non-empty chunks
      const k = Math.min(b.length, PREFIX - a.length);
      const joined = Buffer.concat([a, b.subarray(0, k)]);
      if (k === b.length) this.chunks.splice(0, 2, joined);
      else this.chunks.splice(0, 2, joined, b.subarray(k));
    }
    return this.chunks[0]!.readUInt32BE(0);
  }

  /** Removes and returns the next n buffered bytes (one copy at most). */
  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let done = 0;
      let used = 0;
      while (done < n) {
        const c = this.chunks[used]!;
        const k = Math.min(c.length, n - done);
        c.copy(out, done, 0, k);
        done += k;
        if (k === c.length) used++;
        else this.chunks[used] = c.subarray(k);
      }
      // One splice for the chunks used up: shifting them one by one is quadratic on a long array
      // (measured: 200,000 one-byte chunks, 31 s).
      this.chunks.splice(0, used);
    }
    this.buffered -= n;
    return out;
  }
}
