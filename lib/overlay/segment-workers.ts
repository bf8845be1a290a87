/**
 * A pool of segment worker threads (segment-worker.ts), so verifying,
 * decompressing and writing segments keep off the calling thread (which, on
 * a synthesis server, answers FUSE). With no threads, the same jobs run on
 * the caller's thread: one apply path either way (apply-segment.ts).
 *
 * Nothing crosses threads but the job: the segment's manifest entry and,
 * for a segment received over the network, its bytes (transferred, not
 * copied). A job that fails rejects with the worker's VmsynthError code and
 * details; a worker that dies fails every job waiting and every later one.
 */
import { Worker } from 'node:worker_threads';
import { compiledModule } from '../core/compiled.js';
import { VmsynthError } from '../core/errors.js';
import {
  runJob,
  SegmentApplier,
  type JobError,
  type SegmentEntry,
  type SegmentFiles,
  type SegmentJob,
} from './apply-segment.js';

/** The worker's module: compiled JavaScript (core/compiled.ts says which). */
function workerModule(): URL {
  return compiledModule(import.meta.url, 'overlay/segment-worker.js', 'segment worker');
}

interface Pending {
  worker: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

/**
 * An ArrayBuffer holding exactly `b`'s bytes: `b`'s own when it is not a view
 * into a larger one (a small Buffer may be a slice of Node's shared pool,
 * which must never be transferred or cloned whole).
 */
function ownBuffer(b: Uint8Array): ArrayBuffer {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) return b.buffer;
  return (b.buffer as ArrayBuffer).slice(b.byteOffset, b.byteOffset + b.byteLength);
}

/** A manifest entry fit to cross threads: an exact copy of its chunk table (a view would clone the whole manifest). */
function entry(s: SegmentEntry): SegmentEntry {
  return {
    offset: s.offset,
    bytes: s.bytes,
    sha256: new Uint8Array(s.sha256),
    rawBytes: s.rawBytes,
    count: s.count,
    chunks: new Uint8Array(s.chunks),
    digests: s.digests,
  };
}

function fromJob(e: JobError): VmsynthError {
  return new VmsynthError(e.code, e.message, { details: e.details });
}

export class SegmentWorkers {
  private workers: Worker[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  /** Jobs outstanding per worker: a new one goes to the least busy. */
  private readonly busy: number[] = [];
  /** Set when a worker died: every later job fails at once instead of waiting forever. */
  private failed: VmsynthError | null = null;
  /** With no worker threads: the applier on this thread. */
  private readonly inline: SegmentApplier | null;

  /** `threads` workers over `files` (memory then disk); 0 runs every job on this thread. */
  constructor(
    readonly threads: number,
    files: SegmentFiles,
  ) {
    this.inline = threads === 0 ? new SegmentApplier(files) : null;
    for (let i = 0; i < threads; i++) {
      // No node flags and no NODE_OPTIONS: the worker is compiled JavaScript, and the preloads a
      // parent was started with (tsx and tap's process tracking, under the tests) cost every
      // worker 0.3 to 0.5 s to start, and its session as much to close.
      const w = new Worker(workerModule(), {
        workerData: files,
        execArgv: [],
        env: { ...process.env, NODE_OPTIONS: '' },
      });
      w.on('message', (m: { id: number; error: JobError | null }) => this.settle(m.id, m.error));
      w.on('error', (err) => {
        this.failed = new VmsynthError('VMS_INTERNAL', `a segment worker failed: ${err.message}`, { cause: err });
        for (const p of this.pending.values()) p.reject(this.failed);
        this.pending.clear();
      });
      this.workers.push(w);
      this.busy.push(0);
    }
  }

  private settle(id: number, error: JobError | null): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    this.busy[p.worker]!--;
    if (error) p.reject(fromJob(error));
    else p.resolve();
  }

  private post(worker: number, message: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { worker, resolve, reject });
      this.busy[worker]!++;
      this.workers[worker]!.postMessage({ id, ...message }, transfer);
    });
  }

  /** The worker with the fewest jobs outstanding. */
  private leastBusy(): number {
    let best = 0;
    for (let i = 1; i < this.busy.length; i++) if (this.busy[i]! < this.busy[best]!) best = i;
    return best;
  }

  private run(job: SegmentJob, transfer: ArrayBuffer[] = []): Promise<void> {
    if (this.inline) {
      const error = runJob(this.inline, job);
      return error ? Promise.reject(fromJob(error)) : Promise.resolve();
    }
    return this.post(this.leastBusy(), { job }, transfer);
  }

  /**
   * Checks segment `index` and writes its payloads and base references into
   * the output images. `compressed`: the segment as received (handed over to
   * a worker; do not use it afterwards); without it, read from the segments
   * file.
   */
  apply(index: number, s: SegmentEntry, compressed?: Buffer): Promise<void> {
    if (!compressed) return this.run({ op: 'apply', index, segment: entry(s), compressed: null });
    if (this.inline) return this.run({ op: 'apply', index, segment: s, compressed });
    const buf = ownBuffer(compressed);
    return this.run({ op: 'apply', index, segment: entry(s), compressed: new Uint8Array(buf) }, [buf]);
  }

  /** Checks every chunk of segment `index`, rebuilt raw by chunk lookaside (handed over like `compressed`), then writes it. */
  applyRebuilt(index: number, s: SegmentEntry, raw: Buffer): Promise<void> {
    if (this.inline) return this.run({ op: 'apply-rebuilt', index, segment: s, raw });
    const buf = ownBuffer(raw);
    return this.run({ op: 'apply-rebuilt', index, segment: entry(s), raw: new Uint8Array(buf) }, [buf]);
  }

  /** Checks segment `index` from the segments file, down to every chunk's digest. */
  verify(index: number, s: SegmentEntry): Promise<void> {
    return this.run({ op: 'verify', index, segment: this.inline ? s : entry(s) });
  }

  /** Closes the files, then the workers. */
  async close(): Promise<void> {
    this.inline?.close();
    await Promise.all(this.workers.map((_w, i) => this.post(i, { close: true }).catch(() => undefined)));
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers = [];
  }
}
