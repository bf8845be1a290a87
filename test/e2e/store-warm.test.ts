/**
 * The cloudlet store on the real stack: a cold synthesis fills it, a warm
 * synthesis of the same overlay takes every segment from it (the client
 * sends no segment bytes) and answers with the customization's bytes; a
 * stored segment with a flipped bit is caught by the segment check, dropped,
 * and fetched from the client instead, never reaching the guest; a session's
 * lease and a pin keep its segments through a gc that evicts everything
 * else.
 */
import { removeTestRoot, testRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { synthesize, type SynthesizeOptions } from '../../lib/client/client.js';
import { packageRoot, runDir, storeDir } from '../../lib/core/paths.js';
import { appDigest, hex64 } from '../../lib/guest/patterns.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { ServerMetrics } from '../../lib/server/metrics.js';
import { SynthServer } from '../../lib/server/server.js';
import { overlayId } from '../../lib/store/segment-store.js';
import { DOMAIN_PREFIX } from '../../lib/vm/libvirt.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';

t.teardown(removeTestRoot);

await guestBase('storebase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const custom = path.join(testRoot, 'custom');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 'storebase', out: ov, script: demo, keepCustom: custom });
const customDisk = await fsp.readFile(path.join(custom, 'disk.raw'));
const installedDigest = hex64(appDigest(customDisk.subarray(40 << 20, 44 << 20)));
const overlay = await Overlay.open(ov, { trusted: null });
const id = overlayId(overlay).toString('hex');

const metrics = new ServerMetrics();
t.teardown(() => metrics.close());
const server = await SynthServer.listen({ port: 0, store: { dir: storeDir(), maxBytes: 1 << 30 } });
t.teardown(() => server.close());
const store = server.store!;
const addr = server.address();
const request = { method: 'GET' as const, path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' };
const synth = (o: Partial<SynthesizeOptions>) =>
  synthesize({ server: `${addr.host}:${addr.port}`, overlay: ov, request, timeoutMs: 300_000, ...o });
type Stats = { segmentsReceived: number; bytesReceived: number; segmentsFromStore: number; bytesFromStore: number };
const clientBytes = (r: { sends: { bytes: number }[] }) => r.sends.reduce((n, s) => n + s.bytes, 0);

t.test('cold, then warm: the second synthesis sends no segment bytes over the link', async (t) => {
  const cold = await synth({ policy: 'early-start' });
  const cs = cold.serverStats as Stats;
  t.equal(cs.segmentsReceived, cold.segments, 'cold: every segment came from the client');
  t.equal(cs.segmentsFromStore, 0);
  t.equal(store.stats().segments, cold.segments, 'and entered the store');
  t.equal(store.stats().bytes, overlay.segmentsBytes);

  const warm = await synth({ policy: 'early-start' });
  const ws = warm.serverStats as Stats;
  t.equal(clientBytes(warm), 0, 'the client sent no segment bytes');
  t.equal(warm.sends.length, 0, 'and no segment');
  t.match(ws, { segmentsReceived: 0, bytesReceived: 0, segmentsFromStore: warm.segments });
  t.equal(ws.bytesFromStore, overlay.segmentsBytes);
  t.equal(warm.firstResponse.status, 200);
  t.equal(JSON.parse(warm.firstResponse.body).diskDigest, installedDigest, "the app read the customization's bytes");
  const st = store.stats();
  t.ok(st.hits >= warm.segments && st.bytesSaved >= overlay.segmentsBytes, 'hits and bytes saved are counted');
  const text = await metrics.text();
  t.match(text, `vmsynth_store_lookups_total{result="hit"} ${warm.segments}`, 'the metrics count the hits');
  t.match(text, `vmsynth_store_lookups_total{result="miss"} ${cold.segments}`, 'and the misses');
  t.match(text, `vmsynth_store_bytes_saved_total ${overlay.segmentsBytes}`);
  t.match(text, 'vmsynth_store_hit_ratio 0.5');
  t.same(await leaks([`${DOMAIN_PREFIX}${warm.session}`], runDir()), NO_LEAKS);
});

t.test(
  'a stored segment with a flipped bit never reaches the guest: dropped, then fetched from the client',
  async (t) => {
    const victim = overlay.body.segments[0]!.sha256;
    const file = store.segmentPath(victim);
    const bytes = await fsp.readFile(file);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
    await fsp.writeFile(file, bytes);
    const dropped = store.stats().dropped;
    const r = await synth({ policy: 'baseline' });
    const s = r.serverStats as Stats;
    t.equal(s.segmentsReceived, 1, 'exactly the bad one came from the client');
    t.equal(r.sends.length, 1);
    t.equal(s.segmentsFromStore, r.segments - 1);
    t.equal(store.stats().dropped, dropped + 1, 'the bad entry was dropped');
    t.equal(JSON.parse(r.firstResponse.body).diskDigest, installedDigest, 'the guest saw the right bytes');
    t.ok(store.has(victim), 'the good copy entered the store');
    t.same((await store.verify()).dropped, [], 'and the store checks out');
  },
);

t.test('a live session leases its overlay, a pin keeps it after: gc evicts neither', async (t) => {
  let during = -1;
  const r = await synth({
    policy: 'early-start',
    whileRunning: async () => {
      t.equal(store.overlays().find((o) => o.id === id)?.leases, 1, 'the running session holds a lease');
      await store.gc(0);
      during = store.stats().segments;
      store.pin(id.slice(0, 12));
    },
  });
  t.equal(during, r.segments, 'gc to 0 bytes evicted nothing the session uses');
  t.equal(store.overlays().find((o) => o.id === id)?.leases, 0, 'the lease went with the session');
  await store.gc(0);
  t.equal(store.stats().segments, r.segments, 'pinned: still all there');
  store.pin(id.slice(0, 12), false);
  const g = await store.gc(0);
  t.equal(g.evicted, r.segments, 'unpinned: gc to 0 evicts them');
  t.equal(store.stats().bytes, 0);
});
