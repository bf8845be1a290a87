/**
 * The spare keeper: started ahead, taken once, replaced later; a take it
 * cannot serve fails with a typed error and its log says why; a spare whose
 * server closes the pool is gone. (A spare that serves a session is in
 * test/e2e/restart.test.ts and every e2e synthesis.)
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { KeeperPool } from '../../lib/synth/keeper-pool.js';
import { procStat } from '../../lib/vm/run-dir.js';

t.teardown(removeTestRoot);
// The pool holds its spare without keeping the event loop alive (a server's listener does that).
const hold = setInterval(() => undefined, 1000);
t.teardown(() => clearInterval(hold));

const alive = async (pid: number) => {
  const fields = await procStat(pid);
  return fields !== null && fields[0] !== 'Z';
};

t.test('a take the spare cannot serve fails typed, with its log; no spare, no take', async (t) => {
  const pool = new KeeperPool();
  t.teardown(() => pool.close());
  t.equal(await pool.take(testRoot), null, 'no spare yet: the caller starts one itself');
  pool.warm();
  const dir = path.join(testRoot, 'no-spec');
  await fsp.mkdir(dir);
  await t.rejects(pool.take(dir), { code: 'VMS_FUSE_MOUNT', message: /keeper\.log/ }, 'no spec: a typed failure');
  t.match(
    await fsp.readFile(path.join(dir, 'keeper.log'), 'utf8').catch(() => ''),
    /"event":"keeperFailed".*keeper\.spec/,
    'its log, where the error says, tells why (no keeper.spec)',
  );
  t.equal(await pool.take(dir), null, 'the spare is used up; the next one starts later');
});

t.test('closing the pool ends its spare', async (t) => {
  const pool = new KeeperPool();
  pool.warm();
  const spare = (pool as unknown as { spare: { child: { pid: number }; ready: Promise<boolean> } }).spare;
  t.ok(await spare.ready, 'the spare says it is ready');
  t.ok(await alive(spare.child.pid));
  pool.close();
  for (let i = 0; i < 100 && (await alive(spare.child.pid)); i++) await new Promise((r) => setTimeout(r, 20));
  t.notOk(await alive(spare.child.pid), 'gone');
});
