/**
 * Decoding an overlay manifest (format.ts describes it): the envelope, then
 * the zstd-compressed body, validated field by field before anything uses
 * it. Pure: bytes in, a typed body or a VMS_OVERLAY_* error out. Every count
 * is checked before it sizes an allocation (the fuzz tests hold it to that).
 */
import { compress } from 'zstd-napi';
import { VmsynthError } from '../core/errors.js';
import { packr, unpackOne } from '../core/msgpack.js';
import {
  ChunkKind,
  HASH_BYTES,
  hasDigest,
  hasPayload,
  IMAGE_NAMES,
  MAX_MANIFEST_BYTES,
  MAX_SEGMENT_PAYLOAD_BYTES,
  MAX_SEGMENT_RAW_BYTES,
  OVERLAY_FORMAT,
  type OverlayBody,
  type OverlayEnvelope,
  type OverlaySignature,
} from './format.js';
import { readRecord, RECORD_BYTES } from './records.js';
import { decompressFrame } from './zstd-frame.js';

function corrupt(message: string): VmsynthError {
  return new VmsynthError('VMS_OVERLAY_CORRUPT', message);
}

function isBytes(x: unknown, len?: number): x is Uint8Array {
  return x instanceof Uint8Array && (len === undefined || x.length === len);
}

