/**
 * Verify + decompress of segments on worker threads, so applying (and later
 * serving FUSE) keeps its own thread. With 0 threads the work runs inline.
 * Results come back per call; callers bound how many they keep in flight.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { VmsynthError } from '../core/errors.js';
import type { SegmentInfo } from './format.js';
import { openSegment } from './reader.js';
import { ownBuffer } from './apply-pool.js';

const zstdPath = createRequire(import.meta.url).resolve('zstd-napi');

// Plain CommonJS so the same worker runs from the TypeScript sources and from dist/.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { hash } = require('node:crypto');
const { decompress } = require(${JSON.stringify(zstdPath)});
parentPort.on('message', (m) => {
  try {
    const c = Buffer.from(m.buf);
    if (!hash('sha256', c, 'buffer').equals(Buffer.from(m.sha256))) {
      parentPort.postMessage({ id: m.id, error: 'does not match its SHA-256' });
      return;
    }
    const raw = decompress(c);
    if (raw.length !== m.rawBytes) {
      parentPort.postMessage({ id: m.id, error: 'decompresses to ' + raw.length + ' bytes, expected ' + m.rawBytes });
      return;
    }
    const ab = raw.byteOffset === 0 && raw.byteLength === raw.buffer.byteLength ? raw.buffer : raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength);
    parentPort.postMessage({ id: m.id, raw: ab }, [ab]);
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: 'does not decompress (' + e.message + ')' });
  }
});
`;

interface Pending {
  index: number;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

export class SegmentPool {
  private workers: Worker[] = [];
  private pending = new Map<number, Pending>();
  private nextId = 0;
  private rr = 0;

  constructor(readonly threads: number) {
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true });
      w.on('message', (m: { id: number; raw?: ArrayBuffer; error?: string }) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.error) p.reject(new VmsynthError('VMS_OVERLAY_CORRUPT', `segment ${p.index} ${m.error}`, { details: { segment: p.index } }));
        else p.resolve(Buffer.from(m.raw!));
      });
      w.on('error', (err) => this.failAll(err));
      this.workers.push(w);
    }
  }

  /** Checks and decompresses segment `index`; `compressed` is handed over (transferred) to a worker. */
  open(index: number, info: Pick<SegmentInfo, 'sha256' | 'rawBytes'>, compressed: Buffer): Promise<Buffer> {
    if (this.workers.length === 0) {
      try {
        return Promise.resolve(openSegment(index, info, compressed));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    const id = this.nextId++;
    const w = this.workers[this.rr++ % this.workers.length]!;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { index, resolve, reject });
      // Transfer an ArrayBuffer of exactly these bytes: a small Buffer may be a view into Node's shared pool.
      const own = ownBuffer(compressed);
      w.postMessage({ id, buf: own, sha256: Buffer.from(info.sha256), rawBytes: info.rawBytes }, [own]);
    });
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(new VmsynthError('VMS_INTERNAL', `a segment worker failed: ${err.message}`, { cause: err }));
    this.pending.clear();
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers = [];
  }
}
