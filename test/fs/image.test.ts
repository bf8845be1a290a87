import t, { type Test } from 'tap';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import Fuse, { type Stat } from 'fuse-native';
import { ChunkMap, ChunkSource, CHUNK_SIZE } from '../../lib/fs/chunk-map.js';
import { fileReader, ImageFile, zeroReader } from '../../lib/fs/image.js';
import { fuseHandlers } from '../../lib/fs/fuse-images.js';
import { TouchLog } from '../../lib/fs/touch-log.js';

async function fixture(t: Test, bytes: number) {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-image-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const data = randomBytes(bytes);
  const file = path.join(dir, 'base.raw');
  await fsp.writeFile(file, data);
  const handle = await fsp.open(file, 'r');
  t.teardown(() => handle.close());
  return { data, file, handle };
}

t.test('reads mix base bytes and zero chunks, and count what was touched', async (t) => {
  const size = 6 * CHUNK_SIZE;
  const { data, handle, file } = await fixture(t, size);
  const map = new ChunkMap(size);
  map.set(1, ChunkSource.ZERO);
  const img = new ImageFile('memory.img', map, {
    [ChunkSource.BASE]: fileReader(handle, file),
    [ChunkSource.ZERO]: zeroReader,
  });
  const buf = Buffer.alloc(3 * CHUNK_SIZE);
  t.equal(await img.read(buf, buf.length, 512), buf.length);
  const want = Buffer.from(data.subarray(512, 512 + buf.length));
  want.fill(0, CHUNK_SIZE - 512, 2 * CHUNK_SIZE - 512);
  t.ok(buf.equals(want), 'bytes match base with chunk 1 zeroed');
  t.same(img.stats, { reads: 1, bytesRead: 3 * CHUNK_SIZE, chunksTouched: 4 });
  await img.read(buf, CHUNK_SIZE, 0);
  t.equal(img.stats.chunksTouched, 4, 'a chunk read twice counts once');
  t.equal(await img.read(buf, 100, size), 0, 'EOF reads 0');
  t.equal(await img.read(buf, 100, size - 10), 10, 'a read across EOF is short');
});

t.test('a touch log keeps the first touch of each chunk across images, in request order', async (t) => {
  const size = 8 * CHUNK_SIZE;
  const { handle, file } = await fixture(t, size);
  const log = new TouchLog();
  const mem = new ImageFile(
    'memory.img',
    new ChunkMap(size),
    { [ChunkSource.BASE]: fileReader(handle, file) },
    { log, image: 0 },
  );
  const disk = new ImageFile(
    'disk.img',
    new ChunkMap(size),
    { [ChunkSource.BASE]: fileReader(handle, file) },
    { log, image: 1 },
  );
  const buf = Buffer.alloc(size);
  await mem.read(buf, 2 * CHUNK_SIZE, 5 * CHUNK_SIZE + 10); // chunks 5, 6, 7
  await disk.read(buf, 1, 3 * CHUNK_SIZE); // chunk 3
  await mem.read(buf, 4 * CHUNK_SIZE, 4 * CHUNK_SIZE); // 4 is new; 5..7 are not
  await mem.read(buf, 100, size); // EOF touches nothing
  t.same(log.slice(), [
    { image: 0, index: 5 },
    { image: 0, index: 6 },
    { image: 0, index: 7 },
    { image: 1, index: 3 },
    { image: 0, index: 4 },
  ]);
  t.same(log.slice(3, 4), [{ image: 1, index: 3 }], 'slices by position');
  for (let i = 0; i < 5000; i++) log.record(1, i);
  t.equal(log.length, 5005, 'grows past its first allocation');
  t.same(log.slice(5004), [{ image: 1, index: 4999 }]);
  // A read that blocks counts when it arrives, not when it completes.
  let release!: () => void;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  const log2 = new TouchLog();
  const slow = new ImageFile(
    'm',
    new ChunkMap(size),
    { [ChunkSource.BASE]: async () => gate },
    { log: log2, image: 0 },
  );
  const fast = new ImageFile(
    'd',
    new ChunkMap(size),
    { [ChunkSource.BASE]: async () => undefined },
    { log: log2, image: 1 },
  );
  const pending = slow.read(buf, CHUNK_SIZE, 0);
  await fast.read(buf, CHUNK_SIZE, 0);
  release();
  await pending;
  t.same(log2.slice(), [
    { image: 0, index: 0 },
    { image: 1, index: 0 },
  ]);
});

t.test('a base file shorter than the manifest says is VMS_BASE_CORRUPT', async (t) => {
  const { handle, file } = await fixture(t, CHUNK_SIZE);
  const img = new ImageFile('disk.img', new ChunkMap(2 * CHUNK_SIZE), { [ChunkSource.BASE]: fileReader(handle, file) });
  await t.rejects(img.read(Buffer.alloc(2 * CHUNK_SIZE), 2 * CHUNK_SIZE, 0), { code: 'VMS_BASE_CORRUPT' });
});

t.test('a chunk source without a reader is an internal error, not garbage', async (t) => {
  const map = new ChunkMap(CHUNK_SIZE, CHUNK_SIZE, ChunkSource.MISSING);
  const img = new ImageFile('x', map, {});
  await t.rejects(img.read(Buffer.alloc(10), 10, 0), { code: 'VMS_INTERNAL' });
});

t.test('FUSE handlers without FUSE: directory, attributes, reads, refused writes', async (t) => {
  const size = 2 * CHUNK_SIZE;
  const { data, handle, file } = await fixture(t, size);
  const img = new ImageFile('disk.img', new ChunkMap(size), { [ChunkSource.BASE]: fileReader(handle, file) });
  let fd = 7;
  const h = fuseHandlers(new Map([['/disk.img', img]]), new Date(0), () => fd++);
  const call = <T extends unknown[]>(fn: (cb: (...a: T) => void) => void) =>
    new Promise<T>((resolve) => fn((...a: T) => resolve(a)));

  t.same(await call<[number, string[]?]>((cb) => h.readdir!('/', cb)), [0, ['disk.img']]);
  const [err, st] = await call<[number, Stat?]>((cb) => h.getattr!('/disk.img', cb));
  t.equal(err, 0);
  t.equal(st?.size, size);
  t.equal(st?.mode, 0o100444, 'read-only regular file');
  t.same(await call<[number]>((cb) => h.getattr!('/nope', cb)), [Fuse.ENOENT]);
  t.same(await call<[number, number?]>((cb) => h.open!('/disk.img', 2, cb)), [0, 7]);
  const buf = Buffer.alloc(1000);
  t.same(await call<[number]>((cb) => h.read!('/disk.img', 7, buf, 1000, 4000, cb)), [1000]);
  t.ok(buf.equals(data.subarray(4000, 5000)));
  t.same(await call<[number]>((cb) => h.write!('/disk.img', 7, buf, 10, 0, cb)), [Fuse.EROFS], 'writes are refused');
  t.same(await call<[number]>((cb) => h.readdir!('/disk.img', cb)), [Fuse.ENOTDIR]);
});

t.test('a failing read is answered with EIO, never left hanging', async (t) => {
  const img = new ImageFile('m', new ChunkMap(CHUNK_SIZE), {
    [ChunkSource.BASE]: async () => {
      throw new Error('disk on fire');
    },
  });
  const h = fuseHandlers(new Map([['/m', img]]), new Date(0), () => 1);
  const res = await new Promise<number>((resolve) => h.read!('/m', 1, Buffer.alloc(10), 10, 0, resolve));
  t.equal(res, Fuse.EIO);
});