/** `x` as a map of fields to check, or null when it is not one (bytes, arrays and scalars are not). */
function asMap(x: unknown): Record<string, unknown> | null {
  return typeof x === 'object' && x !== null && !Array.isArray(x) && !(x instanceof Uint8Array)
    ? (x as Record<string, unknown>)
    : null;
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
    throw new VmsynthError(
      'VMS_OVERLAY_CORRUPT',
      `the overlay manifest is not valid MessagePack (${(err as Error).message})`,
      { cause: err },
    );
  }
  if (!env || typeof env !== 'object') throw corrupt('the overlay manifest is not a map');
  const e = env as Record<string, unknown>;
  if (typeof e.format !== 'string') throw corrupt('the overlay manifest has no format');
  if (e.format !== OVERLAY_FORMAT) {
    const previous = e.format === 'vmsynth-overlay/1';
    const rebuild =
      ": it is an older vmsynth's; build it again with `vmsynth overlay create` (its per-chunk digests now travel in the segments)";
    const older = previous ? rebuild : '';
    throw new VmsynthError(
      'VMS_OVERLAY_FORMAT',
      `overlay format "${e.format.slice(0, 80)}" is not one this vmsynth reads (${OVERLAY_FORMAT})${older}`,
      {
        details: { format: e.format, ...(previous ? { rebuild: true } : {}) },
      },
    );
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

/** The body's MessagePack object, unvalidated (a size-capped decompress, then unpack). */
export function unpackBody(bytes: Uint8Array): unknown {
  let raw: Buffer;
  try {
    raw = decompressFrame(bytes, MAX_MANIFEST_BYTES);
  } catch (err) {
    throw new VmsynthError('VMS_OVERLAY_CORRUPT', `the overlay body does not decompress (${(err as Error).message})`, {
      cause: err,
    });
  }
  try {
    return unpackOne(raw);
  } catch (err) {
    throw new VmsynthError(
      'VMS_OVERLAY_CORRUPT',
      `the overlay body is not valid MessagePack (${(err as Error).message})`,
      { cause: err },
    );
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

/** An untrusted field's value for a message: never throws (String() does on an object with a bad toString). */
function shown(v: unknown): string {
  if (typeof v === 'string') return `"${v.slice(0, 80)}"`;
  if (v === null || v === undefined || typeof v === 'number' || typeof v === 'boolean') return String(v);
  return Array.isArray(v) ? 'an array' : v instanceof Uint8Array ? 'bytes' : `a value of type ${typeof v}`;
}

/**
 * Decodes and validates a body: every field present and typed, segments
 * contiguous, every record in range, every chunk listed once, every SELF
 * reference pointing backwards. Never trusts a count before checking it.
 */
export function decodeBody(bytes: Uint8Array): OverlayBody {
  const b = asMap(unpackBody(bytes));
  if (!b) throw corrupt('the overlay body is not a map');
  if (b.format !== OVERLAY_FORMAT)
    throw new VmsynthError('VMS_OVERLAY_FORMAT', `overlay body format ${shown(b.format)} is not ${OVERLAY_FORMAT}`);
  const chunkSize = b.chunkSize;
  if (chunkSize !== 4096) throw corrupt(`unsupported chunk size ${shown(chunkSize)}`);
  const base = asMap(b.base);
  const chunkCount: number[] = [];
  for (const name of IMAGE_NAMES) {
    const id = asMap(base?.[name]);
    // (An image beyond MAX_IMAGE_CHUNKS cannot be addressed by a u32 record index.)
    if (
      !id ||
      !isCount(id.bytes) ||
      id.bytes % chunkSize !== 0 ||
      id.bytes / chunkSize > MAX_IMAGE_CHUNKS ||
      typeof id.sha256 !== 'string' ||
      !/^[0-9a-f]{64}$/.test(id.sha256)
    ) {
      throw corrupt(`the overlay's base ${name} identity is malformed`);
    }
    chunkCount.push(id.bytes / chunkSize);
  }
  if (typeof base!.name !== 'string') throw corrupt('the overlay names no base');
  if (!isCount(b.segmentBytes) || b.segmentBytes === 0) throw corrupt('segmentBytes is malformed');
  const vm = asMap(b.vm);
  if (!vm || !isCount(vm.appPort) || vm.appPort > 65535) throw corrupt('vm.appPort is malformed');
  const ds = asMap(b.deviceState);
  if (!ds || !isCount(ds.bytes) || typeof ds.sha256 !== 'string' || !isBytes(ds.zstd))
    throw corrupt('the device state is malformed');
  if (!Array.isArray(b.segments)) throw corrupt('the segment table is missing');
  const order = asMap(b.order);
  if (!order || (order.kind !== 'default' && order.kind !== 'profile')) throw corrupt('the order is malformed');
  // The descriptive fields too: `overlay inspect` (which opens any self-signed overlay) and the
  // profiler read them as typed; fuzzing found a missing stats.modified, delta or compression
  // making inspectOverlay throw a TypeError.
  const st = asMap(b.stats);
  const modified = asMap(st?.modified);
  if (
    !st ||
    !Array.isArray(st.chunks) ||
    !st.chunks.every(isCount) ||
    !isCount(st.trimmedChunks) ||
    !modified ||
    !isCount(modified.memory) ||
    !isCount(modified.disk)
  ) {
    throw corrupt('the stats are malformed');
  }
  if (!isCount(order.runs) || (order.rank !== undefined && typeof order.rank !== 'string'))
    throw corrupt('the order is malformed');
  if (typeof b.createdAt !== 'string' || typeof b.tool !== 'string') throw corrupt('createdAt or tool is malformed');
  const delta = asMap(b.delta);
  if (!delta || delta.encoding !== 'xor' || typeof delta.rule !== 'string')
    throw corrupt('the delta encoding is malformed');
  const compression = asMap(b.compression);
  if (!compression || compression.codec !== 'zstd' || !Number.isSafeInteger(compression.level))
    throw corrupt('the compression is malformed');

  const seen = new ChunkSet();
  let offset = 0;
  (b.segments as unknown[]).forEach((entry, si) => {
    const s = asMap(entry);
    if (
      !s ||
      !isCount(s.offset) ||
      !isCount(s.bytes) ||
      !isCount(s.rawBytes) ||
      !isCount(s.count) ||
      !isCount(s.digests) ||
      !isBytes(s.sha256, HASH_BYTES) ||
      (s.tableSha256 !== undefined && !isBytes(s.tableSha256, HASH_BYTES))
    ) {
      throw corrupt(`segment ${si}: malformed entry`);
    }
    if (s.offset !== offset) throw corrupt(`segment ${si}: offset ${s.offset}, expected ${offset}`);
    const payload = s.rawBytes - s.digests * HASH_BYTES;
    if (
      s.rawBytes > MAX_SEGMENT_RAW_BYTES ||
      s.digests > s.count ||
      payload < 0 ||
      payload > MAX_SEGMENT_PAYLOAD_BYTES ||
      payload % chunkSize !== 0
    )
      throw corrupt(
        `segment ${si}: raw size ${s.rawBytes} is not allowed for ${s.count} chunks with ${s.digests} digests`,
      );
    if (!isBytes(s.chunks, s.count * RECORD_BYTES))
      throw corrupt(`segment ${si}: chunk table size does not match its count`);
    let digests = 0;
    offset += s.bytes;
    const payloadSeen = new Uint8Array(payload / chunkSize);
    for (let i = 0; i < s.count; i++) {
      const r = readRecord(s.chunks, i);
      const where = `segment ${si}, chunk ${i}`;
      if (r.image > 1 || r.index >= chunkCount[r.image]!)
        throw corrupt(`${where}: chunk ${r.image}/${r.index} is outside the images`);
      if (r.kind > ChunkKind.RAW) throw corrupt(`${where}: unknown kind ${r.kind}`);
      if (seen.has(r.image, r.index))
        throw corrupt(`${where}: ${IMAGE_NAMES[r.image]} chunk ${r.index} is listed twice`);
      if (r.kind === ChunkKind.BASE || r.kind === ChunkKind.SELF) {
        if (r.refImage > 1 || r.refIndex >= chunkCount[r.refImage]!)
          throw corrupt(`${where}: reference ${r.refImage}/${r.refIndex} is outside the images`);
        if (r.kind === ChunkKind.SELF && !seen.has(r.refImage, r.refIndex))
          throw corrupt(
            `${where}: self reference to ${IMAGE_NAMES[r.refImage]} chunk ${r.refIndex}, which does not come earlier`,
          );
      }
      if (hasPayload(r.kind)) {
        const p = r.payloadOffset;
        if (p % chunkSize !== 0 || p + chunkSize > payload || payloadSeen[p / chunkSize])
          throw corrupt(`${where}: payload offset ${p} is out of place`);
        payloadSeen[p / chunkSize] = 1;
      }
      if (hasDigest(r.kind)) digests++;
      seen.add(r.image, r.index);
    }
    if (digests !== s.digests) throw corrupt(`segment ${si}: ${s.digests} digests for ${digests} chunks that have one`);
  });
  // Every field OverlayBody names was checked above.
  return b as unknown as OverlayBody;
}
