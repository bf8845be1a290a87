/**
 * Building an overlay: diff a custom VM's disk and memory against its base in
 * 4 KiB chunks, dedup, delta-encode, pack in access order into ~1 MB zstd
 * segments, and write a signed manifest. Streaming: images are read block by
 * block and only per-chunk metadata (~45 bytes per modified chunk) is kept,
 * so a 1 GB overlay builds in well under 100 MB of heap.
 *
 * Passes:
 *   1. scan: compare custom with base at the same offset; a differing chunk is
 *      ZERO if all zeros, otherwise its SHA-256 is kept and it is pending.
 *   2. base lookaside: scan the base, fingerprint each non-zero chunk
 *      (16 sampled words), and only on a fingerprint hit hash it; a pending
 *      chunk whose digest and bytes equal a base chunk becomes a BASE
 *      reference (memory first, then disk, as Elijah ordered them).
 *   3. order: profile order (first touches), then memory by offset, then disk.
 *   4. pack: walk in order; the first chunk with given content carries a
 *      payload (XOR against the base chunk at its offset when that leaves
 *      more zero words than the raw bytes, else RAW); later equal chunks
 *      become SELF references, so a reference always follows its target.
 * The output directory is written under a temporary name and renamed into
 * place when complete: a failure leaves nothing.
 */
