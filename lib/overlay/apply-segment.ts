/**
 * Applying one overlay segment: the one place segment bytes are trusted,
 * rebuilt into chunks and written. Every path that applies or checks a
 * segment comes here: offline apply and verify (image-rebuild.ts), the
 * synthesis server's streaming pipeline (synth/segment-pipeline.ts), on a
 * worker thread (segment-worker.ts) or on the caller's own.
 *
 *   openSegment     checks a segment's compressed bytes against the SHA-256
 *                   the signed manifest names, then decompresses them (one
 *                   zstd frame, no larger than the manifest says);
 *   SegmentApplier  per thread: the files and reused buffers that `apply`
 *                   (write the segment's XOR and RAW payloads and its BASE
 *                   references into the output images) and `verify` (check
 *                   each BASE, XOR and RAW chunk's rebuilt content against
 *                   the digest its segment carries) need.
 *
 * ZERO chunks and SELF references are left to the caller: a SELF target may
 * live in a segment not yet applied (streaming), and ZERO chunks need no
 * bytes where the image is served through a chunk map.
 *
 * Speed: writes are coalesced into one pwritev per run of neighbouring
 * chunks, RAW payloads straight from the decompressed segment; decompression
 * goes into one reused buffer (fresh 1 MB buffers cost more in page faults
 * than zstd itself: 400 MB of segments in 142-358 ms fresh, 59 ms reused).
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { asVmsynthError, VmsynthError, type ErrorCode } from '../core/errors.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { ChunkFile, sha256, xorAt, xorInto } from './chunk-io.js';
import { ChunkKind, HASH_BYTES, hasDigest, segmentDigests, type SegmentInfo } from './format.js';
import { asBuffer, RECORD } from './records.js';
import { decompressFrame, decompressInto } from './zstd-frame.js';

/** The part of a segment's manifest entry that applying it needs. */
export type SegmentEntry = Pick<
  SegmentInfo,
  'offset' | 'bytes' | 'sha256' | 'rawBytes' | 'count' | 'chunks' | 'digests'
>;

function corrupt(index: number, check: string, message: string, cause?: unknown): VmsynthError {
  return new VmsynthError('VMS_OVERLAY_CORRUPT', `segment ${index} ${message}`, {
    cause,
    details: { segment: index, check },
  });
}

/**
 * Checks a compressed segment against its SHA-256 and decompresses it (to
 * rawBytes bytes, no more); throws VMS_OVERLAY_CORRUPT (details.check:
 * "sha256", "decompress" or "size"). With `into` (at least rawBytes long)
 * the bytes land there.
 */
export function openSegment(
  index: number,
  s: Pick<SegmentInfo, 'sha256' | 'rawBytes'>,
  compressed: Uint8Array,
  into?: Buffer,
): Buffer {
  if (!sha256(compressed).equals(asBuffer(s.sha256))) throw corrupt(index, 'sha256', 'does not match its SHA-256');
  let raw: Buffer;
  try {
    // Its digest matched the signed manifest's: the frame is the builder's, so no frame checks.
    raw =
      into && into.length >= s.rawBytes
        ? into.subarray(0, decompressInto(compressed, into.subarray(0, s.rawBytes)))
        : decompressFrame(compressed, s.rawBytes);
  } catch (err) {
    throw corrupt(
      index,
      'decompress',
      `does not decompress to its ${s.rawBytes} bytes (${(err as Error).message})`,
      err,
    );
  }
  if (raw.length !== s.rawBytes)
    throw corrupt(index, 'size', `decompresses to ${raw.length} bytes, expected ${s.rawBytes}`);
  return raw;
}

const BLOCK = 1 << 20;
// The record layout and kinds as module constants: the hot loop reads them per record.
const {
  BYTES: R_BYTES,
  IMAGE: R_IMAGE,
  KIND: R_KIND,
  REF_IMAGE: R_REF_IMAGE,
  INDEX: R_INDEX,
  REF_INDEX: R_REF_INDEX,
  PAYLOAD_OFFSET: R_PAYLOAD,
} = RECORD;
const { BASE, XOR, RAW } = ChunkKind;
/** pwritev takes at most IOV_MAX (1024) buffers. */
const MAX_IOV = 1000;

/**
 * Writes runs of neighbouring chunks of one image with one pwritev each.
 * RAW payloads are written from the decompressed segment (neighbouring
 * payloads merge into one buffer); XOR results and copied base chunks go to
 * `built` first, which a run fills at most once.
 */
class RunWriter {
  private readonly builtBuf = Buffer.allocUnsafeSlow(BLOCK);
  private builtUsed = 0;
  private readonly iov: Buffer[] = [];
  private image = -1;
  private start = 0;
  private count = 0;
  private cur: Buffer | null = null;
  private curStart = 0;
  private curEnd = 0;

  constructor(private readonly out: readonly ChunkFile[]) {}

