/**
 * The VM overlay format, version vmsynth-overlay/2: what is on disk and how
 * to check it: constants, types and the small rules every reader shares.
 * Pure (no I/O). The record layout is in records.ts, manifest decoding in
 * manifest.ts, segment verification and apply in apply-segment.ts.
 *
 * An overlay directory holds two files:
 *   overlay.manifest  MessagePack (no records extension) envelope
 *                     { format, body: bin, signature: { alg, keyId, publicKey, sig } }
 *                     where `body` is one zstd frame holding the
 *                     MessagePack-encoded OverlayBody (its chunk tables
 *                     compress well) and `sig` is Ed25519 over exactly the
 *                     `body` bytes as stored;
 *   overlay.segments  the segments, back to back: each one zstd frame.
 *
 * A segment's raw (decompressed) bytes are the payloads of its XOR and RAW
 * chunks (whole chunks from offset 0), then `digests` SHA-256 digests of the
 * final content of its BASE, XOR and RAW chunks, in record order (a ZERO
 * chunk's content is known, a SELF chunk's is its target's). Its chunk table
 * (in the manifest) is `count` 16-byte records in apply order, laid out in
 * records.ts. A SELF reference names an overlay chunk that comes earlier: in
 * an earlier segment, or earlier in the same segment's table, and always one
 * that carries a payload (XOR or RAW).
 *
 * Each segment's entry also holds the SHA-256 of its digest table (32
 * bytes a segment, optional): a server that has the table alone can trust
 * it, and so learn which chunks it already holds before the segment comes.
 *
 * The digests travel in the segments, not in the manifest (as they did in
 * vmsynth-overlay/1): the manifest is what a synthesis server must receive
 * before it can resume the VM, and 32 bytes a chunk were most of it (a
 * 12.5 MB manifest, 2.6 s at 38 Mbit/s, for the face app's overlay). They
 * stay covered by the signature: the signed manifest holds each segment's
 * SHA-256.
 */

export const OVERLAY_FORMAT = 'vmsynth-overlay/2';
export const MANIFEST_FILE = 'overlay.manifest';
export const SEGMENTS_FILE = 'overlay.segments';
export const HASH_BYTES = 32;
export const DEFAULT_SEGMENT_BYTES = 1 << 20;
/** Frame sizes beyond these are refused before anything is allocated. */
export const MAX_MANIFEST_BYTES = 512 << 20;
/** The largest segment payload a builder may pack (its segment size). */
export const MAX_SEGMENT_PAYLOAD_BYTES = 64 << 20;
/** Records in one segment, at most: a builder ends a segment of references only after 16 per payload chunk it could hold. */
export const MAX_SEGMENT_RECORDS = (MAX_SEGMENT_PAYLOAD_BYTES / 4096) * 16;
/** A segment's raw bytes, at most: a full payload and the digests of as many records as it may hold. */
export const MAX_SEGMENT_RAW_BYTES = MAX_SEGMENT_PAYLOAD_BYTES + MAX_SEGMENT_RECORDS * 32;

export const Image = { MEMORY: 0, DISK: 1 } as const;
export type Image = (typeof Image)[keyof typeof Image];
export const IMAGE_NAMES = ['memory', 'disk'] as const;

/** One number naming a chunk of either image, for maps and sets keyed by chunk. */
export function chunkKey(image: number, index: number): number {
  return image * 2 ** 32 + index;
}

/** The image and index a chunkKey names. */
export function chunkOfKey(key: number): { image: number; index: number } {
  const image = Math.floor(key / 2 ** 32);
  return { image, index: key - image * 2 ** 32 };
}
export type ImageName = (typeof IMAGE_NAMES)[number];

