import { testRoot, removeTestRoot, sweepStaleTestRoots } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { exec } from '../../lib/core/exec.js';
import { removeStaleSiblings } from '../../lib/core/stale.js';

t.teardown(removeTestRoot);

t.test('work and temp directories of dead runs go; those of live runs, and other names, stay', async (t) => {
  await fsp.mkdir(testRoot, { recursive: true });
  // A pid that surely is dead: a child that already exited.
  const child = spawn('true');
  const dead = child.pid!;
  await new Promise((r) => child.on('exit', r));
  const names = [
    `ov.work-${dead}`,
    `ov.tmp-${dead}`,
    `ov.work-${process.pid}`,
    `ov.tmp-${process.ppid}`,
    `ov2.work-${dead}`,
    `ov.work-x`,
    'ov',
  ];
  for (const n of names) await fsp.mkdir(path.join(testRoot, n, 'inner'), { recursive: true });
  const removed = await removeStaleSiblings(path.join(testRoot, 'ov'));
  t.same(removed.map((p) => path.basename(p)).sort(), [`ov.tmp-${dead}`, `ov.work-${dead}`].sort());
  t.same(
    (await fsp.readdir(testRoot)).sort(),
    [`ov.work-${process.pid}`, `ov.tmp-${process.ppid}`, `ov2.work-${dead}`, 'ov.work-x', 'ov'].sort(),
  );
  t.same(await removeStaleSiblings(path.join(testRoot, 'missing-dir', 'ov')), [], 'a missing parent is not an error');
});

t.test('test roots of dead test processes go, unless something is mounted in them', async (t) => {
  const dir = path.join(testRoot, 'tmp');
  await fsp.mkdir(dir, { recursive: true });
  const child = spawn('true');
  const dead = child.pid!;
  await new Promise((r) => child.on('exit', r));
  const names = [
    `vmsynth-test-${dead}-aaaaaa`,
    `vmsynth-test-${dead}-mounted`,
    `vmsynth-test-${process.pid}-bbbbbb`,
    'vmsynth-test-cccccc',
    'other',
  ];
  for (const n of names) await fsp.mkdir(path.join(dir, n, 'inner'), { recursive: true });
  const mountpoint = path.join(dir, `vmsynth-test-${dead}-mounted`, 'inner');
  await exec('mount', ['-t', 'tmpfs', 'none', mountpoint]);
  t.teardown(() => exec('umount', [mountpoint]));
  t.same(await sweepStaleTestRoots(dir), [path.join(dir, `vmsynth-test-${dead}-aaaaaa`)]);
  t.same(
    (await fsp.readdir(dir)).sort(),
    names.slice(1).sort(),
    "a live process's root, a root with a mount in it and other names stay",
  );
});