  /** Starts a new run unless chunk `index` of `image` extends this one (and there is room for it). */
  next(image: number, index: number): void {
    if (
      image === this.image &&
      index === this.start + this.count &&
      this.builtUsed < BLOCK &&
      this.iov.length < MAX_IOV
    )
      return;
    this.flush();
    this.image = image;
    this.start = index;
  }

  /** Appends bytes that stay valid until the flush (a payload in the raw segment). */
  append(buf: Buffer, start: number): void {
    if (this.cur === buf && this.curEnd === start) this.curEnd = start + CHUNK_SIZE;
    else {
      if (this.cur) this.iov.push(this.cur.subarray(this.curStart, this.curEnd));
      this.cur = buf;
      this.curStart = start;
      this.curEnd = start + CHUNK_SIZE;
    }
    this.count++;
  }

  /** The buffer content made here goes to: fill `built` at `builtAt`, then appendBuilt(). */
  get built(): Buffer {
    return this.builtBuf;
  }

  get builtAt(): number {
    return this.builtUsed;
  }

  appendBuilt(): void {
    this.append(this.builtBuf, this.builtUsed);
    this.builtUsed += CHUNK_SIZE;
  }

  flush(): void {
    if (this.count === 0) return;
    if (this.cur) this.iov.push(this.cur.subarray(this.curStart, this.curEnd));
    try {
      this.out[this.image]!.writevAt(this.iov, this.start * CHUNK_SIZE);
    } finally {
      this.reset();
    }
  }

  /** Drops the run (after a failed write, so the next segment starts clean). */
  reset(): void {
    this.iov.length = 0;
    this.cur = null;
    this.count = 0;
    this.builtUsed = 0;
    this.image = -1;
  }
}

/** Image files a SegmentApplier works on, memory then disk. */
export interface SegmentFiles {
  /** The overlay's segments file, for segments read from disk (offline apply and verify). */
  segments?: string;
  /** The base images: XOR deltas and BASE references read them. */
  base: string[];
  /** The output images (opened for writing): needed by apply, not by verify. */
  out?: string[];
}

/**
 * Verifies, decompresses and writes segments, one at a time, on the thread
 * that owns it. Buffers are reused from one segment to the next.
 */
export class SegmentApplier {
  private readonly base: ChunkFile[];
  private readonly out: ChunkFile[];
  private readonly runs: RunWriter;
  private readonly segFd: number;
  private compressed = Buffer.allocUnsafeSlow(BLOCK);
  private raw = Buffer.allocUnsafeSlow(BLOCK);
  private readonly content = Buffer.allocUnsafeSlow(CHUNK_SIZE);

  constructor(files: SegmentFiles) {
    const opened: ChunkFile[] = [];
    try {
      this.base = files.base.map((f) => opened[opened.push(new ChunkFile(f, 'r')) - 1]!);
      this.out = (files.out ?? []).map((f) => opened[opened.push(new ChunkFile(f, 'r+')) - 1]!);
      this.segFd = files.segments ? openSync(files.segments, 'r') : -1;
    } catch (err) {
      for (const f of opened) f.close();
      throw err;
    }
    this.runs = new RunWriter(this.out);
  }

  /** The segment's compressed bytes from the segments file, in a reused buffer. */
  private read(index: number, s: SegmentEntry): Buffer {
    if (this.segFd < 0) throw new VmsynthError('VMS_INTERNAL', 'this applier was given no segments file');
    if (this.compressed.length < s.bytes) this.compressed = Buffer.allocUnsafeSlow(s.bytes);
    const buf = this.compressed.subarray(0, s.bytes);
    let done = 0;
    while (done < s.bytes) {
      const n = readSync(this.segFd, buf, done, s.bytes - done, s.offset + done);
      if (n === 0) throw corrupt(index, 'size', 'is cut short: the segments file ends inside it');
      done += n;
    }
    return buf;
  }

  private open(index: number, s: SegmentEntry, compressed: Uint8Array | null): Buffer {
    if (this.raw.length < s.rawBytes) this.raw = Buffer.allocUnsafeSlow(s.rawBytes);
    return openSegment(index, s, compressed ?? this.read(index, s), this.raw);
  }

  /**
   * Checks segment `index` (given as received, or read from the segments
   * file) and writes its XOR and RAW payloads and its BASE references into
   * the output images. Nothing is written unless the segment checks out.
   */
  apply(index: number, s: SegmentEntry, compressed: Uint8Array | null = null): void {
    this.write(index, s, this.open(index, s, compressed));
  }

  /**
   * Writes segment `index` from raw bytes rebuilt by chunk lookaside
   * (thin.ts), which no segment SHA-256 covers: every BASE, XOR and RAW
   * chunk's content is checked against its digest first (the digests were
   * checked against the signed table hash), and nothing is written unless all
   * match.
   */
  applyRebuilt(index: number, s: SegmentEntry, raw: Uint8Array): void {
    if (raw.length !== s.rawBytes)
      throw corrupt(index, 'size', `rebuilt to ${raw.length} bytes, expected ${s.rawBytes}`);
    const buf = asBuffer(raw);
    this.checkChunks(index, s, buf);
    this.write(index, s, buf);
  }

