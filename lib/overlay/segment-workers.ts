/**
 * Worker threads for segments, so verifying, decompressing and writing keep
 * off the calling thread (which later also answers FUSE). Two operations:
 *
 *   open(segment)          check the SHA-256, decompress, return the raw bytes
 *                          (inline when there are no workers);
 *   applyPayloads(segment) check, decompress, and write the segment's XOR and
 *                          RAW chunks straight into the output images (only
 *                          when the pool was given base and output files).
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

const zstdPath = createRequire(import.meta.url).resolve('zstd-napi');

// Plain CommonJS so the same worker runs from the TypeScript sources and from dist/.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { hash } = require('node:crypto');
const fs = require('node:fs');
const { decompress } = require(${JSON.stringify(zstdPath)});
const CHUNK = 4096, BLOCK = 1 << 20;
const files = workerData || { base: [], out: [] };
const base = files.base.map((f) => { const fd = fs.openSync(f, 'r'); return { fd, size: fs.fstatSync(fd).size, block: Buffer.allocUnsafeSlow(BLOCK), start: -1, len: 0 }; });
const out = files.out.map((f) => fs.openSync(f, 'r+'));
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
const run = Buffer.allocUnsafeSlow(BLOCK);
let runImage = -1, runStart = 0, runCount = 0;
function flush() {
  if (runCount === 0) return;
  const len = runCount * CHUNK;
  let done = 0;
  while (done < len) done += fs.writeSync(out[runImage], run, done, len - done, runStart * CHUNK + done);
  runCount = 0;
}
function exact(b) {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? b.buffer : b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
}
function writePayloads(raw, rec, count) {
  for (let i = 0; i < count; i++) {
    const o = i * 16, kind = rec[o + 1];
    if (kind !== 3 && kind !== 4) continue;
    const image = rec[o], index = rec.readUInt32LE(o + 4), p = rec.readUInt32LE(o + 12);
    if (image !== runImage || index !== runStart + runCount || runCount * CHUNK >= BLOCK) { flush(); runImage = image; runStart = index; }
    const dst = run.subarray(runCount * CHUNK, (runCount + 1) * CHUNK);
    if (kind === 4) raw.copy(dst, 0, p, p + CHUNK);
    else {
      const b = baseChunk(base[image], index);
      if ((raw.byteOffset + p) % 4 === 0) {
        const x = new Int32Array(raw.buffer, raw.byteOffset + p, 1024), y = new Int32Array(b.buffer, b.byteOffset, 1024), z = new Int32Array(dst.buffer, dst.byteOffset, 1024);
        for (let k = 0; k < 1024; k++) z[k] = x[k] ^ y[k];
      } else {
        for (let k = 0; k < CHUNK; k++) dst[k] = raw[p + k] ^ b[k];
      }
    }
    runCount++;
  }
  flush();
}
parentPort.on('message', (m) => {
  if (m.op === 'close') {
    for (const b of base) fs.closeSync(b.fd);
    for (const fd of out) fs.closeSync(fd);
    parentPort.postMessage({ id: m.id });
    return;
  }
  let raw;
  try {
    const c = Buffer.from(m.buf);
    if (!hash('sha256', c, 'buffer').equals(Buffer.from(m.sha256))) { parentPort.postMessage({ id: m.id, error: 'does not match its SHA-256' }); return; }
    raw = decompress(c);
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: 'does not decompress (' + e.message + ')' });
    return;
  }
  if (raw.length !== m.rawBytes) { parentPort.postMessage({ id: m.id, error: 'decompresses to ' + raw.length + ' bytes, expected ' + m.rawBytes }); return; }
  if (m.op === 'open') {
    const ab = exact(raw);
    parentPort.postMessage({ id: m.id, raw: ab }, [ab]);
    return;
  }
  try {
    writePayloads(raw, Buffer.from(m.chunks.buffer, m.chunks.byteOffset, m.chunks.byteLength), m.count);
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
  resolve: (raw: ArrayBuffer | undefined) => void;
  reject: (e: Error) => void;
}

export class SegmentWorkers {
  private workers: Worker[] = [];
  private pending = new Map<number, Pending>();
  private nextId = 0;
  private rr = 0;

  /** `files` (base and output image paths, memory then disk) enables applyPayloads. */
  constructor(readonly threads: number, private readonly files?: { base: string[]; out: string[] }) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData: files });
      w.on('message', (m: { id: number; raw?: ArrayBuffer; error?: string }) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.error) p.reject(new VmsynthError('VMS_OVERLAY_CORRUPT', `segment ${p.index} ${m.error}`, { details: { segment: p.index } }));
        else p.resolve(m.raw);
      });
      w.on('error', (err) => {
        for (const p of this.pending.values()) p.reject(new VmsynthError('VMS_INTERNAL', `a segment worker failed: ${err.message}`, { cause: err }));
        this.pending.clear();
      });
      this.workers.push(w);
    }
  }

  private post(index: number, w: Worker, message: Record<string, unknown>, transfer: ArrayBuffer[]): Promise<ArrayBuffer | undefined> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { index, resolve, reject });
      w.postMessage({ id, ...message }, transfer);
    });
  }

  private send(op: 'open' | 'apply', index: number, s: Pick<SegmentInfo, 'sha256' | 'rawBytes' | 'count' | 'chunks'>, compressed: Buffer): Promise<ArrayBuffer | undefined> {
    const buf = ownBuffer(compressed);
    const w = this.workers[this.rr++ % this.workers.length]!;
    // Exact copies: a view into the manifest would clone the whole manifest buffer.
    return this.post(index, w, { op, buf, sha256: new Uint8Array(s.sha256), rawBytes: s.rawBytes, count: s.count, chunks: op === 'apply' ? new Uint8Array(s.chunks) : undefined }, [buf]);
  }

  /** Checks and decompresses segment `index`; `compressed` is handed over to a worker. */
  async open(index: number, s: SegmentInfo, compressed: Buffer): Promise<Buffer> {
    if (this.workers.length === 0) return openSegment(index, s, compressed);
    return Buffer.from((await this.send('open', index, s, compressed))!);
  }

  /** Checks, decompresses and writes the payload chunks of segment `index` into the output images. */
  async applyPayloads(index: number, s: SegmentInfo, compressed: Buffer): Promise<void> {
    if (!this.files || this.workers.length === 0) throw new VmsynthError('VMS_INTERNAL', 'applyPayloads needs worker threads and output files');
    await this.send('apply', index, s, compressed);
  }

  /** Closes the workers' file descriptors, then the workers. */
  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => this.post(-1, w, { op: 'close' }, []).catch(() => undefined)));
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers = [];
  }
}
