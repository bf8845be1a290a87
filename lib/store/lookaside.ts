/**
 * Chunk lookaside over the cloudlet store: which payloads of a segment the
 * store already holds, in segments of other overlays, found by the content
 * digests of the segment's table (overlay/thin.ts) in the store's chunk
 * index (chunk-table.ts).
 *
 * A chunk taken from a stored segment is checked exactly as a received one:
 * its content, rebuilt from the stored payload (and the base, for an XOR
 * payload), must match the digest in the segment's signed table. One that
 * does not drops the stored segment it came from and is left to the client.
 * The rebuilt segment is checked again, chunk by chunk, when it is applied.
 */
import { yieldNow } from '../core/scope.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { sha256, xorInto } from '../overlay/chunk-io.js';
import { ChunkKind, MAX_SEGMENT_RAW_BYTES, segmentDigests, type OverlayBody } from '../overlay/format.js';
import { omitBitmap, payloadChunks, slotCount, type PayloadChunk, type TableEntry } from '../overlay/thin.js';
import { decompressFrame } from '../overlay/zstd-frame.js';
import type { ChunkLocation, ChunkRow } from './chunk-table.js';
import type { SegmentStore } from './segment-store.js';

/** The base an overlay's XOR payloads are against, as the chunk index names it. */
export function baseKey(body: OverlayBody): string {
  return sha256(Buffer.from(`${body.base.memory.sha256}:${body.base.disk.sha256}`))
    .subarray(0, 12)
    .toString('hex');
}

/** The chunk index rows of a segment whose raw bytes checked out. */
export function chunkRows(entry: TableEntry, raw: Uint8Array): ChunkRow[] {
  return payloadChunks(entry, segmentDigests(raw, entry)).map((c) => ({
    digest: c.digest,
    slot: c.slot,
    kind: c.kind,
    image: c.image,
    index: c.index,
  }));
}

/** Payloads for some of a segment's slots, made from stored chunks and checked: leave them out of what the client sends. */
export interface LookasidePlan {
  /** The bitmap of the slots filled (the `thin` message's payload). */
  omit: Buffer;
  /** Slot → its payload, as the segment's record needs it (RAW: the content; XOR: content XOR base). */
  fills: Map<number, Buffer>;
  /** The segment's digest table (checked), which the thin segment does not carry. */
  table: Buffer;
}

export interface PlanContext {
  store: SegmentStore;
  /** A stored segment's raw bytes (decompressed, unchecked), or null: not stored, or not a zstd frame (dropped). */
  storedRaw(sha: Buffer): Promise<Buffer | null>;
  /** This overlay's base, as baseKey() names it. */
  base: string;
  /** A base chunk's bytes (a copy or a buffer the caller does not reuse before the next call). */
  baseChunk(image: number, index: number): Buffer;
}

/** A stored segment's raw bytes, read and decompressed (unchecked), or null: not stored, or dropped because it is not a zstd frame. */
export async function readStoredRaw(store: SegmentStore, sha: Buffer): Promise<Buffer | null> {
  const stored = await store.read(sha).catch(() => null);
  if (!stored) return null;
  try {
    return decompressFrame(stored, MAX_SEGMENT_RAW_BYTES);
  } catch {
    await store.drop(sha, 'decompress');
    return null;
  }
}

/** The plan for one segment whose table checked out (checkTable), or null when the store holds none of its payloads. */
export async function planLookaside(
  ctx: PlanContext,
  entry: TableEntry,
  table: Uint8Array,
): Promise<LookasidePlan | null> {
  const bySegment = new Map<string, { loc: ChunkLocation; chunk: PayloadChunk }[]>();
  // The caller's thread answers FUSE: the work is cut into slices of 64 lookups or one stored segment.
  let n = 0;
  for (const chunk of payloadChunks(entry, table)) {
    if (++n % 64 === 0) await yieldNow();
    const loc = ctx.store.findChunk(chunk.digest);
    if (!loc || (loc.kind === ChunkKind.XOR && loc.base !== ctx.base)) continue;
    const key = loc.segment.toString('hex');
    const list = bySegment.get(key);
    if (list) list.push({ loc, chunk });
    else bySegment.set(key, [{ loc, chunk }]);
  }
  const fills = new Map<number, Buffer>();
  for (const found of bySegment.values()) {
    const sha = found[0]!.loc.segment;
    await yieldNow();
    const raw = await ctx.storedRaw(sha);
    if (!raw) continue;
    const made = new Map<number, Buffer>();
    let bad = false;
    for (const { loc, chunk } of found) {
      const payload = fillFrom(ctx, raw, loc, chunk);
      if (!payload) {
        bad = true;
        break;
      }
      made.set(chunk.slot, payload);
    }
    if (bad) await ctx.store.drop(sha, 'chunk');
    else for (const [slot, p] of made) fills.set(slot, p);
  }
  if (fills.size === 0) return null;
  return { omit: omitBitmap(slotCount(entry), fills.keys()), fills, table: Buffer.from(table) };
}

/** The payload `chunk`'s record needs, from the stored chunk at `loc`, or null when that content does not match the digest. */
function fillFrom(ctx: PlanContext, raw: Buffer, loc: ChunkLocation, chunk: PayloadChunk): Buffer | null {
  const at = loc.slot * CHUNK_SIZE;
  if (at + CHUNK_SIZE > raw.length) return null;
  const content = Buffer.from(raw.subarray(at, at + CHUNK_SIZE));
  if (loc.kind === ChunkKind.XOR) xorInto(content, content, ctx.baseChunk(loc.image, loc.index));
  if (!sha256(content).equals(chunk.digest)) return null;
  if (chunk.kind === ChunkKind.XOR) xorInto(content, content, ctx.baseChunk(chunk.image, chunk.index));
  return content;
}
