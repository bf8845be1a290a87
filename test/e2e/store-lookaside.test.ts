/**
 * Chunk lookaside on the real stack: app A (the example customization) is
 * synthesized and enters the store; app B installs the same software
 * elsewhere on the disk, one 4 KiB block later than a MiB boundary, and
 * writes data of its own, so its segments are laid out differently from A's
 * but hold many of the same chunks. B's synthesis asks for digest tables,
 * takes the chunks it shares with A from the store, and gets thin segments
 * from the client: the client sends fewer bytes than B's overlay, the launch
 * images equal B's custom VM byte for byte, the app reads B's bytes, and B's
 * segments, rebuilt ones included, enter the store. A
 * client that does not offer lookaside is sent the whole of every segment.
 */
import { removeTestRoot, testRoot } from '../helpers/env.js';
import t from 'tap';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { synthesize, type SynthesizeOptions, type SynthesizeResult } from '../../lib/client/client.js';
import { packageRoot, runDir, storeDir } from '../../lib/core/paths.js';
import { appDigest, hex64 } from '../../lib/guest/patterns.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { ServerMetrics } from '../../lib/server/metrics.js';
import { SynthServer } from '../../lib/server/server.js';
import type { SynthStats } from '../../lib/synth/session.js';
import { DOMAIN_PREFIX } from '../../lib/vm/libvirt.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';

t.teardown(removeTestRoot);

await guestBase('lookbase');
await generateKey();
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
// B: the same install at 52 MiB + 4 KiB (after a block of its own), and 8 MiB of its own data at 30 MiB.
const scriptB = demo
  .replace('dd of=/dev/vda bs=1M seek=40 conv=fsync', 'dd of=/dev/vda bs=4096 seek=13313 conv=fsync')
  .concat(
    '\ndd if=/dev/urandom of=/dev/vda bs=4096 seek=13312 count=1 conv=fsync 2>/dev/null',
    '\ndd if=/dev/urandom of=/dev/vda bs=1M seek=30 count=8 conv=fsync 2>/dev/null\necho b\n',
  );
if (scriptB === demo) throw new Error('the demo customization changed: B no longer installs elsewhere');
const ovA = path.join(testRoot, 'a');
const ovB = path.join(testRoot, 'b');
const customB = path.join(testRoot, 'custom-b');
await createOverlay({ base: 'lookbase', out: ovA, script: demo });
await createOverlay({ base: 'lookbase', out: ovB, script: scriptB, keepCustom: customB });
const B = await Overlay.open(ovB, { trusted: null });
const bDisk = await fsp.readFile(path.join(customB, 'disk.raw'));
const bMemory = await fsp.readFile(path.join(customB, 'memory.raw'));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const run = promisify(execFile);

