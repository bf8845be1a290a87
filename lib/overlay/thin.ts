/**
 * Chunk lookaside's segment forms (docs/protocol.md, "Chunk lookaside"):
 * a segment's digest table sent on its own, and a thin segment that leaves
 * out the payloads the receiver already holds. Pure: no I/O.
 *
 *   table   the segment's digests as they stand behind its payloads; it is
 *           trusted once its SHA-256 matches the manifest's `tableSha256`
 *           (checkTable);
 *   omit    a bitmap over the segment's payload slots (4 KiB each, in raw
 *           order): bit k set leaves slot k out;
 *   thin    the kept slots' bytes back to back, in slot order, one zstd
 *           frame on the wire (no digests: the receiver has the table).
 *
 * The receiver puts the raw segment back together (rebuildRaw) from the
 * thin payloads, payloads it makes from chunks it holds, and the table; the
 * one apply path (apply-segment.ts, applyRebuilt) then checks every chunk's
 * content against the table before anything is written.
 */
import { VmsynthError } from '../core/errors.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { sha256 } from './chunk-io.js';
import { ChunkKind, HASH_BYTES, hasDigest, payloadBytes, type SegmentInfo } from './format.js';
import { asBuffer, RECORD } from './records.js';

export type TableEntry = Pick<SegmentInfo, 'rawBytes' | 'digests' | 'count' | 'chunks' | 'tableSha256'>;

/** A chunk of a segment that carries a payload: where it lives, its payload slot and its content's digest. */
export interface PayloadChunk {
  kind: typeof ChunkKind.XOR | typeof ChunkKind.RAW;
  image: number;
  index: number;
  slot: number;
  digest: Buffer;
}

/** Payload slots in a segment. */
export function slotCount(s: Pick<SegmentInfo, 'rawBytes' | 'digests'>): number {
  return payloadBytes(s) / CHUNK_SIZE;
}

/** Whether a segment can take part in lookaside: its table is signed, and it has payloads to leave out. */
export function lookasideable(s: Pick<SegmentInfo, 'rawBytes' | 'digests' | 'tableSha256'>): boolean {
  return s.tableSha256 !== undefined && slotCount(s) > 0;
}

/** Checks a segment's table received on its own against the signed manifest (VMS_OVERLAY_CORRUPT, details.check "table"). */
export function checkTable(index: number, s: TableEntry, table: Uint8Array): void {
  const bad = (why: string) =>
    new VmsynthError('VMS_OVERLAY_CORRUPT', `segment ${index}: its digest table ${why}`, {
      details: { segment: index, check: 'table' },
    });
  if (!s.tableSha256) throw bad('is not signed in this manifest (built before lookaside)');
  if (table.length !== s.digests * HASH_BYTES)
    throw bad(`is ${table.length} bytes, expected ${s.digests * HASH_BYTES}`);
  if (!sha256(table).equals(asBuffer(s.tableSha256))) throw bad('does not match its SHA-256');
}

/** The segment's payload chunks, in record order, each with its digest from `table`. */
export function payloadChunks(s: TableEntry, table: Uint8Array): PayloadChunk[] {
  const rec = asBuffer(s.chunks);
  const t = asBuffer(table);
  const out: PayloadChunk[] = [];
  let d = 0;
  for (let o = 0, end = s.count * RECORD.BYTES; o < end; o += RECORD.BYTES) {
    const kind = rec[o + RECORD.KIND] as ChunkKind;
    if (!hasDigest(kind)) continue;
    const digest = t.subarray(d * HASH_BYTES, ++d * HASH_BYTES);
    if (kind !== ChunkKind.XOR && kind !== ChunkKind.RAW) continue;
    out.push({
      kind,
      image: rec[o + RECORD.IMAGE]!,
      index: rec.readUInt32LE(o + RECORD.INDEX),
      slot: rec.readUInt32LE(o + RECORD.PAYLOAD_OFFSET) / CHUNK_SIZE,
      digest,
    });
  }
  return out;
}

/** An omit bitmap for `slots` slots with these slots set. */
export function omitBitmap(slots: number, omitted: Iterable<number>): Buffer {
  const bits = Buffer.alloc(Math.ceil(slots / 8));
  for (const k of omitted) bits[k >> 3]! |= 1 << (k & 7);
  return bits;
}

function isOmitted(omit: Uint8Array, slot: number): boolean {
  return ((omit[slot >> 3] ?? 0) & (1 << (slot & 7))) !== 0;
}

/** Checks an omit bitmap's size for a segment; returns how many slots it keeps. */
export function keptSlots(s: Pick<SegmentInfo, 'rawBytes' | 'digests'>, omit: Uint8Array): number {
  const slots = slotCount(s);
  if (omit.length !== Math.ceil(slots / 8))
    throw new VmsynthError('VMS_PROTOCOL', `an omit bitmap of ${omit.length} bytes for ${slots} payload slots`);
  let kept = 0;
  for (let k = 0; k < slots; k++) if (!isOmitted(omit, k)) kept++;
  return kept;
}

/** The thin form of a raw segment (the sender's side): its kept payload slots, back to back. */
export function thinPayloads(s: Pick<SegmentInfo, 'rawBytes' | 'digests'>, raw: Uint8Array, omit: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(keptSlots(s, omit) * CHUNK_SIZE);
  let at = 0;
  for (let k = 0, slots = slotCount(s); k < slots; k++) {
    if (isOmitted(omit, k)) continue;
    out.set(raw.subarray(k * CHUNK_SIZE, (k + 1) * CHUNK_SIZE), at);
    at += CHUNK_SIZE;
  }
  return out;
}

/**
 * The raw segment put back together (the receiver's side): kept slots from
 * `thin`, omitted ones from `fill(slot)` (a CHUNK_SIZE payload), then the
 * table. Nothing here is trusted yet: applyRebuilt checks every chunk.
 */
export function rebuildRaw(
  s: TableEntry,
  table: Uint8Array,
  thin: Uint8Array,
  omit: Uint8Array,
  fill: (slot: number) => Uint8Array,
): Buffer {
  const slots = slotCount(s);
  const kept = keptSlots(s, omit);
  if (thin.length !== kept * CHUNK_SIZE)
    throw new VmsynthError('VMS_OVERLAY_CORRUPT', `a thin segment of ${thin.length} bytes for ${kept} kept slots`, {
      details: { check: 'size' },
    });
  const raw = Buffer.allocUnsafe(s.rawBytes);
  let at = 0;
  for (let k = 0; k < slots; k++) {
    const dst = k * CHUNK_SIZE;
    if (isOmitted(omit, k)) {
      const p = fill(k);
      if (p.length !== CHUNK_SIZE) throw new VmsynthError('VMS_INTERNAL', `a filled payload of ${p.length} bytes`);
      raw.set(p, dst);
    } else {
      raw.set(thin.subarray(at, at + CHUNK_SIZE), dst);
      at += CHUNK_SIZE;
    }
  }
  raw.set(table, slots * CHUNK_SIZE);
  return raw;
}
