import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { cleanStale, QEMU_LOG_GRACE_MS } from '../../lib/vm/janitor.js';
import { DOMAIN_PREFIX, type Libvirt } from '../../lib/vm/libvirt.js';
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

t.test(
  'QEMU logs of domains libvirt no longer knows are removed once a minute old, whatever their run directory',
  async (t) => {
    // The path that left them: a session's process killed, then its domain and its run
    // directory gone with a host restart (or a killed test's removed root); only the log stays.
    // (In a directory of its own: the real one holds the logs of other test files' running domains.)
    const logDir = path.join(testRoot, 'qemu-logs');
    await fsp.mkdir(logDir, { recursive: true });
    const name = (what: string) => `${DOMAIN_PREFIX}${what}`;
    const log = (what: string) => path.join(logDir, `${name(what)}.log`);
    const orphan = log('0rphan');
    const fresh = log('fresh0'); // a domain that just crashed: its session reads the log first
    const live = log('1ive00'); // its domain runs
    const other = path.join(logDir, 'someone-else.log'); // not a vmsynth domain's
    for (const f of [orphan, fresh, live, other]) await fsp.writeFile(f, 'log\n');
    const old = (Date.now() - QEMU_LOG_GRACE_MS - 5_000) / 1000;
    for (const f of [orphan, live, other]) await fsp.utimes(f, old, old);
    const lv = {
      vmsynthDomains: async () => [name('1ive00')],
      xmlDesc: async () => '',
      destroy: async () => false, // (the running domain is not this test's to end)
    } as unknown as Libvirt;
    const report = await cleanStale(lv, { qemuLogDir: logDir });
    t.same(report.logs, [orphan], 'the orphan log is reported, and only it');
    t.same(
      (await fsp.readdir(logDir)).sort(),
      [`${name('1ive00')}.log`, `${name('fresh0')}.log`, 'someone-else.log'].sort(),
      "it is removed; a fresh one, a running domain's and another's stay",
    );
    const again = await cleanStale(lv, { qemuLogDir: logDir });
    t.same(again.logs, [], 'nothing is left for a second pass');
  },
);
