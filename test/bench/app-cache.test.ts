/**
 * The suite's per-app cache: an entry replaced over the same base goes, an
 * entry over a base that is gone goes, an entry over another live base (the
 * quick test's, a developer's) stays, and so do entries of other apps and
 * entries from older suites that did not record their base.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { markEntry, pruneAppEntries } from '../../bench/lib/app-cache.js';

t.teardown(removeTestRoot);

t.test('stale entries go, entries over live bases stay', async (t) => {
  const root = path.join(testRoot, 'suite');
  // The bases that exist: directory -> memory image hash.
  const live = new Map<string, string>();
  const base = async (name: string, sha: string) => {
    const dir = path.join(testRoot, 'bases', name);
    live.set(dir, sha);
    return { baseDir: dir, memorySha256: sha };
  };
  const baseSha = async (dir: string) => live.get(dir) ?? null;
  const dev = await base('debian', 'aaa');
  const quick = await base('quick-debian', 'bbb');
  const recaptured = await base('recaptured', 'ccc');
  await markEntry(path.join(root, 'compute-old'), dev);
  await markEntry(path.join(root, 'compute-quick'), quick);
  await markEntry(path.join(root, 'compute-gone'), {
    baseDir: path.join(testRoot, 'bases', 'deleted'),
    memorySha256: 'ddd',
  });
  await markEntry(path.join(root, 'compute-recaptured'), { ...recaptured, memorySha256: 'old-capture' });
  await markEntry(path.join(root, 'speech-x'), quick);
  await fsp.mkdir(path.join(root, 'compute-legacy'), { recursive: true });
  await markEntry(path.join(root, 'compute-new'), dev);

  const removed = await pruneAppEntries(root, 'compute', 'compute-new', dev, baseSha);
  t.same(removed.map((d) => path.basename(d)).sort(), ['compute-gone', 'compute-old', 'compute-recaptured']);
  t.same((await fsp.readdir(root)).sort(), ['compute-legacy', 'compute-new', 'compute-quick', 'speech-x']);
  t.same(
    JSON.parse(await fsp.readFile(path.join(root, 'compute-new', 'made-over.json'), 'utf8')),
    dev,
    'the entry records its base',
  );
  t.same(
    await pruneAppEntries(path.join(testRoot, 'missing'), 'compute', 'x', dev, baseSha),
    [],
    'a missing cache is not an error',
  );
});
