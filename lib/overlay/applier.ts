/**
 * Applying an overlay offline: turn base + overlay into the custom VM's full
 * disk and memory images, and checking an overlay chunk by chunk.
 *
 * One segment loop (eachSegment) serves both: segments are read in order
 * and verified and decompressed on worker threads, a bounded window ahead.
 * `verify` rebuilds each chunk's content from its record (zeros, a base
 * chunk, an earlier overlay chunk, base XOR payload, or the payload) and
 * hashes it against the digest its segment carries. `apply` writes the
 * content into copies of the base images, coalescing neighbouring chunks
 * into one write: the workers write payload chunks themselves, this thread
 * the references.
 */
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { throwIfAborted } from '../core/scope.js';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { ChunkFile, sha256, xorInto, ZERO_CHUNK } from './chunk-io.js';
import { ChunkKind, HASH_BYTES, hasDigest, readRecord, segmentDigests, type ChunkRecord, type SegmentInfo } from './format.js';
import type { Overlay } from './reader.js';
import { INLINE_BUFFERS, SegmentWorkers } from './segment-workers.js';

/** Where rebuilt chunks go. */
interface ChunkSink {
  /** Content of an earlier overlay chunk (for SELF references). */
  prior(image: number, index: number, scratch: Buffer): Buffer;
  /** `digest`: the SHA-256 its segment carries for this chunk's content (null for ZERO and SELF chunks, which have none). */
  put(r: ChunkRecord, content: Buffer, digest: Uint8Array | null, segment: number): void;
}

export interface LoopStats {
  segments: number;
  chunks: number;
  compressedBytes: number;
  rawBytes: number;
  /** Bytes of image content the overlay defines (chunks × 4 KiB). */
  imageBytes: number;
  ms: number;
}

export interface LoopOptions {
  /** Worker threads for verify + decompress (0: inline). */
  threads?: number;
  signal?: AbortSignal;
}

/**
 * The segment loop: reads segments in order, starts `start` on a bounded
 * window of them ahead, and hands each result to `handle` in segment order.
 */
async function eachSegment<T>(
  overlay: Overlay, workers: SegmentWorkers, opts: LoopOptions,
  /** Starts work on a segment; `read` gives its compressed bytes, for work that needs them here. */
  start: (index: number, s: SegmentInfo, read: () => Buffer) => Promise<T>,
  handle: (index: number, s: SegmentInfo, result: T) => void,
): Promise<LoopStats> {
  const t0 = performance.now();
  const segs = overlay.body.segments;
  const file = overlay.segmentFile();
  // Inline, open() results live in INLINE_BUFFERS reused buffers: keep fewer than that alive.
  const window = workers.threads === 0 ? Math.min(2, INLINE_BUFFERS - 1) : workers.threads * 2;
  const inflight: Promise<T>[] = [];
  const stats: LoopStats = { segments: segs.length, chunks: 0, compressedBytes: 0, rawBytes: 0, imageBytes: 0, ms: 0 };
  let next = 0;
  try {
    for (let si = 0; si < segs.length; si++) {
      for (; next < segs.length && inflight.length < window; next++) {
        const s = segs[next]!;
        inflight.push(start(next, s, () => file.read(s)));
      }
      const result = await inflight.shift()!;
      throwIfAborted(opts.signal);
      const s = segs[si]!;
      handle(si, s, result);
      stats.chunks += s.count;
      stats.compressedBytes += s.bytes;
      stats.rawBytes += s.rawBytes;
      if (si % 64 === 63) publish('progress', { step: `overlay: ${si + 1}/${segs.length} segments` });
    }
  } finally {
    // Let in-flight work settle before the workers close, so nothing rejects unobserved.
    await Promise.allSettled(inflight);
    file.close();
    await workers.close();
  }
  stats.imageBytes = stats.chunks * CHUNK_SIZE;
  stats.ms = performance.now() - t0;
  return stats;
}

