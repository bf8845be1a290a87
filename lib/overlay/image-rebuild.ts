/**
 * Rebuilding a custom VM's whole images from base + overlay (offline apply),
 * and checking an overlay chunk by chunk (verify): both walk every segment
 * in order, a bounded window ahead, through the one apply path
 * (apply-segment.ts, on worker threads or inline).
 *
 * apply: the output images start as copies of the base images; the applier
 * writes each segment's XOR and RAW payloads and BASE references, then this
 * thread writes its ZERO chunks and SELF copies (a SELF target is a payload
 * chunk of the same or an earlier segment, written by then), coalescing
 * neighbouring chunks into one write.
 * verify: the applier checks each segment's SHA-256 and every BASE, XOR and
 * RAW chunk's rebuilt content against the digest its segment carries.
 */
import { publish } from '../core/diagnostics.js';
import { throwIfAborted } from '../core/scope.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { ChunkFile, ZERO_CHUNK } from './chunk-io.js';
import { ChunkKind, type SegmentInfo } from './format.js';
import type { Overlay } from './reader.js';
import { readRecord, type ChunkRecord } from './records.js';
import { SegmentWorkers } from './segment-workers.js';

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
  /** Worker threads for verify + decompress + apply (0: on this thread; default 1). */
  threads?: number;
  signal?: AbortSignal;
}

/** Image paths, memory then disk. */
export type ImagePair = [memory: string, disk: string];

/**
 * The segment loop: starts `start` on a bounded window of segments ahead,
 * and hands each to `after` in segment order once its start has finished.
 * Closes `pool` at the end.
 */
async function eachSegment(
  overlay: Overlay,
  pool: SegmentWorkers,
  opts: LoopOptions,
  start: (index: number, s: SegmentInfo) => Promise<void>,
  after: (index: number, s: SegmentInfo) => void,
): Promise<LoopStats> {
  const t0 = performance.now();
  const segs = overlay.body.segments;
  const window = Math.max(2, pool.threads * 2);
  const inflight: Promise<void>[] = [];
  const stats: LoopStats = { segments: segs.length, chunks: 0, compressedBytes: 0, rawBytes: 0, imageBytes: 0, ms: 0 };
  let next = 0;
  try {
    for (let si = 0; si < segs.length; si++) {
      for (; next < segs.length && inflight.length < window; next++) inflight.push(start(next, segs[next]!));
      await inflight.shift();
      throwIfAborted(opts.signal);
      const s = segs[si]!;
      after(si, s);
      stats.chunks += s.count;
      stats.compressedBytes += s.bytes;
      stats.rawBytes += s.rawBytes;
      if (si % 64 === 63) publish('progress', { step: `overlay: ${si + 1}/${segs.length} segments` });
    }
  } finally {
    // Let work in flight settle before the pool closes, so nothing rejects unobserved.
    await Promise.allSettled(inflight);
    await pool.close();
  }
  stats.imageBytes = stats.chunks * CHUNK_SIZE;
  stats.ms = performance.now() - t0;
  return stats;
}

/** Writes chunks into the output images, coalescing runs of neighbouring chunks. */
class RunSink {
  private run = Buffer.allocUnsafeSlow(1 << 20);
  private runImage = -1;
  private runStart = 0;
  private runCount = 0;

  constructor(private readonly out: ChunkFile[]) {}

  /** The content of a chunk written earlier (a SELF target), in `scratch`. */
  prior(image: number, index: number, scratch: Buffer): Buffer {
    this.flush();
    this.out[image]!.readAt(scratch, index * CHUNK_SIZE);
    return scratch;
  }

  put(r: ChunkRecord, content: Buffer): void {
    if (
      r.image !== this.runImage ||
      r.index !== this.runStart + this.runCount ||
      this.runCount * CHUNK_SIZE >= this.run.length
    ) {
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

/** Rebuilds the overlay's chunks into `out` (which must start as copies of the `base` images). */
export async function applyToImages(
  overlay: Overlay,
  base: ImagePair,
  out: ImagePair,
  opts: LoopOptions = {},
): Promise<LoopStats> {
  const files = out.map((f) => new ChunkFile(f, 'r+'));
  try {
    const pool = new SegmentWorkers(opts.threads ?? 1, { segments: overlay.segmentsPath, base, out });
    const sink = new RunSink(files);
    const scratch = Buffer.allocUnsafeSlow(CHUNK_SIZE);
    return await eachSegment(
      overlay,
      pool,
      opts,
      (i, s) => pool.apply(i, s),
      (_si, s) => {
        for (let i = 0; i < s.count; i++) {
          const r = readRecord(s.chunks, i);
          if (r.kind === ChunkKind.ZERO) sink.put(r, ZERO_CHUNK);
          else if (r.kind === ChunkKind.SELF) sink.put(r, sink.prior(r.refImage, r.refIndex, scratch));
        }
        sink.flush();
      },
    );
  } finally {
    for (const f of files) f.close();
  }
}

/** Checks every segment's SHA-256 and every BASE, XOR and RAW chunk's rebuilt content against its digest; writes nothing. */
export async function verifyChunks(overlay: Overlay, base: ImagePair, opts: LoopOptions = {}): Promise<LoopStats> {
  const pool = new SegmentWorkers(opts.threads ?? 1, { segments: overlay.segmentsPath, base });
  return eachSegment(
    overlay,
    pool,
    opts,
    (i, s) => pool.verify(i, s),
    () => undefined,
  );
}
