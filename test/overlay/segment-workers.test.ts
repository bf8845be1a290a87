/**
 * The segment worker pool's failure path: a worker that dies (here: its
 * output image cannot be opened) fails the requests waiting on it and every
 * later one at once, instead of leaving them pending forever.
 */
import t from 'tap';
import { SegmentWorkers } from '../../lib/overlay/segment-workers.js';
import type { SegmentInfo } from '../../lib/overlay/format.js';

t.test('a dead worker fails requests at once, and the pool still closes', async (t) => {
  const pool = new SegmentWorkers(1, {
    segments: '/nonexistent/overlay.segments',
    base: ['/nonexistent/m', '/nonexistent/d'],
    out: ['/nonexistent/m', '/nonexistent/d'],
  });
  const s: SegmentInfo = {
    offset: 0,
    bytes: 10,
    rawBytes: 4096,
    sha256: new Uint8Array(32),
    count: 0,
    chunks: new Uint8Array(0),
    digests: 0,
  };
  await t.rejects(pool.apply(0, s), { code: 'VMS_INTERNAL' }, 'the waiting request fails');
  await t.rejects(pool.apply(1, s), { code: 'VMS_INTERNAL' }, 'so does a later one, without waiting');
  await pool.close();
});
