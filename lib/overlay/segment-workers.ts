/**
 * Worker threads for segments, so verifying, decompressing and writing keep
 * off the calling thread (which later also answers FUSE). Two operations:
 *
 *   open(segment)          check the SHA-256, decompress, return the raw bytes
 *                          (inline when there are no workers);
 *   applyPayloads(segment) read the segment from the segments file (or take
 *                          it as received: applyReceived), check,
 *                          decompress, and write its XOR and RAW chunks
 *                          straight into the output images (only when the
 *                          pool was given the segments, base and output files).
 *                          Nothing crosses threads but the chunk records, and
 *                          every buffer is reused.
 *
 * applyPayloads is safe alongside the caller writing the references (ZERO,
 * BASE, SELF) of earlier segments: every chunk is in exactly one record, and
 * a SELF target is always a payload chunk of the same or an earlier segment,
 * which the caller handles only after that segment's worker is done.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { VmsynthError } from '../core/errors.js';
import type { SegmentInfo } from './format.js';
import { openSegment } from './reader.js';

const require = createRequire(import.meta.url);
const zstdPath = require.resolve('zstd-napi');
const zstdBindingPath = require.resolve('zstd-napi/binding.js');

/** Without workers, open() cycles through this many output buffers: a result stays valid for this many more calls. */
export const INLINE_BUFFERS = 4;

