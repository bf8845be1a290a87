/**
 * The segment store on real files: put and read, the cap and LRU eviction
 * (files go with their rows), pins and leases, a bit-flipped entry found and
 * dropped, gc of files the index does not know, and crash safety: a process
 * SIGKILLed at each step of an insert, and at random points of many, leaves
 * a store that reopens consistent.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, promises as fsp, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { sha256 } from '../../lib/overlay/chunk-io.js';
import { SegmentStore } from '../../lib/store/segment-store.js';

const CHILD = fileURLToPath(new URL('../helpers/store-child.ts', import.meta.url));

function tempDir(t: Test): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmsynth-store-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function segment(bytes = 1000): { sha: Buffer; data: Buffer } {
  const data = randomBytes(bytes);
  return { sha: sha256(data), data };
}

/** Every file under segments/ and tmp/, as "segments/<hex>" or "tmp/<name>". */
function files(dir: string): string[] {
  const out: string[] = [];
  for (const sub of readdirSync(path.join(dir, 'segments')))
    for (const f of readdirSync(path.join(dir, 'segments', sub))) out.push(`segments/${f}`);
  for (const f of readdirSync(path.join(dir, 'tmp'))) out.push(`tmp/${f}`);
  return out.sort();
}

/** The store is consistent: no pending rows, and its files are exactly its ready rows, each matching its hash. */
async function consistent(t: Test, s: SegmentStore): Promise<void> {
  t.same(s.index.pending(), [], 'no pending rows');
  const rows = s.index.allReady().map((r) => `segments/${r.sha.toString('hex')}`);
  t.same(files(s.dir), rows.sort(), 'files are exactly the stored rows');
  const v = await s.verify();
  t.same(v.dropped, [], 'every stored file matches its hash');
}

t.test('put, read, has; a second put of the same segment stores nothing', async (t) => {
  const s = await SegmentStore.open({ dir: tempDir(t), maxBytes: 1 << 20 });
  t.teardown(() => s.close());
  const a = segment();
  t.notOk(s.has(a.sha));
  t.equal(await s.read(a.sha), null);
  t.ok(await s.put(a.sha, a.data));
  t.ok(s.has(a.sha));
  t.same(await s.read(a.sha), a.data);
  t.notOk(await s.put(a.sha, a.data), 'already stored');
  t.match(s.stats(), { bytes: 1000, segments: 1, added: 1 });
  await consistent(t, s);
});

t.test('the cap: inserts evict least recently used segments, files and all; what cannot fit is skipped', async (t) => {
  const s = await SegmentStore.open({ dir: tempDir(t), maxBytes: 3000 });
  t.teardown(() => s.close());
  const segs = [segment(), segment(), segment(), segment()];
  for (const x of segs.slice(0, 3)) t.ok(await s.put(x.sha, x.data));
  await s.read(segs[0]!.sha); // 0 becomes the most recently used
  t.ok(await s.put(segs[3]!.sha, segs[3]!.data));
  t.same(
    segs.map((x) => s.has(x.sha)),
    [true, false, true, true],
    'segment 1, the least recently used, was evicted',
  );
  t.notOk(existsSync(s.segmentPath(segs[1]!.sha)), 'and its file removed');
  t.match(s.stats(), { bytes: 3000, evictions: 1, evictedBytes: 1000 });
  const big = segment(4000);
  t.notOk(await s.put(big.sha, big.data), 'larger than the cap');
  await consistent(t, s);
});

t.test(
  'a pinned overlay and a leased one keep their segments; an insert that cannot make room is skipped',
  async (t) => {
    const s = await SegmentStore.open({ dir: tempDir(t), maxBytes: 2000 });
    t.teardown(() => s.close());
    const [a, b, c] = [segment(), segment(), segment()];
    await s.put(a.sha, a.data);
    await s.put(b.sha, b.data);
    const ov = (id: number, shas: Buffer[]) =>
      s.index.addOverlay({
        id: Buffer.alloc(32, id),
        keyId: 'k',
        base: 'b',
        createdAt: 'x',
        segments: shas,
        bytes: shas.length * 1000,
      });
    ov(1, [a.sha]);
    ov(2, [b.sha]);
    s.pin(Buffer.alloc(32, 1).toString('hex').slice(0, 8));
    const release = s.lease(Buffer.alloc(32, 2), 'session-1');
    t.notOk(await s.put(c.sha, c.data), 'everything stored is protected');
    t.notOk(s.has(c.sha));
    t.same(s.index.pending(), [], 'the refused claim is undone');
    release();
    t.ok(await s.put(c.sha, c.data), 'the lease is gone: b makes room');
    t.same([s.has(a.sha), s.has(b.sha), s.has(c.sha)], [true, false, true]);
    await consistent(t, s);
  },
);

