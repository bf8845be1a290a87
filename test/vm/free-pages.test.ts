/**
 * Free page reporting, host side, without a VM: settleFreePages watches a
 * RAM file's allocation shrink (holes punched here with fallocate, as QEMU
 * does for reported pages) and returns once it is stable; the guest command
 * sets the reporting order and frees memory so that reporting runs. The real
 * guest path is in test/e2e/overlay-real.test.ts.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { settleFreePages } from '../../lib/vm/free-pages.js';
import { freeMemoryCommand } from '../../lib/vm/customize.js';

t.teardown(removeTestRoot);
const run = promisify(execFile);

t.test('settleFreePages measures the holes punched while it waits, and stops when they stop', async (t) => {
  await fsp.mkdir(testRoot, { recursive: true });
  const ram = path.join(testRoot, 'ram');
  await fsp.writeFile(ram, Buffer.alloc(8 << 20, 1));
  const punch = (mib: number) => run('fallocate', ['-p', '-o', String(mib << 20), '-l', String(2 << 20), ram]);
  const timers = [setTimeout(() => void punch(0), 100), setTimeout(() => void punch(4), 400)];
  const r = await settleFreePages(ram, { minMs: 300, stableMs: 400, intervalMs: 50, maxMs: 5000 });
  timers.forEach(clearTimeout);
  t.equal(r.freedBytes, 4 << 20, 'both 2 MiB holes counted');
  t.equal(r.allocatedBytes, 4 << 20);
  t.ok(r.ms >= 800 && r.ms < 5000, `returned once stable (${r.ms} ms)`);

  const capped = await settleFreePages(ram, { minMs: 10_000, maxMs: 300, intervalMs: 50 });
  t.ok(capped.ms < 1000, 'maxMs bounds the wait');
  t.equal(capped.freedBytes, 0);
  const ac = new AbortController();
  setTimeout(() => ac.abort(new Error('stop')), 100);
  await t.rejects(
    settleFreePages(ram, { signal: ac.signal, minMs: 10_000, maxMs: 20_000 }),
    { code: 'VMS_INTERRUPTED' },
    'cancellable',
  );
});

t.test('the guest command sets the reporting order, optionally drops caches, then frees memory', async (t) => {
  const both = freeMemoryCommand(true, true);
  t.match(
    both,
    /^echo 0 > \/sys\/module\/page_reporting\/parameters\/page_reporting_order; sync; echo 3 > \/proc\/sys\/vm\/drop_caches; dd /,
  );
  t.match(freeMemoryCommand(false, false), /^echo 10 > .*page_reporting_order; sync; dd /);
  t.notMatch(freeMemoryCommand(false, true), /drop_caches/);
});
