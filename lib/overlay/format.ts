/**
 * The VM overlay format, version vmsynth-overlay/2: what is on disk and how
 * to check it. Pure (no I/O): the builder writes it, the reader parses it.
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
 * (in the manifest) is `count` 16-byte little-endian records, in apply
 * order. A record is:
 *   u8 image   0 memory, 1 disk
 *   u8 kind    ChunkKind
 *   u8 refImage  for BASE and SELF: which image the reference points into
 *   u8 reserved (0)
 *   u32 index  the chunk's index in its image (offset / chunkSize)
 *   u32 refIndex  for BASE and SELF: the referenced chunk's index
 *   u32 payloadOffset  for XOR and RAW: where its chunkSize bytes start in the raw segment
 * A SELF reference names an overlay chunk that comes earlier: in an earlier
 * segment, or earlier in the same segment's table.
 *
 * The digests travel in the segments, not in the manifest (as they did in
 * vmsynth-overlay/1): the manifest is what a synthesis server must receive
 * before it can resume the VM, and 32 bytes a chunk were most of it (a
 * 12.5 MB manifest, 2.6 s at 38 Mbit/s, for the face app's overlay). They
 * stay covered by the signature: the signed manifest holds each segment's
 * SHA-256.
 */
import { Packr } from 'msgpackr';
import { compress, decompress } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import { VmsynthError } from '../core/errors.js';

export const OVERLAY_FORMAT = 'vmsynth-overlay/2';
export const MANIFEST_FILE = 'overlay.manifest';
export const SEGMENTS_FILE = 'overlay.segments';
export const RECORD_BYTES = 16;
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

export interface ChunkRecord {
  image: Image;
  kind: ChunkKind;
  refImage: Image;
  index: number;
  refIndex: number;
  payloadOffset: number;
}

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

/** MessagePack without msgpackr's records extension, so any decoder can read it. */
export const packr = new Packr({ useRecords: false, moreTypes: false, bundleStrings: false, mapsAsObjects: true });

export function encodeRecords(records: readonly ChunkRecord[]): Buffer {
  const buf = Buffer.alloc(records.length * RECORD_BYTES);
  records.forEach((r, i) => writeRecord(buf, i, r));
  return buf;
}

export function writeRecord(buf: Buffer, i: number, r: ChunkRecord): void {
  const o = i * RECORD_BYTES;
  buf[o] = r.image;
  buf[o + 1] = r.kind;
  buf[o + 2] = r.refImage;
  buf[o + 3] = 0;
  buf.writeUInt32LE(r.index, o + 4);
  buf.writeUInt32LE(r.refIndex, o + 8);
  buf.writeUInt32LE(r.payloadOffset, o + 12);
}

export function readRecord(chunks: Uint8Array, i: number): ChunkRecord {
  const o = i * RECORD_BYTES;
  const b = chunks as Buffer;
  if (typeof b.readUInt32LE !== 'function') return readRecord(Buffer.from(chunks.buffer, chunks.byteOffset, chunks.byteLength), i);
  return {
    image: b[o] as Image,
    kind: b[o + 1] as ChunkKind,
    refImage: b[o + 2] as Image,
    index: b.readUInt32LE(o + 4),
    refIndex: b.readUInt32LE(o + 8),
    payloadOffset: b.readUInt32LE(o + 12),
  };
}

export function hasPayload(kind: ChunkKind): boolean {
  return kind === ChunkKind.XOR || kind === ChunkKind.RAW;
}

function corrupt(message: string): VmsynthError {
  return new VmsynthError('VMS_OVERLAY_CORRUPT', message);
}

function isBytes(x: unknown, len?: number): x is Uint8Array {
  return x instanceof Uint8Array && (len === undefined || x.length === len);
}

