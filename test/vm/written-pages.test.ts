import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { mappingsOf, PAGE_SIZE, readPages, scanWritten, writtenInPagemap } from '../../lib/vm/written-pages.js';

t.test('mappingsOf finds a file among /proc/PID/maps lines, paths with spaces too', async (t) => {
  const maps = [
    '55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 123  /usr/bin/qemu',
    '7f0000000000-7f0010000000 rw-p 00000000 00:2a 99   /run/vmsynth/s 1/mnt/memory.img',
    '7f0010000000-7f0010001000 rw-p 00000000 00:00 0 ',
    '7f0020000000-7f0020002000 r--p 00004000 00:2a 99   /run/vmsynth/s 1/mnt/memory.img',
  ].join('\n');
  t.same(mappingsOf(maps, '/run/vmsynth/s 1/mnt/memory.img'), [
    { start: 0x7f0000000000, end: 0x7f0010000000, perms: 'rw-p', offset: 0 },
    { start: 0x7f0020000000, end: 0x7f0020002000, perms: 'r--p', offset: 0x4000 },
  ]);
  t.same(mappingsOf(maps, '/usr/bin/qemu-other'), []);
});

t.test('writtenInPagemap: present or swapped, and not a file page', async (t) => {
  const e = (bits: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(bits);
    return b;
  };
  const entries = Buffer.concat([
    e(0n), // not present
    e((1n << 63n) | (1n << 61n) | 123n), // a page of the file
    e((1n << 63n) | 456n), // present, anonymous: written
    e(1n << 62n), // swapped: anonymous, written
    e((1n << 62n) | (1n << 61n)), // swapped file page (shmem): not ours
  ]);
  t.same(writtenInPagemap(entries), [2, 3]);
});

t.test('a real process: the pages it wrote to a private mapping, and their bytes', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-written-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'memory image');
  const pages = 64;
  await fsp.writeFile(file, Buffer.alloc(pages * PAGE_SIZE, 0xaa));
  // Map the file MAP_PRIVATE (ACCESS_COPY), read every page, write three of them.
  const py = [
    'import mmap, sys',
    `f = open(${JSON.stringify(file)}, 'r+b')`,
    'm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)',
    `s = sum(m[i * ${PAGE_SIZE}] for i in range(${pages}))`,
    `for p in (3, 4, 40): m[p * ${PAGE_SIZE}:p * ${PAGE_SIZE} + 4] = bytes([p, 1, 2, 3])`,
    'print("ready", flush=True)',
    'sys.stdin.read()',
  ].join('\n');
  const child = spawn('python3', ['-c', py], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => {
    child.kill();
  });
  const [line] = (await once(child.stdout, 'data')) as [Buffer];
  t.equal(line.toString().trim(), 'ready');

  const scan = await scanWritten(child.pid!, file);
  t.same(scan.pages, [3, 4, 40], 'exactly the pages written');
  const read = [];
  for await (const { page, data } of readPages(child.pid!, scan.mapping, scan.pages))
    read.push({ page, head: [...data.subarray(0, 5)] });
  t.same(
    read,
    [
      { page: 3, head: [3, 1, 2, 3, 0xaa] },
      { page: 4, head: [4, 1, 2, 3, 0xaa] },
      { page: 40, head: [40, 1, 2, 3, 0xaa] },
    ],
    "the process's bytes, not the file's",
  );
  t.equal((await fsp.readFile(file))[3 * PAGE_SIZE], 0xaa, 'the file is untouched');
  await t.rejects(
    scanWritten(child.pid!, path.join(dir, 'other')),
    { code: 'VMS_VM_MEMORY' },
    'a file it does not map',
  );
});
