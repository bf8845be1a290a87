import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { cleanStale } from '../../lib/vm/janitor.js';
import { DOMAIN_PREFIX } from '../../lib/vm/libvirt.js';
import { qemuLogPath } from '../../lib/vm/machine.js';
import { currentOwner, OWNER_FILE } from '../../lib/vm/run-dir.js';

t.teardown(removeTestRoot);

t.test('run directories of dead owners are removed, live ones kept', async (t) => {
  const run = path.join(testRoot, 'run');
  const dead = path.join(run, 'deadbeef0001');
  const live = path.join(run, 'a11ve0000001');
  const orphan = path.join(run, 'no-owner-file');
  for (const d of [dead, live, orphan]) await fsp.mkdir(d, { recursive: true });
  // A process that has exited: its pid is free (or reused with another start time).
  const child = spawn('true');
  const pid = await new Promise<number>((r) => child.on('exit', () => r(child.pid!)));
  await fsp.writeFile(path.join(dead, OWNER_FILE), JSON.stringify({ pid, start: '1' }));
  await fsp.writeFile(path.join(live, OWNER_FILE), JSON.stringify(await currentOwner()));
  // libvirt's QEMU logs of their domains: after a host restart the domain is
  // gone but its log is not, so the log goes with the run directory.
  await fsp.mkdir(path.dirname(qemuLogPath('x')), { recursive: true });
  for (const d of [dead, live]) await fsp.writeFile(qemuLogPath(DOMAIN_PREFIX + path.basename(d)), 'log\n');
  t.teardown(() => fsp.rm(qemuLogPath(DOMAIN_PREFIX + path.basename(live)), { force: true }));
  const report = await cleanStale(null);
  t.same(report.sessions.sort(), [dead, orphan].sort());
  t.ok(await fsp.stat(live), 'the live run stays');
  await t.rejects(fsp.stat(dead));
  await t.rejects(fsp.stat(qemuLogPath(DOMAIN_PREFIX + path.basename(dead))), "the dead run's QEMU log is removed");
  t.ok(await fsp.stat(qemuLogPath(DOMAIN_PREFIX + path.basename(live))), "the live run's log stays");
});
