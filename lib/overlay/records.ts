/**
 * The chunk record: the 16-byte little-endian entry of a segment's chunk
 * table (format.ts describes where tables live). Its layout is defined here
 * and nowhere else; the hot paths that read records in place (the segment
 * applier) use RECORD's offsets.
 */
import type { ChunkKind, Image } from './format.js';

/** Byte offsets of a record's fields, and its size. */
export const RECORD = {
  /** u8: 0 memory, 1 disk. */
  IMAGE: 0,
  /** u8: a ChunkKind. */
  KIND: 1,
  /** u8: for BASE and SELF, which image the reference points into. */
  REF_IMAGE: 2,
  /** u8 reserved (0) at 3. u32: the chunk's index in its image (offset / chunkSize). */
  INDEX: 4,
  /** u32: for BASE and SELF, the referenced chunk's index. */
  REF_INDEX: 8,
  /** u32: for XOR and RAW, where its chunkSize bytes start in the raw segment. */
  PAYLOAD_OFFSET: 12,
  BYTES: 16,
} as const;

export const RECORD_BYTES = RECORD.BYTES;

export interface ChunkRecord {
  image: Image;
  kind: ChunkKind;
  refImage: Image;
  index: number;
  refIndex: number;
  payloadOffset: number;
}

/** A Buffer over the same bytes (a table decoded from MessagePack may be a plain Uint8Array). */
export function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function writeRecord(buf: Buffer, i: number, r: ChunkRecord): void {
  const o = i * RECORD.BYTES;
  buf[o + RECORD.IMAGE] = r.image;
  buf[o + RECORD.KIND] = r.kind;
  buf[o + RECORD.REF_IMAGE] = r.refImage;
  buf[o + 3] = 0;
  buf.writeUInt32LE(r.index, o + RECORD.INDEX);
  buf.writeUInt32LE(r.refIndex, o + RECORD.REF_INDEX);
  buf.writeUInt32LE(r.payloadOffset, o + RECORD.PAYLOAD_OFFSET);
}

export function encodeRecords(records: readonly ChunkRecord[]): Buffer {
  const buf = Buffer.alloc(records.length * RECORD.BYTES);
  records.forEach((r, i) => writeRecord(buf, i, r));
  return buf;
}

export function readRecord(chunks: Uint8Array, i: number): ChunkRecord {
  const o = i * RECORD.BYTES;
  const b = asBuffer(chunks);
  return {
    image: b[o + RECORD.IMAGE] as Image,
    kind: b[o + RECORD.KIND] as ChunkKind,
    refImage: b[o + RECORD.REF_IMAGE] as Image,
    index: b.readUInt32LE(o + RECORD.INDEX),
    refIndex: b.readUInt32LE(o + RECORD.REF_INDEX),
    payloadOffset: b.readUInt32LE(o + RECORD.PAYLOAD_OFFSET),
  };
}