import { promises as fsp, openSync, closeSync, writeSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { compress } from 'zstd-napi';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { packr } from '../core/msgpack.js';
import { throwIfAborted } from '../core/scope.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { ChunkIndex } from './chunk-index.js';
import { BLOCK_BYTES, ChunkFile, isZero, sha256, xorInto, ZERO_DIGEST, zeroWords } from './chunk-io.js';
import { chunkKey, ChunkKind, DEFAULT_SEGMENT_BYTES, HASH_BYTES, hasDigest, Image, IMAGE_NAMES, MANIFEST_FILE, MAX_SEGMENT_PAYLOAD_BYTES, OVERLAY_FORMAT, SEGMENTS_FILE, type ImageIdentity, type OverlayBody, type OverlayEnvelope, type SegmentInfo } from './format.js';
import { encodeBody } from './manifest.js';
import { encodeRecords, type ChunkRecord } from './records.js';
import type { Base } from '../vm/base.js';
import { signBytes, type SigningKey } from './keys.js';
import { removeStaleSiblings } from '../core/stale.js';

export interface ImagePaths {
  memory: string;
  disk: string;
}

/** A chunk, named by image and index. */
export interface ChunkRef {
  image: Image;
  index: number;
}

export interface BuildOrder {
  /** Chunks in the order the guest first touched them (duplicates and unmodified chunks are ignored). */
  chunks: ChunkRef[];
  runs: number;
  rank: string;
}

export interface BuildBase {
  name: string;
  files: ImagePaths;
  identity: { memory: ImageIdentity; disk: ImageIdentity };
}

/** The builder's view of a local base: its name, image files and identity. */
export function baseInput(base: Base): BuildBase {
  return { name: base.name, files: { memory: base.file('memory'), disk: base.file('disk') }, identity: { memory: base.manifest.memory, disk: base.manifest.disk } };
}

export interface BuildOptions {
  base: BuildBase;
  custom: ImagePaths & { deviceState: string };
  appPort: number;
  /** Disk chunk ranges [start, end) the guest discarded; counted as trimmed. */
  trimmed?: Array<[number, number]>;
  /** Re-packing a synthesized VM, whose trimmed ranges are no longer known: the count its first build recorded. */
  trimmedChunks?: number;
  order?: BuildOrder;
  segmentBytes?: number;
  zstdLevel?: number;
  /** Delta choice per payload chunk: "auto" (default: the rule below), or always "xor" / "raw" (for measuring). */
  delta?: 'auto' | 'xor' | 'raw';
  key: SigningKey;
  out: string;
  force?: boolean;
  signal?: AbortSignal;
}

export interface BuildResult {
  dir: string;
  manifestBytes: number;
  segmentsBytes: number;
  segments: number;
  body: OverlayBody;
  ms: { scan: number; lookaside: number; pack: number; total: number };
}

const PENDING = 255;
const PRINT_BYTES = 8;

const DELTA_RULES = {
  auto: 'XOR against the base chunk at the same offset when that leaves more zero 32-bit words than the raw chunk; RAW otherwise',
  xor: 'always XOR against the base chunk at the same offset',
  raw: 'always RAW',
} as const;

/** Growable per-chunk metadata, columnar. */
class Entries {
  n = 0;
  image = new Uint8Array(1024);
  index = new Uint32Array(1024);
  kind = new Uint8Array(1024);
  refImage = new Uint8Array(1024);
  refIndex = new Uint32Array(1024);
  digest = new Uint8Array(1024 * HASH_BYTES);
  /** The 64-bit fingerprint of pending chunks (zero for others). */
  print = new Uint8Array(1024 * PRINT_BYTES);

  /** Adds a chunk; for a pending one, `content` gives its fingerprint. */
  push(image: Image, index: number, kind: number, digest: Uint8Array, content?: Buffer, at = 0): void {
    if (this.n === this.index.length) this.grow();
    const i = this.n++;
    this.image[i] = image;
    this.index[i] = index;
    this.kind[i] = kind;
    this.digest.set(digest, i * HASH_BYTES);
    if (content) fingerprint(content, at, this.print.subarray(i * PRINT_BYTES, (i + 1) * PRINT_BYTES));
  }

  digestOf(i: number): Uint8Array {
    return this.digest.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
  }

  printOf(i: number): Uint8Array {
    return this.print.subarray(i * PRINT_BYTES, (i + 1) * PRINT_BYTES);
  }

  private grow(): void {
    const cap = this.index.length * 2;
    const g = <T extends Uint8Array | Uint32Array>(a: T, n: number): T => {
      const b = new (a.constructor as new (n: number) => T)(n);
      b.set(a);
      return b;
    };
    this.image = g(this.image, cap);
    this.index = g(this.index, cap);
    this.kind = g(this.kind, cap);
    this.refImage = g(this.refImage, cap);
    this.refIndex = g(this.refIndex, cap);
    this.digest = g(this.digest, cap * HASH_BYTES);
    this.print = g(this.print, cap * PRINT_BYTES);
  }
}

/** 64-bit fingerprint of a chunk from 16 sampled 32-bit words; cheap pre-filter for base lookaside. */
function fingerprint(buf: Buffer, off: number, out: Uint8Array): Uint8Array {
  let h1 = 0x9e3779b9;
  let h2 = 0x85ebca6b;
  for (let k = 0; k < 16; k++) {
    const w = buf.readUInt32LE(off + k * 256 + ((k * 52) & 0xfc));
    h1 = Math.imul(h1 ^ w, 0x01000193);
    h2 = Math.imul(h2 + w, 0x5bd1e995) ^ (h2 >>> 15);
  }
  out[0] = h1; out[1] = h1 >>> 8; out[2] = h1 >>> 16; out[3] = h1 >>> 24;
  out[4] = h2; out[5] = h2 >>> 8; out[6] = h2 >>> 16; out[7] = h2 >>> 24;
  return out;
}

function checkSameSize(base: ChunkFile, custom: ChunkFile, name: string): void {
  if (base.bytes !== custom.bytes) {
    throw new VmsynthError('VMS_BASE_MISMATCH', `the custom ${name} image is ${custom.bytes} bytes, its base's is ${base.bytes}: a custom VM keeps its base's image sizes`);
  }
  if (base.bytes % CHUNK_SIZE !== 0) throw new VmsynthError('VMS_USAGE', `${base.file} is not a whole number of 4 KiB chunks`);
}

async function yieldNow(signal?: AbortSignal): Promise<void> {
  await new Promise((r) => setImmediate(r));
  throwIfAborted(signal);
}

/** Pass 1: chunks that differ from the base at the same offset. */
async function scan(base: ChunkFile[], custom: ChunkFile[], entries: Entries, trimmed: Array<[number, number]>, signal?: AbortSignal): Promise<{ trimmedChunks: number; modified: number[] }> {
  const a = Buffer.allocUnsafeSlow(BLOCK_BYTES);
  const b = Buffer.allocUnsafeSlow(BLOCK_BYTES);
  const modified = [0, 0];
  let trimmedChunks = 0;
  // Disk chunks come in increasing order: walk the sorted trimmed ranges with a cursor.
  const ranges = [...trimmed].sort((x, y) => x[0] - y[0]);
  let r = 0;
  const isTrimmed = (i: number) => {
    while (r < ranges.length && ranges[r]![1] <= i) r++;
    return r < ranges.length && ranges[r]![0] <= i;
  };
  for (const image of [Image.MEMORY, Image.DISK]) {
    const bf = base[image]!;
    const cf = custom[image]!;
    for (let off = 0; off < bf.bytes; off += BLOCK_BYTES) {
      const len = Math.min(BLOCK_BYTES, bf.bytes - off);
      bf.readAt(a.subarray(0, len), off);
      cf.readAt(b.subarray(0, len), off);
      if (a.compare(b, 0, len, 0, len) !== 0) {
        for (let c = 0; c < len; c += CHUNK_SIZE) {
          if (a.compare(b, c, c + CHUNK_SIZE, c, c + CHUNK_SIZE) === 0) continue;
          const index = (off + c) / CHUNK_SIZE;
          modified[image]!++;
          if (isZero(b, c)) {
            entries.push(image, index, ChunkKind.ZERO, ZERO_DIGEST);
            if (image === Image.DISK && isTrimmed(index)) trimmedChunks++;
          } else {
            entries.push(image, index, PENDING, sha256(b.subarray(c, c + CHUNK_SIZE)), b, c);
          }
        }
      }
      if ((off / BLOCK_BYTES) % 64 === 63) await yieldNow(signal);
    }
  }
  return { trimmedChunks, modified };
}

/** Pass 2: pending chunks equal to some base chunk become BASE references. */
async function lookaside(base: ChunkFile[], custom: ChunkFile[], entries: Entries, signal?: AbortSignal): Promise<void> {
  const byDigest = new ChunkIndex(entries.n);
  const byPrint = new ChunkIndex(entries.n);
  const fp = new Uint8Array(PRINT_BYTES);
  const scratch = Buffer.allocUnsafeSlow(CHUNK_SIZE);
  let pending = 0;
  for (let i = 0; i < entries.n; i++) {
    if (entries.kind[i] !== PENDING) continue;
    pending++;
    byDigest.add(entries.digestOf(i), { image: 0, index: i });
    byPrint.add(entries.printOf(i), { image: 0, index: 0 });
  }
  if (pending === 0) return;
  const a = Buffer.allocUnsafeSlow(BLOCK_BYTES);
  for (const image of [Image.MEMORY, Image.DISK]) {
    const bf = base[image]!;
    for (let off = 0; off < bf.bytes; off += BLOCK_BYTES) {
      const len = Math.min(BLOCK_BYTES, bf.bytes - off);
      bf.readAt(a.subarray(0, len), off);
      for (let c = 0; c < len; c += CHUNK_SIZE) {
        fingerprint(a, c, fp);
        if (!byPrint.get(fp) || isZero(a, c)) continue;
        const hit = byDigest.get(sha256(a.subarray(c, c + CHUNK_SIZE)));
        if (!hit) continue;
        const e = hit.index;
        if (entries.kind[e] !== PENDING) continue;
        custom[entries.image[e]!]!.readAt(scratch, entries.index[e]! * CHUNK_SIZE);
        if (scratch.compare(a, c, c + CHUNK_SIZE) !== 0) continue;
        entries.kind[e] = ChunkKind.BASE;
        entries.refImage[e] = image;
        entries.refIndex[e] = (off + c) / CHUNK_SIZE;
      }
      if ((off / BLOCK_BYTES) % 64 === 63) await yieldNow(signal);
    }
  }
  // Self-duplicates of a chunk found in the base share its reference.
  for (let i = 0; i < entries.n; i++) {
    if (entries.kind[i] !== PENDING) continue;
    const first = byDigest.get(entries.digestOf(i))!.index;
    if (entries.kind[first] !== ChunkKind.BASE) continue;
    entries.kind[i] = ChunkKind.BASE;
    entries.refImage[i] = entries.refImage[first]!;
    entries.refIndex[i] = entries.refIndex[first]!;
  }
}

/** Pass 3: apply order (indices into entries). */
function orderEntries(entries: Entries, order?: BuildOrder): Uint32Array {
  const idx = new Uint32Array(entries.n);
  for (let i = 0; i < entries.n; i++) idx[i] = i;
  if (!order || order.chunks.length === 0) return idx; // scan order: memory by offset, then disk by offset
  const rank = new Map<number, number>();
  order.chunks.forEach((c, r) => {
    const key = chunkKey(c.image, c.index);
    if (!rank.has(key)) rank.set(key, r);
  });
  const r = new Float64Array(entries.n);
  for (let i = 0; i < entries.n; i++) r[i] = rank.get(chunkKey(entries.image[i]!, entries.index[i]!)) ?? Infinity;
  return idx.sort((x, y) => (r[x]! - r[y]! || x - y));
}

/** Collects records and payloads into a segment; flush() compresses, writes and lists it. */
class SegmentPacker {
  readonly table: SegmentInfo[] = [];
  /** Bytes written to the segments file so far. */
  offset = 0;
  private records: ChunkRecord[] = [];
  private readonly digests: Buffer;
  private digestCount = 0;
  /** The raw segment: payloads from 0; the digests are copied in behind them at flush. */
  private readonly raw: Buffer;
  private used = 0;
  private readonly maxRecords: number;

  constructor(private readonly fd: number, private readonly segmentBytes: number, private readonly level: number) {
    // A segment of references only (no payload) still ends after this many records.
    this.maxRecords = Math.max(1024, (segmentBytes / CHUNK_SIZE) * 16);
    this.digests = Buffer.allocUnsafeSlow(this.maxRecords * HASH_BYTES);
    this.raw = Buffer.allocUnsafeSlow(segmentBytes + this.digests.length);
  }

  /** Where the next payload goes, starting a new segment when this one is full. */
  payloadSlot(): { buf: Buffer; offset: number } {
    if (this.used + CHUNK_SIZE > this.segmentBytes) this.flush();
    const offset = this.used;
    this.used += CHUNK_SIZE;
    return { buf: this.raw.subarray(offset, offset + CHUNK_SIZE), offset };
  }

  add(r: ChunkRecord, digest: Uint8Array): void {
    if (hasDigest(r.kind)) this.digests.set(digest, this.digestCount++ * HASH_BYTES);
    this.records.push(r);
    if (this.records.length >= this.maxRecords) this.flush();
  }

  flush(): void {
    if (this.records.length === 0) return;
    const rawBytes = this.used + this.digestCount * HASH_BYTES;
    this.digests.copy(this.raw, this.used, 0, this.digestCount * HASH_BYTES);
    const z = compress(this.raw.subarray(0, rawBytes), { compressionLevel: this.level });
    let done = 0;
    while (done < z.length) done += writeSync(this.fd, z, done, z.length - done, this.offset + done);
    this.table.push({
      offset: this.offset,
      bytes: z.length,
      rawBytes,
      sha256: sha256(z),
      count: this.records.length,
      chunks: encodeRecords(this.records),
      digests: this.digestCount,
    });
    this.offset += z.length;
    this.records = [];
    this.digestCount = 0;
    this.used = 0;
  }
}

/** Pass 4: dedup against earlier overlay chunks, delta-encode, pack, compress. Returns chunk counts by kind. */
async function pack(
  base: ChunkFile[], custom: ChunkFile[], entries: Entries, order: Uint32Array, delta: 'auto' | 'xor' | 'raw', packer: SegmentPacker, signal?: AbortSignal,
): Promise<number[]> {
  const kinds = [0, 0, 0, 0, 0];
  const self = new ChunkIndex(entries.n);
  const target = Buffer.allocUnsafeSlow(CHUNK_SIZE);
  const xor = Buffer.allocUnsafeSlow(CHUNK_SIZE);
  for (let k = 0; k < order.length; k++) {
    const e = order[k]!;
    const image = entries.image[e]! as Image;
    const index = entries.index[e]!;
    const digest = entries.digestOf(e);
    let kind = entries.kind[e]!;
    let refImage = entries.refImage[e]! as Image;
    let refIndex = entries.refIndex[e]!;
    let payloadOffset = 0;
    if (kind === PENDING) {
      const prior = self.get(digest);
      const content = custom[image]!.chunk(index);
      if (prior) custom[prior.image]!.readAt(target, prior.index * CHUNK_SIZE);
      if (prior && target.equals(content)) {
        kind = ChunkKind.SELF;
        refImage = prior.image as Image;
        refIndex = prior.index;
      } else {
        if (!prior) self.add(digest, { image, index });
        xorInto(xor, content, base[image]!.chunk(index));
        kind = delta === 'xor' || (delta === 'auto' && zeroWords(xor) > zeroWords(content)) ? ChunkKind.XOR : ChunkKind.RAW;
        const slot = packer.payloadSlot();
        (kind === ChunkKind.XOR ? xor : content).copy(slot.buf);
        payloadOffset = slot.offset;
      }
    }
    kinds[kind]!++;
    packer.add({ image, kind: kind as ChunkKind, refImage, index, refIndex, payloadOffset }, digest);
    if (k % 4096 === 4095) await yieldNow(signal);
  }
  packer.flush();
  return kinds;
}

export async function buildOverlay(opts: BuildOptions): Promise<BuildResult> {
  const t0 = performance.now();
  const segmentBytes = opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
  if (segmentBytes < CHUNK_SIZE || segmentBytes % CHUNK_SIZE !== 0 || segmentBytes > MAX_SEGMENT_PAYLOAD_BYTES) {
    throw new VmsynthError('VMS_USAGE', `segment size ${segmentBytes} must be a multiple of 4096 between 4 KiB and ${MAX_SEGMENT_PAYLOAD_BYTES >> 20} MiB`);
  }
  const level = opts.zstdLevel ?? 3;
  const out = path.resolve(opts.out);
  if (!opts.force && (await fsp.stat(out).catch(() => null))) {
    throw new VmsynthError('VMS_OVERLAY_EXISTS', `${out} already exists`);
  }
  const files: ChunkFile[] = [];
  const open = (f: string) => {
    const cf = new ChunkFile(f);
    files.push(cf);
    return cf;
  };
  await removeStaleSiblings(out);
  const tmp = `${out}.tmp-${process.pid}`;
  let fd = -1;
  try {
    const base = [open(opts.base.files.memory), open(opts.base.files.disk)];
    const custom = [open(opts.custom.memory), open(opts.custom.disk)];
    checkSameSize(base[0]!, custom[0]!, 'memory');
    checkSameSize(base[1]!, custom[1]!, 'disk');
    for (const name of IMAGE_NAMES) {
      const want = opts.base.identity[name].bytes;
      const have = base[name === 'memory' ? 0 : 1]!.bytes;
      if (want !== have) throw new VmsynthError('VMS_BASE_CORRUPT', `base ${name} image is ${have} bytes, its manifest says ${want}`);
    }
    const deviceState = readFileSync(opts.custom.deviceState);

    publish('progress', { step: 'overlay: comparing the custom VM with its base' });
    const entries = new Entries();
    const { trimmedChunks, modified } = await scan(base, custom, entries, opts.trimmed ?? [], opts.signal);
    const tScan = performance.now();
    publish('progress', { step: `overlay: ${entries.n} chunks differ; looking them up in the base` });
    await lookaside(base, custom, entries, opts.signal);
    const tLook = performance.now();

    await fsp.rm(tmp, { recursive: true, force: true });
    await fsp.mkdir(tmp, { recursive: true });
    fd = openSync(path.join(tmp, SEGMENTS_FILE), 'w');
    const packer = new SegmentPacker(fd, segmentBytes, level);
    publish('progress', { step: `overlay: packing ${entries.n} chunks into ${segmentBytes >> 10} KiB segments` });
    const kinds = await pack(base, custom, entries, orderEntries(entries, opts.order), opts.delta ?? 'auto', packer, opts.signal);
    closeSync(fd);
    fd = -1;
    const tPack = performance.now();

    const body: OverlayBody = {
      format: OVERLAY_FORMAT,
      createdAt: new Date().toISOString(),
      tool: `vmsynth ${VMSYNTH_VERSION}`,
      base: { name: opts.base.name, memory: opts.base.identity.memory, disk: opts.base.identity.disk },
      chunkSize: CHUNK_SIZE,
      delta: { encoding: 'xor', rule: DELTA_RULES[opts.delta ?? 'auto'] },
      compression: { codec: 'zstd', level },
      segmentBytes,
      order: opts.order ? { kind: 'profile', runs: opts.order.runs, rank: opts.order.rank } : { kind: 'default', runs: 0 },
      vm: { appPort: opts.appPort },
      deviceState: { bytes: deviceState.length, sha256: sha256(deviceState).toString('hex'), zstd: compress(deviceState, { compressionLevel: 9 }) },
      segments: packer.table,
      stats: { chunks: kinds, trimmedChunks: opts.trimmedChunks ?? trimmedChunks, modified: { memory: modified[0]!, disk: modified[1]! } },
    };
    const bodyBytes = encodeBody(body);
    const sig = signBytes(opts.key, bodyBytes);
    const envelope: OverlayEnvelope = {
      format: OVERLAY_FORMAT,
      body: bodyBytes,
      signature: { alg: 'ed25519', keyId: opts.key.keyId, publicKey: opts.key.publicKeyRaw, sig },
    };
    const manifest = packr.pack(envelope);
    await fsp.writeFile(path.join(tmp, MANIFEST_FILE), manifest);
    if (opts.force) await fsp.rm(out, { recursive: true, force: true });
    await fsp.rename(tmp, out);
    const tEnd = performance.now();
    return {
      dir: out,
      manifestBytes: manifest.length,
      segmentsBytes: packer.offset,
      segments: packer.table.length,
      body,
      ms: { scan: Math.round(tScan - t0), lookaside: Math.round(tLook - tScan), pack: Math.round(tPack - tLook), total: Math.round(tEnd - t0) },
    };
  } catch (err) {
    if (fd >= 0) closeSync(fd);
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err;
  } finally {
    for (const f of files) f.close();
  }
}

