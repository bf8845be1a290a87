/**
 * Parallel offline apply: worker threads verify, decompress and write the
 * payload chunks (XOR and RAW) of whole segments straight into the output
 * images; the caller then writes the segment's references (ZERO, BASE,
 * SELF) in segment order. A SELF reference always names a payload chunk of
 * the same or an earlier segment, and the caller handles a segment only
 * after its worker is done and all earlier segments are, so every target is
 * on disk before it is copied. Workers and caller write disjoint chunks.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { VmsynthError } from '../core/errors.js';
import type { SegmentInfo } from './format.js';

/** An ArrayBuffer holding exactly `b`'s bytes (`b`'s own when it is not a view into a larger one). */
export function ownBuffer(b: Buffer): ArrayBuffer {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) return b.buffer;
  return (b.buffer as ArrayBuffer).slice(b.byteOffset, b.byteOffset + b.byteLength);
}

const zstdPath = createRequire(import.meta.url).resolve('zstd-napi');

// Plain CommonJS so the same worker runs from the TypeScript sources and from dist/.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { hash } = require('node:crypto');
const fs = require('node:fs');
const { decompress } = require(${JSON.stringify(zstdPath)});
const CHUNK = 4096, BLOCK = 1 << 20;
const base = workerData.base.map((f) => { const fd = fs.openSync(f, 'r'); return { fd, size: fs.fstatSync(fd).size, block: Buffer.allocUnsafeSlow(BLOCK), start: -1, len: 0 }; });
const out = workerData.out.map((f) => fs.openSync(f, 'r+'));
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
parentPort.on('message', (m) => {
  if (m.close) {
    for (const b of base) fs.closeSync(b.fd);
    for (const fd of out) fs.closeSync(fd);
    parentPort.postMessage({ id: m.id });
    return;
  }
  try {
    const c = Buffer.from(m.buf);
    if (!hash('sha256', c, 'buffer').equals(Buffer.from(m.sha256))) { parentPort.postMessage({ id: m.id, error: 'does not match its SHA-256' }); return; }
    const raw = decompress(c);
    if (raw.length !== m.rawBytes) { parentPort.postMessage({ id: m.id, error: 'decompresses to ' + raw.length + ' bytes, expected ' + m.rawBytes }); return; }
    const rec = Buffer.from(m.chunks);
    for (let i = 0; i < m.count; i++) {
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
    parentPort.postMessage({ id: m.id });
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: 'could not be applied (' + e.message + ')' });
  }
});
`;

interface Pending {
  index: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class ApplyPool {
  private workers: Worker[] = [];
  private pending = new Map<number, Pending>();
  private nextId = 0;
  private rr = 0;

  constructor(threads: number, files: { base: string[]; out: string[] }) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData: files });
      w.on('message', (m: { id: number; error?: string }) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.error) p.reject(new VmsynthError('VMS_OVERLAY_CORRUPT', `segment ${p.index} ${m.error}`, { details: { segment: p.index } }));
        else p.resolve();
      });
      w.on('error', (err) => {
        for (const p of this.pending.values()) p.reject(new VmsynthError('VMS_INTERNAL', `an apply worker failed: ${err.message}`, { cause: err }));
        this.pending.clear();
      });
      this.workers.push(w);
    }
  }

  /** Verifies, decompresses and writes the payload chunks of segment `index`. */
  applyPayloads(index: number, s: SegmentInfo, compressed: Buffer): Promise<void> {
    const id = this.nextId++;
    const w = this.workers[this.rr++ % this.workers.length]!;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { index, resolve, reject });
      // Transfer an ArrayBuffer of exactly these bytes: a small Buffer may be a view into Node's shared pool.
      const own = ownBuffer(compressed);
      w.postMessage({ id, buf: own, sha256: Buffer.from(s.sha256), rawBytes: s.rawBytes, count: s.count, chunks: Buffer.from(s.chunks) }, [own]);
    });
  }

  /** Closes the workers' file descriptors, then the workers. */
  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => new Promise<void>((resolve) => {
      const id = this.nextId++;
      this.pending.set(id, { index: -1, resolve, reject: () => resolve() });
      w.postMessage({ id, close: true });
    })));
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers = [];
  }
}
