/**
 * What an overlay holds, from its manifest alone: bytes by kind, overlay
 * bytes against naive bytes (every modified chunk, raw), segments, order.
 */
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { KIND_NAMES } from './format.js';
import type { Overlay } from './reader.js';

export interface OverlayReport {
  dir: string;
  format: string;
  keyId: string;
  createdAt: string;
  base: { name: string; memorySha256: string; diskSha256: string; memoryBytes: number; diskBytes: number };
  /** Chunks and their content bytes (chunks × 4 KiB) by kind. */
  kinds: Record<(typeof KIND_NAMES)[number], { chunks: number; bytes: number }>;
  modifiedChunks: { memory: number; disk: number };
  trimmedChunks: number;
  /** manifest + segments, on disk. */
  overlayBytes: number;
  manifestBytes: number;
  segmentsBytes: number;
  /** Every modified chunk shipped raw: what a plain delta without dedup or compression would be. */
  naiveBytes: number;
  /** overlayBytes / naiveBytes. */
  ratio: number;
  segments: number;
  segmentBytes: number;
  rawSegmentBytes: number;
  deviceStateBytes: number;
  order: Overlay['body']['order'];
  delta: string;
  compression: string;
}

export function inspectOverlay(o: Overlay): OverlayReport {
  const b = o.body;
  const kinds = Object.fromEntries(
    KIND_NAMES.map((name, k) => [
      name,
      { chunks: b.stats.chunks[k] ?? 0, bytes: (b.stats.chunks[k] ?? 0) * CHUNK_SIZE },
    ]),
  ) as OverlayReport['kinds'];
  const modified = b.stats.modified.memory + b.stats.modified.disk;
  const naiveBytes = modified * CHUNK_SIZE;
  const overlayBytes = o.manifestBytes + o.segmentsBytes;
  return {
    dir: o.dir,
    format: b.format,
    keyId: o.keyId,
    createdAt: b.createdAt,
    base: {
      name: b.base.name,
      memorySha256: b.base.memory.sha256,
      diskSha256: b.base.disk.sha256,
      memoryBytes: b.base.memory.bytes,
      diskBytes: b.base.disk.bytes,
    },
    kinds,
    modifiedChunks: b.stats.modified,
    trimmedChunks: b.stats.trimmedChunks,
    overlayBytes,
    manifestBytes: o.manifestBytes,
    segmentsBytes: o.segmentsBytes,
    naiveBytes,
    ratio: naiveBytes ? overlayBytes / naiveBytes : 0,
    segments: b.segments.length,
    segmentBytes: b.segmentBytes,
    rawSegmentBytes: b.segments.reduce((n, s) => n + s.rawBytes, 0),
    deviceStateBytes: b.deviceState.bytes,
    order: b.order,
    delta: b.delta.encoding,
    compression: `${b.compression.codec} level ${b.compression.level}`,
  };
}
