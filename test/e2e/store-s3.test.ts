/**
 * Overlays from an object store, on the real stack: an overlay pushed to a
 * real S3-API server (s3rver on loopback) is named by URL; the server
 * fetches every segment with ranged GETs over its own link and the client
 * sends none. Then the failure modes, each ending in a correct reply with
 * the client's connection serving what the object store did not, and each
 * said in the metrics: the object missing (404), an access key the store
 * does not know (403), a URL outside the configured sources, an object
 * store that never answers (the session does not hang), a slow one (guest
 * reads hedged to the client), and bytes in the store that fail their
 * check (never used). Then `base push` and
 * `base pull` through the CLI.
 */
import { removeTestRoot, testRoot } from '../helpers/env.js';
import t, { type Test } from 'tap';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { synthesize, type SynthesizeOptions, type SynthesizeResult } from '../../lib/client/client.js';
import { packageRoot, runDir } from '../../lib/core/paths.js';
import { appDigest, hex64 } from '../../lib/guest/patterns.js';
import { createOverlay } from '../../lib/offline/create.js';
import { pushOverlay } from '../../lib/offline/transfer.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { ServerMetrics } from '../../lib/server/metrics.js';
import { SynthServer } from '../../lib/server/server.js';
import { ObjectStore } from '../../lib/store/object-store.js';
import { loadBase } from '../../lib/vm/base.js';
import { DOMAIN_PREFIX } from '../../lib/vm/libvirt.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';
import { S3_CREDENTIALS, startS3 } from '../helpers/s3.js';

const run = promisify(execFile);
t.teardown(removeTestRoot);

await guestBase('s3base');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const custom = path.join(testRoot, 'custom');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 's3base', out: ov, script: demo, keepCustom: custom });
const installedDigest = hex64(
  appDigest((await fsp.readFile(path.join(custom, 'disk.raw'))).subarray(40 << 20, 44 << 20)),
);

const s3 = await startS3();
t.teardown(() => s3.close());
const objects = new ObjectStore({ endpoint: s3.endpoint, credentials: S3_CREDENTIALS });
t.teardown(() => objects.close());
const good = `s3://${s3.bucket}/apps/demo`;
await pushOverlay(ov, good, { objects });
// The same overlay with one segment's bytes flipped in the object store.
const bad = `s3://${s3.bucket}/apps/tampered`;
const tampered = path.join(testRoot, 'tampered');
await fsp.mkdir(tampered);
await fsp.copyFile(path.join(ov, 'overlay.manifest'), path.join(tampered, 'overlay.manifest'));
const segs = await fsp.readFile(path.join(ov, 'overlay.segments'));
segs[100]! ^= 0x01; // in segment 0
await fsp.writeFile(path.join(tampered, 'overlay.segments'), segs);
// This one through the command line, as an operator pushes.
const cli = path.join(packageRoot(), 'dist/lib/cli/entry.cjs');
const s3env = {
  ...process.env,
  VMSYNTH_S3_ENDPOINT: s3.endpoint,
  AWS_ACCESS_KEY_ID: 'S3RVER',
  AWS_SECRET_ACCESS_KEY: 'S3RVER',
};
const pushedBad = JSON.parse(
  (await run(process.execPath, [cli, 'overlay', 'push', tampered, bad, '--json'], { env: s3env })).stdout,
);

