/**
 * Handoffs a target refuses, on the real stack: a target that runs its limit
 * of sessions (the handoff counts as one starting, VMS_BUSY), one that wants
 * a token the source does not have (VMS_AUTH), and one that does not trust
 * the key the overlay is signed with (VMS_UNTRUSTED_KEY). Each time the
 * client's call fails with VMS_HANDOFF_REFUSED naming the target's reason,
 * the VM goes on serving on A with its state, and the target is left with
 * nothing of the handoff.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ClientSession } from '../../lib/client/session.js';
import { packageRoot, runDir } from '../../lib/core/paths.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { SynthServer } from '../../lib/server/server.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';

t.teardown(removeTestRoot);

await guestBase('hrbase');
await generateKey();
// The app's own key: A and two of the targets trust it, the third does not.
const appKey = await generateKey(path.join(testRoot, 'app-key'));
const ov = path.join(testRoot, 'overlay');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 'hrbase', out: ov, script: demo, key: appKey.privateKeyFile });
const trust = [appKey.publicKeyFile];

const a = await SynthServer.listen({ port: 0, trust, handoff: { token: 'not-the-token' } });
t.teardown(() => a.close());
const targets = {
  full: await SynthServer.listen({ port: 0, trust, maxSessions: 1 }),
  locked: await SynthServer.listen({ port: 0, trust, token: 'the-token' }),
  distrustful: await SynthServer.listen({ port: 0 }),
};
for (const b of Object.values(targets)) t.teardown(() => b.close());

t.test('a target that refuses: VMS_HANDOFF_REFUSED with its reason, the VM goes on on A', async (t) => {
  // The full target's one session.
  const occupant = await ClientSession.open({ server: `127.0.0.1:${targets.full.address().port}`, overlay: ov });
  await occupant.complete;
  t.equal(targets.full.sessionCount, 1, 'the full target runs its one session');

  const s = await ClientSession.open({ server: `127.0.0.1:${a.address().port}`, overlay: ov });
  await s.complete;
  const add = async () =>
    (
      JSON.parse((await s.offload({ method: 'GET', path: '/state?add=1&touch_mb=1' })).body.toString()) as {
        count: number;
      }
    ).count;
  let count = await add();
  t.equal(count, 1);
  for (const [name, b, targetCode] of [
    ['full', targets.full, 'VMS_BUSY'],
    ['locked', targets.locked, 'VMS_AUTH'],
    ['distrustful', targets.distrustful, 'VMS_UNTRUSTED_KEY'],
  ] as const) {
    const before = b.sessionCount;
    await t.rejects(
      s.handoff(`127.0.0.1:${b.address().port}`),
      { code: 'VMS_HANDOFF_REFUSED', details: { targetCode } },
      `the ${name} target refuses: ${targetCode}`,
    );
    t.equal(await add(), ++count, `the VM goes on serving on A, its count at ${count}`);
    t.equal(`${s.server.host}:${s.server.port}`, `127.0.0.1:${a.address().port}`, 'the client is still on A');
    t.equal(b.sessionCount, before, `the ${name} target started no session`);
  }
  const domains = [`vmsynth-${s.id}`, `vmsynth-${occupant.id}`];
  await s.finish();
  await occupant.finish();
  t.same(await leaks(domains, runDir()), NO_LEAKS, 'nothing left');
});
