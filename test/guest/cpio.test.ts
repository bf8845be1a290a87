import t from 'tap';
import { cpioNewc } from '../../lib/guest/cpio.js';

/** A minimal newc reader, independent of the writer. */
function parse(buf: Buffer) {
  const out: { name: string; mode: number; data: Buffer; rdev: [number, number] }[] = [];
  let off = 0;
  for (;;) {
    t.equal(buf.toString('ascii', off, off + 6), '070701');
    const f = (i: number) => parseInt(buf.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = f(1), size = f(6), namesize = f(11);
    const name = buf.toString('utf8', off + 110, off + 110 + namesize - 1);
    let p = off + 110 + namesize;
    p += (4 - (p % 4)) % 4;
    const data = buf.subarray(p, p + size);
    p += size;
    p += (4 - (p % 4)) % 4;
    if (name === 'TRAILER!!!') return { entries: out, end: p };
    out.push({ name, mode, data, rdev: [f(9), f(10)] });
    off = p;
  }
}

t.test('newc archives read back entry by entry, deterministically', async (t) => {
  const entries = [
    { kind: 'dir' as const, path: '/bin' },
    { kind: 'file' as const, path: 'init', data: Buffer.from('#!/bin/sh\n'), mode: 0o755 },
    { kind: 'symlink' as const, path: 'bin/sh', target: 'busybox' },
    { kind: 'char' as const, path: 'dev/console', major: 5, minor: 1 },
  ];
  const a = cpioNewc(entries);
  t.ok(a.equals(cpioNewc(entries)), 'same input, same bytes');
  t.equal(a.length % 512, 0);
  const { entries: got } = parse(a);
  t.same(got.map((e) => e.name), ['bin', 'init', 'bin/sh', 'dev/console']);
  t.equal(got[0]!.mode, 0o040755);
  t.equal(got[1]!.mode, 0o100755);
  t.equal(got[1]!.data.toString(), '#!/bin/sh\n');
  t.equal(got[2]!.data.toString(), 'busybox');
  t.same(got[3]!.rdev, [5, 1]);
});
