/**
 * The object store client against a real S3-API server (s3rver on loopback):
 * put and get, ranged GETs, sizes, files both ways; and how it fails: a
 * missing object (not-found), an unknown access key (denied), a closed port
 * (unreachable), and a server that accepts and never answers (timeout,
 * within the deadline: nothing hangs).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, promises as fsp, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ObjectStore, parseS3Url, s3Url } from '../../lib/store/object-store.js';
import { S3_CREDENTIALS, startS3 } from '../helpers/s3.js';

const s3 = await startS3();
t.teardown(() => s3.close());
const dir = mkdtempSync(path.join(os.tmpdir(), 'vmsynth-objects-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const store = new ObjectStore({ endpoint: s3.endpoint, credentials: S3_CREDENTIALS, timeoutMs: 2000 });
t.teardown(() => store.close());
const loc = { bucket: s3.bucket, prefix: 'apps/face' };

t.test('s3:// URLs', async (t) => {
  t.same(parseS3Url('s3://my-bucket'), { bucket: 'my-bucket', prefix: '' });
  t.same(parseS3Url('s3://my-bucket/a/b/'), { bucket: 'my-bucket', prefix: 'a/b' });
  t.equal(s3Url({ bucket: 'b-1', prefix: 'x/y' }), 's3://b-1/x/y');
  for (const bad of ['http://x/y', 's3://', 's3://A_B/x', 'my-bucket/x'])
    t.throws(() => parseS3Url(bad), { code: 'VMS_USAGE' }, bad);
});

t.test('a file up and down, whole and by range', async (t) => {
  const data = randomBytes(3 << 20);
  const file = path.join(dir, 'up.bin');
  await fsp.writeFile(file, data);
  const seen: number[] = [];
  await store.putFile(loc, 'overlay.segments', file, (sent) => seen.push(sent));
  t.ok(seen.length > 0 && seen.at(-1) === data.length, 'progress reached the whole size');
  t.equal(await store.size(loc, 'overlay.segments'), data.length);
  t.equal(await store.size(loc, 'nothing-here'), null);
  t.same(
    await store.get(loc, 'overlay.segments', { offset: 1_000_000, bytes: 4096 }),
    data.subarray(1_000_000, 1_004_096),
  );
  t.same(await store.get(loc, 'overlay.segments'), data);
  const down = path.join(dir, 'down.bin');
  await store.getFile(loc, 'overlay.segments', down);
  t.same(await fsp.readFile(down), data);
});

t.test('failures are typed by reason', async (t) => {
  await t.rejects(store.get(loc, 'missing'), {
    code: 'VMS_OBJECT_STORE',
    details: { reason: 'not-found', status: 404 },
  });
  const wrong = new ObjectStore({
    endpoint: s3.endpoint,
    credentials: { accessKeyId: 'NOBODY', secretAccessKey: 'wrong' },
    timeoutMs: 2000,
  });
  await t.rejects(wrong.get(loc, 'overlay.segments'), { code: 'VMS_OBJECT_STORE', details: { reason: 'denied' } });
  wrong.close();

  const closed = net.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as net.AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  const gone = new ObjectStore({ endpoint: `http://127.0.0.1:${port}`, credentials: S3_CREDENTIALS, timeoutMs: 2000 });
  await t.rejects(gone.get(loc, 'x'), { code: 'VMS_OBJECT_STORE', details: { reason: 'unreachable' } });
  gone.close();

  const sockets: net.Socket[] = [];
  const hole = net.createServer((s) => sockets.push(s)); // accepts, never answers
  await new Promise<void>((r) => hole.listen(0, '127.0.0.1', r));
  const slow = new ObjectStore({
    endpoint: `http://127.0.0.1:${(hole.address() as net.AddressInfo).port}`,
    credentials: S3_CREDENTIALS,
    timeoutMs: 800,
  });
  const t0 = performance.now();
  await t.rejects(slow.get(loc, 'x'), { code: 'VMS_OBJECT_STORE', details: { reason: 'timeout' } });
  const ms = performance.now() - t0;
  t.ok(ms < 3000, `gave up in ${Math.round(ms)} ms (deadline 800 ms)`);
  slow.close();
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => hole.close(() => r()));
});