/** Rebuilds every chunk on this thread (segments verified and decompressed by workers) and gives it to `sink`. */
function forEachChunk(overlay: Overlay, base: ChunkFile[], sink: ChunkSink, opts: LoopOptions): Promise<LoopStats> {
  const workers = new SegmentWorkers(opts.threads ?? 1);
  const scratch = Buffer.allocUnsafeSlow(CHUNK_SIZE);
  const content = Buffer.allocUnsafeSlow(CHUNK_SIZE);
  return eachSegment(overlay, workers, opts, (i, s, read) => workers.open(i, s, read()), (si, s, raw) => {
    const digests = segmentDigests(raw, s);
    let d = 0;
    for (let i = 0; i < s.count; i++) {
      const r = readRecord(s.chunks, i);
      let c: Buffer;
      switch (r.kind) {
        case ChunkKind.ZERO: c = ZERO_CHUNK; break;
        case ChunkKind.BASE: c = base[r.refImage]!.chunk(r.refIndex); break;
        case ChunkKind.SELF: c = sink.prior(r.refImage, r.refIndex, scratch); break;
        case ChunkKind.XOR:
          xorInto(content, raw.subarray(r.payloadOffset, r.payloadOffset + CHUNK_SIZE), base[r.image]!.chunk(r.index));
          c = content;
          break;
        default: c = raw.subarray(r.payloadOffset, r.payloadOffset + CHUNK_SIZE);
      }
      sink.put(r, c, hasDigest(r.kind) ? digests.subarray(d * HASH_BYTES, ++d * HASH_BYTES) : null, si);
    }
  });
}

/** Writes rebuilt chunks into the output images, coalescing runs of neighbouring chunks. */
class FileSink implements ChunkSink {
  private run = Buffer.allocUnsafeSlow(1 << 20);
  private runImage = -1;
  private runStart = 0;
  private runCount = 0;

  constructor(private readonly out: ChunkFile[]) {}

  prior(image: number, index: number, scratch: Buffer): Buffer {
    this.flush();
    this.out[image]!.readAt(scratch, index * CHUNK_SIZE);
    return scratch;
  }

  put(r: ChunkRecord, content: Buffer): void {
    if (r.image !== this.runImage || r.index !== this.runStart + this.runCount || this.runCount * CHUNK_SIZE >= this.run.length) {
      this.flush();
      this.runImage = r.image;
      this.runStart = r.index;
    }
    content.copy(this.run, this.runCount * CHUNK_SIZE);
    this.runCount++;
  }

  flush(): void {
    if (this.runCount === 0) return;
    this.out[this.runImage]!.writeAt(this.run.subarray(0, this.runCount * CHUNK_SIZE), this.runStart * CHUNK_SIZE);
    this.runCount = 0;
  }
}

/**
 * Rebuilds the overlay's chunks into `out` (which must start as copies of the
 * base images). With worker threads, the workers write the payload chunks
 * and this thread the references; with none, this thread does all.
 */
export async function applyToImages(overlay: Overlay, base: ChunkFile[], out: ChunkFile[], opts: LoopOptions = {}): Promise<LoopStats> {
  const sink = new FileSink(out);
  const threads = opts.threads ?? 1;
  if (threads === 0) {
    const stats = await forEachChunk(overlay, base, sink, opts);
    sink.flush();
    return stats;
  }
  const workers = new SegmentWorkers(threads, { segments: overlay.segmentsPath, base: base.map((f) => f.file), out: out.map((f) => f.file) });
  const scratch = Buffer.allocUnsafeSlow(CHUNK_SIZE);
  return eachSegment(overlay, workers, opts, (i, s) => workers.applyPayloads(i, s), (_si, s) => {
    for (let i = 0; i < s.count; i++) {
      const r = readRecord(s.chunks, i);
      if (r.kind === ChunkKind.ZERO) sink.put(r, ZERO_CHUNK);
      else if (r.kind === ChunkKind.BASE) sink.put(r, base[r.refImage]!.chunk(r.refIndex));
      else if (r.kind === ChunkKind.SELF) sink.put(r, sink.prior(r.refImage, r.refIndex, scratch));
    }
    sink.flush();
  });
}

/** Checks every BASE, XOR and RAW chunk's rebuilt content against the SHA-256 its segment carries (a ZERO chunk's content is known, a SELF chunk's is its target's); writes nothing. */
export async function verifyChunks(overlay: Overlay, base: ChunkFile[], opts: LoopOptions = {}): Promise<LoopStats> {
  const sink: ChunkSink = {
    prior: () => ZERO_CHUNK, // a SELF chunk's content is its target's, checked there
    put(r, content, digest, seg) {
      if (digest && !sha256(content).equals(digest)) {
        throw new VmsynthError('VMS_OVERLAY_CORRUPT', `segment ${seg}: ${r.image === 0 ? 'memory' : 'disk'} chunk ${r.index} does not match its SHA-256`, { details: { segment: seg, image: r.image, index: r.index } });
      }
    },
  };
  return forEachChunk(overlay, base, sink, opts);
}