  private write(index: number, s: SegmentEntry, raw: Buffer): void {
    if (this.out.length === 0) throw new VmsynthError('VMS_INTERNAL', 'this applier was given no output images');
    const rec = asBuffer(s.chunks);
    const runs = this.runs;
    try {
      for (let o = 0, end = s.count * R_BYTES; o < end; o += R_BYTES) {
        const kind = rec[o + R_KIND];
        if (kind !== XOR && kind !== RAW && kind !== BASE) continue;
        const image = rec[o + R_IMAGE]!;
        const chunk = rec.readUInt32LE(o + R_INDEX);
        runs.next(image, chunk);
        if (kind === RAW) {
          runs.append(raw, rec.readUInt32LE(o + R_PAYLOAD));
          continue;
        }
        // Built here: copied (the next chunk served from a base block may replace it), or XORed.
        const base = kind === BASE ? this.base[rec[o + R_REF_IMAGE]!]! : this.base[image]!;
        const at = base.cached(kind === BASE ? rec.readUInt32LE(o + R_REF_INDEX) : chunk);
        if (kind === BASE) base.cache.copy(runs.built, runs.builtAt, at, at + CHUNK_SIZE);
        else xorAt(runs.built, runs.builtAt, raw, rec.readUInt32LE(o + R_PAYLOAD), base.cache, at);
        runs.appendBuilt();
      }
      runs.flush();
    } catch (err) {
      runs.reset();
      throw new VmsynthError('VMS_INTERNAL', `segment ${index} could not be written (${(err as Error).message})`, {
        cause: err,
        details: { segment: index },
      });
    }
  }

  /**
   * Checks segment `index` from the segments file: its SHA-256, then every
   * BASE, XOR and RAW chunk's rebuilt content against the digest the segment
   * carries (VMS_OVERLAY_CORRUPT naming the chunk, details.check "chunk").
   */
  verify(index: number, s: SegmentEntry): void {
    this.checkChunks(index, s, this.open(index, s, null));
  }

  /** Checks every BASE, XOR and RAW chunk's content, rebuilt from `raw`, against the digest `raw` carries. */
  private checkChunks(index: number, s: SegmentEntry, raw: Buffer): void {
    const digests = segmentDigests(raw, s);
    const rec = asBuffer(s.chunks);
    let d = 0;
    for (let o = 0, end = s.count * RECORD.BYTES; o < end; o += RECORD.BYTES) {
      const kind = rec[o + RECORD.KIND] as ChunkKind;
      if (!hasDigest(kind)) continue;
      const image = rec[o + RECORD.IMAGE]!;
      const chunk = rec.readUInt32LE(o + RECORD.INDEX);
      const p = rec.readUInt32LE(o + RECORD.PAYLOAD_OFFSET);
      let content: Buffer;
      if (kind === ChunkKind.BASE)
        content = this.base[rec[o + RECORD.REF_IMAGE]!]!.chunk(rec.readUInt32LE(o + RECORD.REF_INDEX));
      else if (kind === ChunkKind.RAW) content = raw.subarray(p, p + CHUNK_SIZE);
      else {
        xorInto(this.content, raw.subarray(p, p + CHUNK_SIZE), this.base[image]!.chunk(chunk));
        content = this.content;
      }
      if (!sha256(content).equals(digests.subarray(d * HASH_BYTES, ++d * HASH_BYTES))) {
        throw new VmsynthError(
          'VMS_OVERLAY_CORRUPT',
          `segment ${index}: ${image === 0 ? 'memory' : 'disk'} chunk ${chunk} does not match its SHA-256`,
          {
            details: { segment: index, image, index: chunk, check: 'chunk' },
          },
        );
      }
    }
  }

  close(): void {
    for (const f of [...this.base, ...this.out]) f.close();
    if (this.segFd >= 0) closeSync(this.segFd);
  }
}

/** A request to a segment worker (segment-worker.ts), or to an applier on the caller's thread. */
export type SegmentJob =
  | { op: 'apply'; index: number; segment: SegmentEntry; compressed: Uint8Array | null }
  | { op: 'apply-rebuilt'; index: number; segment: SegmentEntry; raw: Uint8Array }
  | { op: 'verify'; index: number; segment: SegmentEntry };

/** How a job failed, as it crosses threads: a VmsynthError's code, message and details. */
export interface JobError {
  code: ErrorCode;
  message: string;
  details: Record<string, unknown>;
}

/** Runs one job; returns how it failed, or null. */
export function runJob(applier: SegmentApplier, job: SegmentJob): JobError | null {
  try {
    if (job.op === 'apply') applier.apply(job.index, job.segment, job.compressed);
    else if (job.op === 'apply-rebuilt') applier.applyRebuilt(job.index, job.segment, job.raw);
    else applier.verify(job.index, job.segment);
    return null;
  } catch (err) {
    const e = asVmsynthError(err);
    return { code: e.code, message: e.message, details: e.details };
  }
}
