import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { cleanStale } from '../../lib/vm/janitor.js';
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
  const report = await cleanStale(null);
  t.same(report.sessions.sort(), [dead, orphan].sort());
  t.ok(await fsp.stat(live), 'the live run stays');
  await t.rejects(fsp.stat(dead));
});
