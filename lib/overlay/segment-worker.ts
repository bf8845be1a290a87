/**
 * The segment worker thread: runs apply-segment.ts's jobs off the thread
 * that answers FUSE. Loaded by segment-workers.ts (compiled, from dist/, or
 * from the TypeScript sources under a loader in tests). Its files come as
 * workerData; a file it cannot open kills it, which fails the pool.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runJob, SegmentApplier, type SegmentFiles, type SegmentJob } from './apply-segment.js';

const port = parentPort!;
const applier = new SegmentApplier(workerData as SegmentFiles);

port.on('message', (m: { id: number; job: SegmentJob } | { id: number; close: true }) => {
  if ('close' in m) {
    applier.close();
    port.postMessage({ id: m.id, error: null });
    return;
  }
  port.postMessage({ id: m.id, error: runJob(applier, m.job) });
});