// Plain CommonJS so the same worker runs from the TypeScript sources and from dist/.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { hash } = require('node:crypto');
const fs = require('node:fs');
const { decompress } = require(${JSON.stringify(zstdPath)});
const { DCtx } = require(${JSON.stringify(zstdBindingPath)});
const dctx = new DCtx();
// apply decompresses into one reused buffer: fresh 1 MB buffers cost more in page faults than zstd itself.
let scratch = Buffer.allocUnsafeSlow(1 << 20);
function inflateReused(c, rawBytes) {
  if (scratch.length < rawBytes) scratch = Buffer.allocUnsafeSlow(rawBytes);
  const dst = scratch.subarray(0, rawBytes);
  return dst.subarray(0, dctx.decompress(dst, c));
}
const CHUNK = 4096, BLOCK = 1 << 20;
const files = workerData || { base: [], out: [] };
const base = files.base.map((f) => { const fd = fs.openSync(f, 'r'); return { fd, size: fs.fstatSync(fd).size, block: Buffer.allocUnsafeSlow(BLOCK), start: -1, len: 0 }; });
const out = files.out.map((f) => fs.openSync(f, 'r+'));
const segFd = files.segments ? fs.openSync(files.segments, 'r') : -1;
let cbuf = Buffer.allocUnsafeSlow(1 << 20);
function readSegment(offset, bytes) {
  if (cbuf.length < bytes) cbuf = Buffer.allocUnsafeSlow(bytes);
  let done = 0;
  while (done < bytes) { const n = fs.readSync(segFd, cbuf, done, bytes - done, offset + done); if (n === 0) throw new Error('the segments file ends inside it'); done += n; }
  return cbuf.subarray(0, bytes);
}
function baseChunk(b, index) {
  const off = index * CHUNK;
  if (off < b.start || off + CHUNK > b.start + b.len) {
    b.start = off - (off % BLOCK);
    b.len = Math.min(BLOCK, b.size - b.start);
    let done = 0;
    while (done < b.len) { const n = fs.readSync(b.fd, b.block, done, b.len - done, b.start + done); if (n === 0) { b.block.fill(0, done, b.len); break; } done += n; }
  }
  return b.block.subarray(off - b.start, off - b.start + CHUNK);
}
// A run: neighbouring chunks of one image, written with one pwritev. RAW
// payloads are written straight from the decompressed segment (neighbouring
// payloads merge into one iovec); XOR results go to xbuf first.
const xbuf = Buffer.allocUnsafeSlow(BLOCK);
const iov = [];
let runImage = -1, runStart = 0, runCount = 0, xused = 0;
let cur = null, curStart = 0, curEnd = 0;
function xor1024(Z, z, X, x, Y, y) {
  for (let e = z + 1024; z < e; z++, x++, y++) Z[z] = X[x] ^ Y[y];
}
const views = new WeakMap();
function words(ab) {
  let v = views.get(ab);
  if (!v) { v = new Int32Array(ab, 0, ab.byteLength >> 2); views.set(ab, v); }
  return v;
}
function slice(buf, start, end) {
  if (cur === buf && curEnd === start) { curEnd = end; return; }
  if (cur) iov.push(cur.subarray(curStart, curEnd));
  cur = buf; curStart = start; curEnd = end;
}
function flush() {
  if (runCount === 0) return;
  if (cur) iov.push(cur.subarray(curStart, curEnd));
  cur = null;
  const len = runCount * CHUNK, pos = runStart * CHUNK;
  let done = fs.writevSync(out[runImage], iov, pos);
  if (done < len) {
    const all = Buffer.concat(iov);
    while (done < len) done += fs.writeSync(out[runImage], all, done, len - done, pos + done);
  }
  iov.length = 0;
  runCount = 0;
  xused = 0;
}
function exact(b) {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? b.buffer : b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
}
function writePayloads(raw, rec, count, baseRefs) {
  for (let i = 0; i < count; i++) {
    const o = i * 16, kind = rec[o + 1];
    if (kind !== 3 && kind !== 4 && !(kind === 1 && baseRefs)) continue;
    const image = rec[o], index = rec.readUInt32LE(o + 4), p = rec.readUInt32LE(o + 12);
    if (image !== runImage || index !== runStart + runCount || xused === BLOCK || iov.length >= 1000) { flush(); runImage = image; runStart = index; }
    if (kind === 4) slice(raw, p, p + CHUNK);
    else if (kind === 1) {
      // A base reference (into either base image): copied, since the next baseChunk may reuse the block.
      baseChunk(base[rec[o + 2]], rec.readUInt32LE(o + 8)).copy(xbuf, xused);
      slice(xbuf, xused, xused + CHUNK);
      xused += CHUNK;
    }
    else {
      const b = baseChunk(base[image], index);
      // Whole-buffer Int32 views indexed by offset: a view per chunk costs 3-5x the XOR itself.
      const X = words(raw.buffer), Y = words(b.buffer), Z = words(xbuf.buffer);
      const xo = raw.byteOffset + p, yo = b.byteOffset, zo = xbuf.byteOffset + xused;
      if ((xo | yo | zo) % 4 === 0) {
        xor1024(Z, zo >> 2, X, xo >> 2, Y, yo >> 2);
      } else {
        for (let k = 0; k < CHUNK; k++) xbuf[xused + k] = raw[p + k] ^ b[k];
      }
      slice(xbuf, xused, xused + CHUNK);
      xused += CHUNK;
    }
    runCount++;
  }
  flush();
}
parentPort.on('message', (m) => {
  if (m.op === 'close') {
    for (const b of base) fs.closeSync(b.fd);
    for (const fd of out) fs.closeSync(fd);
    if (segFd >= 0) fs.closeSync(segFd);
    parentPort.postMessage({ id: m.id });
    return;
  }
  let raw;
  try {
    const c = m.buf ? Buffer.from(m.buf) : readSegment(m.offset, m.bytes);
    if (!hash('sha256', c, 'buffer').equals(Buffer.from(m.sha256))) { parentPort.postMessage({ id: m.id, error: 'does not match its SHA-256' }); return; }
    raw = m.op === 'open' ? decompress(c) : inflateReused(c, m.rawBytes);
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: 'does not decompress to its ' + m.rawBytes + ' bytes (' + e.message + ')' });
    return;
  }
  if (raw.length !== m.rawBytes) { parentPort.postMessage({ id: m.id, error: 'decompresses to ' + raw.length + ' bytes, expected ' + m.rawBytes }); return; }
  if (m.op === 'open') {
    const ab = exact(raw);
    parentPort.postMessage({ id: m.id, raw: ab }, [ab]);
    return;
  }
  try {
    writePayloads(raw, Buffer.from(m.chunks.buffer, m.chunks.byteOffset, m.chunks.byteLength), m.count, !!m.baseRefs);
    parentPort.postMessage({ id: m.id });
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: 'could not be applied (' + e.message + ')' });
  }
});
`;

/**
 * An ArrayBuffer holding exactly `b`'s bytes: `b`'s own when it is not a view
 * into a larger one (a small Buffer may be a slice of Node's shared pool,
 * which must never be transferred or cloned whole).
 */
function ownBuffer(b: Uint8Array): ArrayBuffer {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) return b.buffer;
  return (b.buffer as ArrayBuffer).slice(b.byteOffset, b.byteOffset + b.byteLength);
}

interface Pending {
  index: number;
  worker: number;
  resolve: (raw: ArrayBuffer | undefined) => void;
  reject: (e: Error) => void;
}

export class SegmentWorkers {
  private workers: Worker[] = [];
  private pending = new Map<number, Pending>();
  private nextId = 0;
  /** Requests outstanding per worker: a new one goes to the least busy. */
  private busy: number[] = [];
  /** Set when a worker died: every later request fails at once instead of waiting forever. */
  private failed: VmsynthError | null = null;
  private inline: Buffer[] = [];
  private inlineNext = 0;

  /** `files` (the segments file, base and output image paths, memory then disk) enables applyPayloads; without a segments file, applyReceived only. */
  constructor(readonly threads: number, private readonly files?: { segments?: string; base: string[]; out: string[] }) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData: files });
      w.on('message', (m: { id: number; raw?: ArrayBuffer; error?: string }) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        this.busy[p.worker]!--;
        if (m.error) p.reject(new VmsynthError('VMS_OVERLAY_CORRUPT', `segment ${p.index} ${m.error}`, { details: { segment: p.index } }));
        else p.resolve(m.raw);
      });
      w.on('error', (err) => {
        this.failed = new VmsynthError('VMS_INTERNAL', `a segment worker failed: ${err.message}`, { cause: err });
        for (const p of this.pending.values()) p.reject(this.failed);
        this.pending.clear();
      });
      this.workers.push(w);
      this.busy.push(0);
    }
  }

  private post(index: number, worker: number, message: Record<string, unknown>, transfer: ArrayBuffer[]): Promise<ArrayBuffer | undefined> {
    const id = this.nextId++;
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { index, worker, resolve, reject });
      this.busy[worker]!++;
      this.workers[worker]!.postMessage({ id, ...message }, transfer);
    });
  }

  /** The worker with the fewest requests outstanding. */
  private worker(): number {
    let best = 0;
    for (let i = 1; i < this.busy.length; i++) if (this.busy[i]! < this.busy[best]!) best = i;
    return best;
  }

  /**
   * Checks and decompresses segment `index`; `compressed` is handed over to a
   * worker. Without workers the result lives in a reused buffer, valid for
   * INLINE_BUFFERS - 1 more calls.
   */
  async open(index: number, s: SegmentInfo, compressed: Buffer): Promise<Buffer> {
    if (this.workers.length === 0) {
      const slot = this.inlineNext++ % INLINE_BUFFERS;
      if ((this.inline[slot]?.length ?? 0) < s.rawBytes) this.inline[slot] = Buffer.allocUnsafeSlow(Math.max(s.rawBytes, 1 << 20));
      return openSegment(index, s, compressed, this.inline[slot]);
    }
    const buf = ownBuffer(compressed);
    return Buffer.from((await this.post(index, this.worker(), { op: 'open', buf, sha256: new Uint8Array(s.sha256), rawBytes: s.rawBytes }, [buf]))!);
  }

  /** A worker reads segment `index` from the segments file, checks and decompresses it, and writes its payload chunks into the output images. */
  async applyPayloads(index: number, s: SegmentInfo): Promise<void> {
    if (!this.files || this.workers.length === 0) throw new VmsynthError('VMS_INTERNAL', 'applyPayloads needs worker threads and output files');
    // Exact copies: a view into the manifest would clone the whole manifest buffer.
    await this.post(index, this.worker(), { op: 'apply', offset: s.offset, bytes: s.bytes, sha256: new Uint8Array(s.sha256), rawBytes: s.rawBytes, count: s.count, chunks: new Uint8Array(s.chunks) }, []);
  }

  /**
   * A worker checks and decompresses a segment that arrived over the network
   * (`compressed` is handed over), then writes its payload chunks and its
   * base references into the output images. Zero chunks and SELF references
   * are left to the caller: a SELF target may be in a segment not yet here.
   */
  async applyReceived(index: number, s: SegmentInfo, compressed: Buffer): Promise<void> {
    if (!this.files || this.workers.length === 0) throw new VmsynthError('VMS_INTERNAL', 'applyReceived needs worker threads and output files');
    const buf = ownBuffer(compressed);
    await this.post(index, this.worker(), { op: 'apply', buf, sha256: new Uint8Array(s.sha256), rawBytes: s.rawBytes, count: s.count, chunks: new Uint8Array(s.chunks), baseRefs: true }, [buf]);
  }

  /** Closes the workers' file descriptors, then the workers. */
  async close(): Promise<void> {
    await Promise.all(this.workers.map((_w, i) => this.post(-1, i, { op: 'close' }, []).catch(() => undefined)));
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers = [];
  }
}