const metrics = new ServerMetrics();
t.teardown(() => metrics.close());
const sources = [`s3://${s3.bucket}/apps`];
const server = await SynthServer.listen({
  port: 0,
  objects: { endpoint: s3.endpoint, credentials: S3_CREDENTIALS, timeoutMs: 3000, sources },
});
t.teardown(() => server.close());
const request = { method: 'GET' as const, path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' };
const synth = (on: SynthServer, o: Partial<SynthesizeOptions>) => {
  const a = on.address();
  return synthesize({ server: `${a.host}:${a.port}`, overlay: ov, request, timeoutMs: 120_000, ...o });
};
type Stats = { segmentsReceived: number; segmentsFromObjects: number };
const stats = (r: SynthesizeResult) => r.serverStats as Stats;
const fallbacks = async (reason: string) =>
  Number(
    new RegExp(`vmsynth_object_store_fallbacks_total\\{reason="${reason}"\\} (\\d+)`).exec(await metrics.text())?.[1] ??
      0,
  );

async function answersRight(t: Test, r: SynthesizeResult): Promise<void> {
  t.equal(r.firstResponse.status, 200);
  t.equal(JSON.parse(r.firstResponse.body).diskDigest, installedDigest, "the app read the customization's bytes");
  t.same(await leaks([`${DOMAIN_PREFIX}${r.session}`], runDir()), NO_LEAKS, 'nothing left behind');
}

t.test('overlay push says what it pushed', async (t) => {
  t.same(pushedBad, { url: bad, bytes: segs.length + (await fsp.stat(path.join(ov, 'overlay.manifest'))).size });
  t.equal(await objects.size({ bucket: s3.bucket, prefix: 'apps/tampered' }, 'overlay.segments'), segs.length);
});

t.test('named by URL: every segment comes from the object store, none from the client', async (t) => {
  for (const policy of ['early-start', 'baseline'] as const) {
    const r = await synth(server, { policy, overlayUrl: good });
    t.equal(stats(r).segmentsFromObjects, r.segments, `${policy}: all ${r.segments} segments from the object store`);
    t.equal(stats(r).segmentsReceived, 0, `${policy}: none from the client`);
    t.equal(r.sends.length, 0);
    await answersRight(t, r);
  }
  t.match(await metrics.text(), /vmsynth_object_store_bytes_total [1-9]/);
});

t.test('the object store fails: the client serves the session, and the metrics say why', async (t) => {
  const cases: [string, string, SynthServer][] = [
    ['not-found', `s3://${s3.bucket}/apps/nothing-here`, server],
    ['not-allowed', `s3://${s3.bucket}/elsewhere/demo`, server],
    ['corrupt', bad, server],
  ];
  const denied = await SynthServer.listen({
    port: 0,
    objects: {
      endpoint: s3.endpoint,
      credentials: { accessKeyId: 'NOBODY', secretAccessKey: 'x' },
      timeoutMs: 3000,
      sources,
    },
  });
  t.teardown(() => denied.close());
  cases.push(['denied', good, denied]);
  for (const [reason, url, on] of cases) {
    const before = await fallbacks(reason);
    const r = await synth(on, { policy: 'early-start', overlayUrl: url });
    t.equal(await fallbacks(reason), before + 1, `${reason}: counted`);
    t.equal(
      stats(r).segmentsReceived,
      r.segments - stats(r).segmentsFromObjects,
      `${reason}: the client sent the rest`,
    );
    if (reason === 'corrupt') t.ok(stats(r).segmentsReceived >= 1, 'the bad segment came from the client');
    else t.equal(stats(r).segmentsFromObjects, 0, `${reason}: nothing from the object store`);
    await answersRight(t, r);
  }
});

t.test('an object store that never answers: the session falls back within its deadline', async (t) => {
  const held: net.Socket[] = [];
  const hole = net.createServer((s) => held.push(s));
  await new Promise<void>((r) => hole.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const s of held) s.destroy();
    hole.close();
  });
  const slow = await SynthServer.listen({
    port: 0,
    objects: {
      endpoint: `http://127.0.0.1:${(hole.address() as net.AddressInfo).port}`,
      credentials: S3_CREDENTIALS,
      timeoutMs: 1500,
      sources,
    },
  });
  t.teardown(() => slow.close());
  const before = await fallbacks('timeout');
  const t0 = performance.now();
  const r = await synth(slow, { policy: 'early-start', overlayUrl: good });
  t.equal(await fallbacks('timeout'), before + 1);
  t.equal(stats(r).segmentsReceived, r.segments, 'every segment from the client');
  t.ok(r.timeline.firstResponse! < 60_000, `first response in ${r.timeline.firstResponse} ms`);
  t.ok(performance.now() - t0 < 90_000, 'the session did not hang');
  await answersRight(t, r);
});