function isCount(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

/** Decodes the envelope; throws VMS_OVERLAY_FORMAT for a version this build does not read. */
export function decodeEnvelope(bytes: Uint8Array): OverlayEnvelope {
  let env: unknown;
  try {
    env = unpackOne(bytes);
  } catch (err) {
    throw new VmsynthError('VMS_OVERLAY_CORRUPT', `the overlay manifest is not valid MessagePack (${(err as Error).message})`, { cause: err });
  }
  if (!env || typeof env !== 'object') throw corrupt('the overlay manifest is not a map');
  const e = env as Record<string, unknown>;
  if (typeof e.format !== 'string') throw corrupt('the overlay manifest has no format');
  if (e.format !== OVERLAY_FORMAT) {
    const older = e.format === 'vmsynth-overlay/1' ? ': it is an older vmsynth\'s; build it again with `vmsynth overlay create` (its per-chunk digests now travel in the segments)' : '';
    throw new VmsynthError('VMS_OVERLAY_FORMAT', `overlay format "${e.format.slice(0, 80)}" is not one this vmsynth reads (${OVERLAY_FORMAT})${older}`, { details: { format: e.format } });
  }
  const s = e.signature as Record<string, unknown> | undefined;
  if (!isBytes(e.body)) throw corrupt('the overlay manifest has no body');
  if (!s || s.alg !== 'ed25519' || typeof s.keyId !== 'string' || !isBytes(s.publicKey, 32) || !isBytes(s.sig, 64)) {
    throw new VmsynthError('VMS_BAD_SIGNATURE', 'the overlay manifest carries no well-formed Ed25519 signature');
  }
  return { format: e.format, body: e.body, signature: s as unknown as OverlaySignature };
}

/** The stored form of a body: zstd(MessagePack(body)). */
export function encodeBody(body: unknown): Buffer {
  return compress(packr.pack(body), { compressionLevel: 6 });
}

/**
 * The one MessagePack value `bytes` holds, which must end exactly where `bytes` ends. Read as a
 * sequence stopped after its first value: msgpackr's own check for bytes left over renders the
 * whole decoded value as JSON into its error message (fuzzing found an 8 MiB envelope followed by
 * one stray byte taking 2.4 s; 100 MiB took a minute and 5 GB).
 */
export function unpackOne(bytes: Uint8Array): unknown {
  let value: unknown;
  let end = 0;
  packr.unpackMultiple(bytes, (v: unknown, _start?: number, stop?: number) => {
    value = v;
    end = stop ?? 0;
    return false;
  });
  if (end !== bytes.length) throw new Error(`${bytes.length - end} bytes follow the value`);
  return value;
}

/** The most a zstd frame of n bytes can decompress to is n × this: an RLE block (4 bytes) regenerates at most 128 KiB. */
const ZSTD_MAX_RATIO = (128 << 10) / 4;

/**
 * Decompresses `bytes`, which must be exactly one zstd frame declaring a content size of at most
 * `limit`. zstd-napi allocates the size frame headers declare (summed over every frame) before
 * decompressing, so a declaration more than the frame's bytes could hold is refused first
 * (fuzzing found a 13-byte body declaring 512 MiB that was allocated in full). Throws plain
 * Errors: callers say what did not decompress.
 */
export function decompressFrame(bytes: Uint8Array, limit: number): Buffer {
  if (zstdBinding.findFrameCompressedSize(bytes) !== bytes.length) throw new Error('not exactly one zstd frame');
  const size = zstdBinding.getFrameContentSize(bytes);
  if (size === null) throw new Error('the frame does not declare its size');
  if (size > limit || size > bytes.length * ZSTD_MAX_RATIO) throw new Error(`declared size ${size} is over the limit of ${Math.min(limit, bytes.length * ZSTD_MAX_RATIO)} bytes`);
  return decompress(bytes);
}

/** The body's MessagePack object, unvalidated (a size-capped decompress, then unpack). */
export function unpackBody(bytes: Uint8Array): unknown {
  let raw: Buffer;
  try {
    raw = decompressFrame(bytes, MAX_MANIFEST_BYTES);
  } catch (err) {
    throw new VmsynthError('VMS_OVERLAY_CORRUPT', `the overlay body does not decompress (${(err as Error).message})`, { cause: err });
  }
  try {
    return unpackOne(raw);
  } catch (err) {
    throw new VmsynthError('VMS_OVERLAY_CORRUPT', `the overlay body is not valid MessagePack (${(err as Error).message})`, { cause: err });
  }
}

/** Largest image a chunk table can address: a record's index is a u32. */
const MAX_IMAGE_CHUNKS = 2 ** 32;

/**
 * Chunks of the two images, as bitmaps allocated in 512-byte pages on first use: memory follows
 * the chunks a table lists, not the image sizes a body claims. (One bitmap per image sized by
 * the claim let a 2 KB manifest claiming a 16 TiB image allocate 512 MiB, and one claiming 2^52
 * bytes throw a RangeError; both found by fuzzing.)
 */
class ChunkSet {
  private readonly pages: (Uint8Array | undefined)[][] = [[], []];

  has(image: number, i: number): boolean {
    const page = this.pages[image]![i >>> 12];
    return page !== undefined && ((page[(i & 0xfff) >>> 3]! >>> (i & 7)) & 1) === 1;
  }

  add(image: number, i: number): void {
    const page = (this.pages[image]![i >>> 12] ??= new Uint8Array(512));
    page[(i & 0xfff) >>> 3]! |= 1 << (i & 7);
  }
}

/**
 * Decodes and validates a body: every field present and typed, segments
 * contiguous, every record in range, every chunk listed once, every SELF
 * reference pointing backwards. Never trusts a count before checking it.
 */
export function decodeBody(bytes: Uint8Array): OverlayBody {
  const b = unpackBody(bytes) as Record<string, any>;
  if (!b || typeof b !== 'object') throw corrupt('the overlay body is not a map');
  if (b.format !== OVERLAY_FORMAT) throw new VmsynthError('VMS_OVERLAY_FORMAT', `overlay body format "${String(b.format).slice(0, 80)}" is not ${OVERLAY_FORMAT}`);
  const chunkSize = b.chunkSize;
  if (chunkSize !== 4096) throw corrupt(`unsupported chunk size ${chunkSize}`);
  const base = b.base;
  for (const name of IMAGE_NAMES) {
    const id = base?.[name];
    // (An image beyond MAX_IMAGE_CHUNKS cannot be addressed by a u32 record index.)
    if (!id || !isCount(id.bytes) || id.bytes % chunkSize !== 0 || id.bytes / chunkSize > MAX_IMAGE_CHUNKS || typeof id.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(id.sha256)) {
      throw corrupt(`the overlay's base ${name} identity is malformed`);
    }
  }
  if (typeof base.name !== 'string') throw corrupt('the overlay names no base');
  if (!isCount(b.segmentBytes) || b.segmentBytes === 0) throw corrupt('segmentBytes is malformed');
  if (!b.vm || !isCount(b.vm.appPort) || b.vm.appPort > 65535) throw corrupt('vm.appPort is malformed');
  const ds = b.deviceState;
  if (!ds || !isCount(ds.bytes) || typeof ds.sha256 !== 'string' || !isBytes(ds.zstd)) throw corrupt('the device state is malformed');
  if (!Array.isArray(b.segments)) throw corrupt('the segment table is missing');
  if (!b.order || (b.order.kind !== 'default' && b.order.kind !== 'profile')) throw corrupt('the order is malformed');
  // The descriptive fields too: `overlay inspect` (which opens any self-signed overlay) and the
  // profiler read them as typed; fuzzing found a missing stats.modified, delta or compression
  // making inspectOverlay throw a TypeError.
  const st = b.stats;
  if (!st || !Array.isArray(st.chunks) || !st.chunks.every(isCount) || !isCount(st.trimmedChunks) || !st.modified || !isCount(st.modified.memory) || !isCount(st.modified.disk)) {
    throw corrupt('the stats are malformed');
  }
  if (!isCount(b.order.runs) || (b.order.rank !== undefined && typeof b.order.rank !== 'string')) throw corrupt('the order is malformed');
  if (typeof b.createdAt !== 'string' || typeof b.tool !== 'string') throw corrupt('createdAt or tool is malformed');
  if (!b.delta || b.delta.encoding !== 'xor' || typeof b.delta.rule !== 'string') throw corrupt('the delta encoding is malformed');
  if (!b.compression || b.compression.codec !== 'zstd' || !Number.isSafeInteger(b.compression.level)) throw corrupt('the compression is malformed');

  const chunkCount = [base.memory.bytes / chunkSize, base.disk.bytes / chunkSize];
  const seen = new ChunkSet();
  let offset = 0;
  b.segments.forEach((s: Record<string, unknown>, si: number) => {
    if (!s || !isCount(s.offset) || !isCount(s.bytes) || !isCount(s.rawBytes) || !isCount(s.count) || !isCount(s.digests) || !isBytes(s.sha256, HASH_BYTES)) {
      throw corrupt(`segment ${si}: malformed entry`);
    }
    if (s.offset !== offset) throw corrupt(`segment ${si}: offset ${s.offset}, expected ${offset}`);
    const payload = s.rawBytes - s.digests * HASH_BYTES;
    if (s.rawBytes > MAX_SEGMENT_RAW_BYTES || s.digests > s.count || payload < 0 || payload > MAX_SEGMENT_PAYLOAD_BYTES || payload % chunkSize !== 0) throw corrupt(`segment ${si}: raw size ${s.rawBytes} is not allowed for ${s.count} chunks with ${s.digests} digests`);
    if (!isBytes(s.chunks, s.count * RECORD_BYTES)) throw corrupt(`segment ${si}: chunk table size does not match its count`);
    let digests = 0;
    offset += s.bytes;
    const payloadSeen = new Uint8Array(payload / chunkSize);
    for (let i = 0; i < s.count; i++) {
      const r = readRecord(s.chunks, i);
      const where = `segment ${si}, chunk ${i}`;
      if (r.image > 1 || r.index >= chunkCount[r.image]!) throw corrupt(`${where}: chunk ${r.image}/${r.index} is outside the images`);
      if (r.kind > ChunkKind.RAW) throw corrupt(`${where}: unknown kind ${r.kind}`);
      if (seen.has(r.image, r.index)) throw corrupt(`${where}: ${IMAGE_NAMES[r.image]} chunk ${r.index} is listed twice`);
      if (r.kind === ChunkKind.BASE || r.kind === ChunkKind.SELF) {
        if (r.refImage > 1 || r.refIndex >= chunkCount[r.refImage]!) throw corrupt(`${where}: reference ${r.refImage}/${r.refIndex} is outside the images`);
        if (r.kind === ChunkKind.SELF && !seen.has(r.refImage, r.refIndex)) throw corrupt(`${where}: self reference to ${IMAGE_NAMES[r.refImage]} chunk ${r.refIndex}, which does not come earlier`);
      }
      if (hasPayload(r.kind)) {
        const p = r.payloadOffset;
        if (p % chunkSize !== 0 || p + chunkSize > payload || payloadSeen[p / chunkSize]) throw corrupt(`${where}: payload offset ${p} is out of place`);
        payloadSeen[p / chunkSize] = 1;
      }
      if (hasDigest(r.kind)) digests++;
      seen.add(r.image, r.index);
    }
    if (digests !== s.digests) throw corrupt(`segment ${si}: ${s.digests} digests for ${digests} chunks that have one`);
  });
  return b as OverlayBody;
}

/** Total size of overlay.segments the table describes. */
export function segmentsFileBytes(body: OverlayBody): number {
  const last = body.segments.at(-1);
  return last ? last.offset + last.bytes : 0;
}