const metrics = new ServerMetrics();
t.teardown(() => metrics.close());
// A small in-flight window: an early start asks for segments a few at a time, so some are asked after its first response.
const server = await SynthServer.listen({
  port: 0,
  store: { dir: storeDir(), maxBytes: 1 << 30 },
  maxInFlightBytes: 1 << 20,
});
t.teardown(() => server.close());
const store = server.store!;
const addr = server.address();
const requestB = { method: 'GET' as const, path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=52' };
const synth = (o: Partial<SynthesizeOptions>) =>
  synthesize({ server: `${addr.host}:${addr.port}`, timeoutMs: 300_000, overlay: ovB, request: requestB, ...o });
const clientBytes = (r: { sends: { bytes: number }[] }) => r.sends.reduce((n, s) => n + s.bytes, 0);

t.test('A enters the store with its chunks named', async (t) => {
  const a = await synth({ overlay: ovA, request: { method: 'GET', path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' } });
  t.equal(a.firstResponse.status, 200);
  const st = store.stats();
  t.equal(st.segments, a.segments, "A's segments are stored");
  t.ok(st.chunks > 0, `and ${st.chunks} of their chunks are named`);
});

t.test('B takes the chunks it shares with A from the store: thin segments, the exact images', async (t) => {
  let images: { memory: string; disk: string } | null = null;
  const r = await synth({
    policy: 'baseline', // lookaside from the first segment (an early start waits for its first response)
    waitComplete: true,
    whileRunning: async ({ session }) => {
      const mnt = path.join(runDir(), session, 'mnt');
      images = {
        memory: sha(await fsp.readFile(path.join(mnt, 'memory.img'))),
        disk: sha(await fsp.readFile(path.join(mnt, 'disk.img'))),
      };
    },
  });
  const s = r.serverStats as unknown as SynthStats;
  const look = s.lookaside;
  t.ok(look.tables > 0 && look.thinSegments > 0, `tables asked (${look.tables}), thin segments (${look.thinSegments})`);
  t.ok(look.chunks > 0, `${look.chunks} chunks (${look.bytesSaved} payload bytes) came from the store`);
  t.equal(r.lookaside.tables, look.tables, 'the client sent the tables the server counted');
  t.ok(r.lookaside.payloadBytesOmitted >= look.bytesSaved, 'the client left out at least those payloads');
  const sent = clientBytes(r);
  t.ok(
    sent + s.bytesFromStore < B.segmentsBytes,
    `the client sent ${sent} bytes (tables included: ${r.lookaside.tableBytes}), whole segments from the store ${s.bytesFromStore}, of B's ${B.segmentsBytes}`,
  );
  t.same(images, { memory: sha(bMemory), disk: sha(bDisk) }, "the launch images are B's custom VM, byte for byte");
  t.equal(r.firstResponse.status, 200);
  t.equal(
    JSON.parse(r.firstResponse.body).diskDigest,
    hex64(appDigest(bDisk.subarray(52 << 20, 56 << 20))),
    "the app read B's bytes",
  );
  const st = store.stats();
  t.ok(
    B.body.segments.every((seg) => store.has(seg.sha256)),
    'every segment of B entered the store, the rebuilt ones compressed again to their signed bytes',
  );
  t.equal(st.chunkHits, look.chunks, 'the store counts the chunk hits');
  t.equal(st.chunkBytesSaved, look.bytesSaved);
  t.match(await metrics.text(), `vmsynth_store_chunk_hits_total ${look.chunks}`, 'and so do the metrics');
  t.same(await leaks([`${DOMAIN_PREFIX}${r.session}`], runDir()), NO_LEAKS);
});

t.test('an early start looks aside only after its first response, and answers with the right bytes', async (t) => {
  await store.gc(0);
  await synth({ overlay: ovA, request: { method: 'GET', path: '/run' } });
  // The first request reads B's own data at 30 MiB: the shared install, last in the overlay's order, streams after it.
  const r = await synth({
    policy: 'early-start',
    holdBackgroundAfterBytes: 1,
    request: { method: 'GET', path: '/run?mem_mb=1&disk_mb=2&disk_off_mb=30' },
  });
  const s = r.serverStats as unknown as SynthStats;
  const first = r.timeline.firstResponse!;
  const before = r.sends.filter((x) => x.ms < first).length;
  t.ok(before > 0 && before < r.segments, `${before} of ${r.segments} segments went before the first response`);
  t.ok(
    s.lookaside.thinSegments > 0,
    `${s.lookaside.thinSegments} went thin after it (${s.lookaside.chunks} chunks from the store)`,
  );
  t.ok(
    s.lookaside.tables <= r.segments - before,
    `no table for the ${before} segments asked before it (${s.lookaside.tables} tables)`,
  );
  t.equal(
    JSON.parse(r.firstResponse.body).diskDigest,
    hex64(appDigest(bDisk.subarray(30 << 20, 32 << 20))),
    "the app read B's bytes",
  );
});

t.test('a client that does not offer lookaside sends whole segments', async (t) => {
  await store.gc(0); // B went into the store, A's chunks too: start from A alone
  const again = await synth({ overlay: ovA, request: { method: 'GET', path: '/run' } });
  t.ok(store.stats().chunks > 0, 'A is stored again');
  // Through the command, as a user opts out: `vmsynth synth --no-lookaside --json`.
  const { stdout } = await run(
    process.execPath,
    [
      path.join(packageRoot(), 'dist', 'lib', 'cli', 'entry.cjs'),
      'synth',
      '--server',
      `${addr.host}:${addr.port}`,
      '--overlay',
      ovB,
      '--policy',
      'baseline',
      '--no-lookaside',
      '--json',
    ],
    { env: { ...process.env, LOG_LEVEL: 'warn' }, maxBuffer: 64 << 20 },
  );
  const r = JSON.parse(stdout.trim().split('\n').at(-1)!) as SynthesizeResult;
  const s = r.serverStats as unknown as SynthStats;
  t.same(s.lookaside, { tables: 0, tableBytes: 0, thinSegments: 0, chunks: 0, bytesSaved: 0 });
  t.equal(r.lookaside.tables, 0);
  t.equal(clientBytes(r) + s.bytesFromStore, B.segmentsBytes, 'every segment whole, from the client or the store');
  t.equal(again.firstResponse.status, 200);
});