export const ChunkKind = {
  /** All zeros; no payload. */
  ZERO: 0,
  /** Equal to a chunk of the base (memory or disk, refImage/refIndex); no payload. */
  BASE: 1,
  /** Equal to an earlier overlay chunk (refImage/refIndex); no payload. */
  SELF: 2,
  /** Payload XOR the base chunk at the same offset. */
  XOR: 3,
  /** Payload is the content. */
  RAW: 4,
} as const;
export type ChunkKind = (typeof ChunkKind)[keyof typeof ChunkKind];
export const KIND_NAMES = ['zero', 'base-ref', 'self-ref', 'xor-delta', 'raw'] as const;

export interface SegmentInfo {
  /** Byte offset of the zstd frame in overlay.segments. */
  offset: number;
  /** Compressed bytes. */
  bytes: number;
  /** Decompressed bytes: the payloads of this segment's XOR and RAW chunks, then its digests. */
  rawBytes: number;
  /** SHA-256 of the compressed bytes. */
  sha256: Uint8Array;
  count: number;
  /** count × 16-byte records. */
  chunks: Uint8Array;
  /** How many 32-byte digests follow the payloads: one per BASE, XOR and RAW record. */
  digests: number;
  /**
   * SHA-256 of those digests as they stand in the raw segment (the table):
   * with it, a server can trust a segment's table received on its own, before
   * the segment, and take chunks it already holds from its store instead of
   * the link (chunk lookaside, docs/protocol.md). Absent in overlays built
   * before it was added: they get no lookaside.
   */
  tableSha256?: Uint8Array;
}

/** Whether a chunk of this kind has a digest in its segment (a ZERO chunk's content is known, a SELF chunk's is its target's). */
export function hasDigest(kind: ChunkKind): boolean {
  return kind === ChunkKind.BASE || kind === ChunkKind.XOR || kind === ChunkKind.RAW;
}

/** Bytes of a segment's raw form that hold payloads (the digests follow). */
export function payloadBytes(s: Pick<SegmentInfo, 'rawBytes' | 'digests'>): number {
  return s.rawBytes - s.digests * HASH_BYTES;
}

/** The SHA-256 digests of a segment's BASE, XOR and RAW chunks' final content, in record order, from its raw bytes. */
export function segmentDigests(raw: Uint8Array, s: Pick<SegmentInfo, 'rawBytes' | 'digests'>): Uint8Array {
  return raw.subarray(payloadBytes(s), s.rawBytes);
}

export interface ImageIdentity {
  bytes: number;
  sha256: string;
}

export interface OverlayStats {
  /** Chunks by kind (index = ChunkKind). */
  chunks: number[];
  /** Chunks the guest discarded (counted as zero chunks, listed here too). */
  trimmedChunks: number;
  /** Chunks that differ from the base, per image. */
  modified: { memory: number; disk: number };
}

export interface OverlayBody {
  format: typeof OVERLAY_FORMAT;
  createdAt: string;
  tool: string;
  base: { name: string; memory: ImageIdentity; disk: ImageIdentity };
  chunkSize: number;
  /** How XOR and RAW were chosen; recorded so a reader knows what the builder did. */
  delta: { encoding: 'xor'; rule: string };
  compression: { codec: 'zstd'; level: number };
  segmentBytes: number;
  /** How chunks were ordered: "default" (memory by offset, then disk) or "profile". */
  order: { kind: 'default' | 'profile'; runs: number; rank?: string };
  vm: { appPort: number };
  deviceState: { bytes: number; sha256: string; zstd: Uint8Array };
  segments: SegmentInfo[];
  stats: OverlayStats;
}

export interface OverlaySignature {
  alg: 'ed25519';
  keyId: string;
  /** Raw 32-byte Ed25519 public key. */
  publicKey: Uint8Array;
  sig: Uint8Array;
}

export interface OverlayEnvelope {
  format: string;
  body: Uint8Array;
  signature: OverlaySignature;
}

export function hasPayload(kind: ChunkKind): boolean {
  return kind === ChunkKind.XOR || kind === ChunkKind.RAW;
}

/** Total size of overlay.segments the table describes. */
export function segmentsFileBytes(body: OverlayBody): number {
  const last = body.segments.at(-1);
  return last ? last.offset + last.bytes : 0;
}
