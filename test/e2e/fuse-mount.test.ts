/** The FUSE adapter on a real kernel mount: images read back byte-exact, writes refused, unmount clean. */
import { removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ChunkMap, ChunkSource, CHUNK_SIZE } from '../../lib/fs/chunk-map.js';
import { ImageMount } from '../../lib/fs/fuse-images.js';
import { fileReader, ImageFile, zeroReader } from '../../lib/fs/image.js';
import { listFuseMounts } from '../../lib/fs/mounts.js';
import { cleanStale } from '../../lib/vm/janitor.js';

const run = promisify(execFile);
t.teardown(removeTestRoot);

t.test('a mounted image reads back as base bytes with zero chunks, through the kernel', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-fuse-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const size = 64 * CHUNK_SIZE;
  const data = randomBytes(size);
  await fsp.writeFile(path.join(dir, 'base.raw'), data);
  const handle = await fsp.open(path.join(dir, 'base.raw'), 'r');
  t.teardown(() => handle.close());
  const map = new ChunkMap(size);
  map.set(3, ChunkSource.ZERO);
  const img = new ImageFile('disk.img', map, {
    [ChunkSource.BASE]: fileReader(handle, 'base'),
    [ChunkSource.ZERO]: zeroReader,
  });
  const mount = await ImageMount.mount(path.join(dir, 'mnt'), [img]);
  t.teardown(() => mount.unmount());

  t.same(await fsp.readdir(mount.mountpoint), ['disk.img']);
  // Read from a child process (a process must never read its own FUSE mount synchronously).
  const { stdout } = await run('sha256sum', [mount.path('disk.img')]);
  const want = Buffer.from(data);
  want.fill(0, 3 * CHUNK_SIZE, 4 * CHUNK_SIZE);
  const { createHash } = await import('node:crypto');
  t.equal(stdout.split(' ')[0], createHash('sha256').update(want).digest('hex'), 'byte-exact through FUSE');
  t.ok(img.stats.bytesRead >= size, `FUSE served ${img.stats.bytesRead} bytes`);
  await t.rejects(
    run('dd', ['if=/dev/zero', `of=${mount.path('disk.img')}`, 'bs=4096', 'count=1', 'conv=notrunc']),
    'writes are refused',
  );

  t.same(await mount.unmount(), { forced: false });
  t.notOk(
    (await listFuseMounts()).some((m) => m.mountpoint === mount.mountpoint),
    'unmounted',
  );
  await t.rejects(fsp.stat(mount.mountpoint), 'mount point removed');
});

t.test('no FUSE device is VMS_NO_FUSE', async (t) => {
  await t.rejects(ImageMount.mount('/tmp/never', [], { fuseDevice: '/nonexistent/fuse' }), { code: 'VMS_NO_FUSE' });
});

t.test("the janitor leaves a mount that is not a vmsynth session's alone", async (t) => {
  // A mount with no owner file outside the run directory: a test's rig, or another tool's. Any
  // server start ran the janitor, which force-unmounted it under a running test (CI, stop 22).
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-fuse-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const img = new ImageFile('disk.img', new ChunkMap(4 * CHUNK_SIZE), { [ChunkSource.ZERO]: zeroReader });
  for (let i = 0; i < 4; i++) img.map.set(i, ChunkSource.ZERO);
  const mount = await ImageMount.mount(path.join(dir, 'mnt'), [img]);
  t.teardown(() => mount.unmount());
  const mounted = async () => (await listFuseMounts()).some((m) => m.mountpoint === mount.mountpoint);
  // (Not with allInstances here: that would be free to take other test processes' rigs too.)
  const report = await cleanStale(null);
  t.notOk(report.mounts.includes(mount.mountpoint), 'not reported');
  t.ok(await mounted(), 'still mounted after the janitor');
});
