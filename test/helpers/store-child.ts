/**
 * A process that fills a store and may be killed mid-insert (the store's
 * crash tests): `store-child.ts DIR COUNT BYTES` puts COUNT random segments
 * of BYTES each, printing "put N" after each. VMSYNTH_STORE_CRASH makes it
 * SIGKILL itself at that step of its first insert.
 */
import { randomBytes } from 'node:crypto';
import { sha256 } from '../../lib/overlay/chunk-io.js';
import { SegmentStore } from '../../lib/store/segment-store.js';

const [dir, count, size] = process.argv.slice(2);
const store = await SegmentStore.open({ dir: dir!, maxBytes: 1 << 30 });
for (let i = 0; i < Number(count); i++) {
  const data = randomBytes(Number(size));
  await store.put(sha256(data), data);
  process.stdout.write(`put ${i}\n`);
}
store.close();