t.test('a slow object store: guest reads are hedged to the client, and each segment is applied once', async (t) => {
  // A proxy in front of s3rver that holds every byte it returns for DELAY_MS: slow, never failing.
  const DELAY_MS = 1500;
  const pairs: net.Socket[] = [];
  const lag = net.createServer((down) => {
    const up = net.connect(Number(new URL(s3.endpoint).port), '127.0.0.1');
    pairs.push(down, up);
    down.on('data', (b) => up.write(b));
    up.on('data', (b) => setTimeout(() => down.writable && down.write(b), DELAY_MS));
    for (const [a, b] of [
      [down, up],
      [up, down],
    ] as const) {
      a.on('error', () => b.destroy());
      a.on('close', () => setTimeout(() => b.destroy(), DELAY_MS + 100));
    }
  });
  await new Promise<void>((r) => lag.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const s of pairs) s.destroy();
    lag.close();
  });
  const lagged = await SynthServer.listen({
    port: 0,
    objects: {
      endpoint: `http://127.0.0.1:${(lag.address() as net.AddressInfo).port}`,
      credentials: S3_CREDENTIALS,
      timeoutMs: 20_000,
      sources,
    },
  });
  t.teardown(() => lagged.close());
  const hedgesBefore = Number(/vmsynth_object_store_hedges_total (\d+)/.exec(await metrics.text())?.[1] ?? 0);
  const before = await fallbacks('timeout');
  const r = await synth(lagged, { policy: 'early-start', overlayUrl: good });
  const st = r.serverStats as Stats & { hedges: { hedged: number; dropped: number } };
  t.comment(
    `objects ${DELAY_MS} ms late: first response ${r.timeline.firstResponse} ms, hedges ${JSON.stringify(st.hedges)}, ${JSON.stringify(r.timeline)}`,
  );
  t.ok(st.hedges.hedged >= 1, `${st.hedges.hedged} guest read(s) hedged to the client`);
  t.equal(
    Number(/vmsynth_object_store_hedges_total (\d+)/.exec(await metrics.text())?.[1]),
    hedgesBefore + st.hedges.hedged,
    'counted in the metrics',
  );
  t.ok(st.segmentsReceived >= 1, `${st.segmentsReceived} segment(s) from the client`);
  t.ok(st.segmentsFromObjects >= 1, `${st.segmentsFromObjects} from the object store: it was slow, not dropped`);
  t.equal(st.segmentsReceived + st.segmentsFromObjects, r.segments, 'each segment applied once');
  t.equal(await fallbacks('timeout'), before, 'no fallback');
  await answersRight(t, r);
});

t.test('base push, then base pull under another name: hashed, and usable', async (t) => {
  const env = s3env;
  const url = `s3://${s3.bucket}/bases/s3base`;
  const pushed = JSON.parse(
    (await run(process.execPath, [cli, 'base', 'push', 's3base', url, '--json'], { env })).stdout,
  );
  t.match(pushed, { url, bytes: Number });
  const pulled = JSON.parse(
    (await run(process.execPath, [cli, 'base', 'pull', url, '--name', 'copied', '--json'], { env })).stdout,
  );
  t.match(pulled, { name: 'copied', bytes: pushed.bytes });
  const copy = await loadBase('copied');
  const orig = await loadBase('s3base');
  t.equal(copy.manifest.disk.sha256, orig.manifest.disk.sha256);
  t.equal(copy.manifest.memory.sha256, orig.manifest.memory.sha256);
  const again = await run(process.execPath, [cli, 'base', 'pull', url, '--name', 'copied', '--json'], { env }).catch(
    (e: { code: number; stdout: string }) => e,
  );
  t.match(JSON.parse((again as { stdout: string }).stdout), { error: { code: 'VMS_BASE_EXISTS' } });
  const missing = await run(process.execPath, [cli, 'base', 'pull', `s3://${s3.bucket}/bases/none`, '--json'], {
    env,
  }).catch((e: { code: number; stdout: string }) => e);
  t.match(JSON.parse((missing as { stdout: string }).stdout), {
    error: { code: 'VMS_OBJECT_STORE', details: { reason: 'not-found' } },
  });
});