t.test('a bit-flipped entry is found by verify and dropped; a missing file reads as a miss', async (t) => {
  const s = await SegmentStore.open({ dir: tempDir(t), maxBytes: 1 << 20 });
  t.teardown(() => s.close());
  const [a, b] = [segment(), segment()];
  await s.put(a.sha, a.data);
  await s.put(b.sha, b.data);
  const f = await fsp.open(s.segmentPath(a.sha), 'r+');
  const byte = Buffer.alloc(1);
  await f.read(byte, 0, 1, 500);
  byte[0]! ^= 0x10;
  await f.write(byte, 0, 1, 500);
  await f.close();
  const v = await s.verify();
  t.same(v.dropped, [a.sha.toString('hex')]);
  t.equal(v.checked, 2);
  t.notOk(s.has(a.sha));
  t.notOk(existsSync(s.segmentPath(a.sha)));
  await fsp.rm(s.segmentPath(b.sha));
  t.equal(await s.read(b.sha), null, 'its file is gone');
  t.notOk(s.has(b.sha), 'and so is the entry');
  t.equal(s.stats().dropped, 2);
  await consistent(t, s);
});

t.test('gc removes files the index does not know, and evicts down to a target', async (t) => {
  const dir = tempDir(t);
  const s = await SegmentStore.open({ dir, maxBytes: 1 << 20 });
  t.teardown(() => s.close());
  const [a, b] = [segment(), segment()];
  await s.put(a.sha, a.data);
  await s.put(b.sha, b.data);
  const stray = segment();
  await fsp.mkdir(path.dirname(s.segmentPath(stray.sha)), { recursive: true });
  await fsp.writeFile(s.segmentPath(stray.sha), stray.data);
  // Files the layout cannot hold: one straight under segments/, a stored segment's name in the wrong directory.
  await fsp.writeFile(path.join(dir, 'segments', 'README'), 'x');
  const wrongDir = path.join(dir, 'segments', a.sha.toString('hex').startsWith('00') ? '01' : '00');
  await fsp.mkdir(wrongDir, { recursive: true });
  await fsp.writeFile(path.join(wrongDir, a.sha.toString('hex')), a.data);
  const r = await s.gc(1000);
  t.match(r, { evicted: 1, evictedBytes: 1000, orphanFiles: 3 });
  t.same([s.has(a.sha), s.has(b.sha)], [false, true], 'the least recently used went');
  await consistent(t, s);
});

function runChild(
  dir: string,
  count: number,
  bytes: number,
  crash?: string,
): Promise<{ signal: string | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import=tsx', CHILD, dir, String(count), String(bytes)], {
      env: { ...process.env, ...(crash ? { VMSYNTH_STORE_CRASH: crash } : {}) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', reject);
    p.on('exit', (_code, signal) => resolve({ signal, out }));
  });
}

t.test('kill -9 at each step of an insert: the store reopens consistent and takes the segment again', async (t) => {
  for (const point of ['claimed', 'written', 'renamed']) {
    const dir = tempDir(t);
    const r = await runChild(dir, 1, 100_000, point);
    t.equal(r.signal, 'SIGKILL', `${point}: the writer died`);
    t.equal(r.out, '', `${point}: before its put returned`);
    const s = await SegmentStore.open({ dir, maxBytes: 1 << 30 });
    t.equal(s.stats().segments, 0, `${point}: the half-done insert was undone`);
    await consistent(t, s);
    const a = segment();
    t.ok(await s.put(a.sha, a.data), `${point}: the store takes segments again`);
    s.close();
  }
});

t.test('kill -9 at random points of many inserts, five times: consistent after each', async (t) => {
  const dir = tempDir(t);
  for (let round = 0; round < 5; round++) {
    const p = spawn(process.execPath, ['--import=tsx', CHILD, dir, '100000', '300000'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let puts = 0;
    p.stdout.on('data', (d: Buffer) => (puts += d.toString().split('put ').length - 1));
    // Wait for some inserts, then a random instant more.
    while (puts < 3 + round) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, Math.random() * 30));
    const exited = new Promise((r) => p.on('exit', r));
    p.kill('SIGKILL');
    await exited;
    const s = await SegmentStore.open({ dir, maxBytes: 1 << 30 });
    t.ok(s.stats().segments >= puts, `round ${round}: every put that returned is there`);
    await consistent(t, s);
    s.close();
  }
});
