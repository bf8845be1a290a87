/**
 * Reads through a FUSE mount the way a guest does: from another process, so
 * the process serving the mount is never the one blocked on it.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Reads one 4 KiB chunk with dd, O_DIRECT so the request is exactly that
 * chunk (no readahead into its neighbours). `finished` tells whether the read
 * has returned yet.
 */
export function readChunk(file: string, index: number): { done: Promise<Buffer>; finished: () => boolean } {
  let over = false;
  const done = run('dd', [`if=${file}`, 'bs=4096', `skip=${index}`, 'count=1', 'iflag=direct', 'status=none'], {
    encoding: 'buffer',
    maxBuffer: 1 << 20,
  })
    .then((r) => r.stdout as Buffer)
    .finally(() => {
      over = true;
    });
  return { done, finished: () => over };
}

export { until } from './wait.js';
