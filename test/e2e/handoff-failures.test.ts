/**
 * A handoff whose A↔B link dies (a TCP proxy between the two cloudlets
 * resets it, test/helpers/reset-proxy.ts), on the real stack:
 *
 * - during pre-copy (when B says it applied the first pass): the handoff
 *   fails with VMS_HANDOFF, the VM goes on serving on A with every request
 *   answered once, and B's incoming session is gone with nothing left;
 * - after the stop, when B says its VM runs there, before A hears it: A
 *   cannot know B resumed, so the VM goes on on A (the requests held over
 *   the stop run there, once), and B's copy, which no client can reach,
 *   ends with its grace period (docs/DESIGN-NOTES.md, "Live handoff").
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
import { counterApp } from '../helpers/counter-app.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';
import { ResetProxy } from '../helpers/reset-proxy.js';
import { until } from '../helpers/wait.js';

t.teardown(removeTestRoot);

await guestBase('hfbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 'hfbase', out: ov, script: demo });

const a = await SynthServer.listen({ port: 0, store: { dir: path.join(testRoot, 'store-a'), maxBytes: 1 << 30 } });
t.teardown(() => a.close());
// B's grace is short: a copy no client reaches ends soon.
const b = await SynthServer.listen({ port: 0, graceMs: 3000 });
t.teardown(() => b.close());

/** A session on A with state built, and a stream of requests that each add 1 until stopped. */
async function busySession() {
  const s = await ClientSession.open({ server: `127.0.0.1:${a.address().port}`, overlay: ov });
  await s.complete;
  const app = counterApp(s);
  await app.build(3, 'touch_mb=2');
  return { s, add: app.add, ...app.stream() };
}

for (const [when, frame] of [
  ['during pre-copy', 'applied'],
  ['after B resumed, before A heard it', 'resumed'],
] as const) {
  t.test(`the link to B dies ${when}: the VM goes on on A, every request answered once`, async (t) => {
    const proxy = await ResetProxy.listen(b.address(), { resetOnServerFrame: frame });
    const x = await busySession();
    const to = proxy.address();
    await t.rejects(x.s.handoff(`${to.host}:${to.port}`), { code: 'VMS_HANDOFF' }, 'the handoff fails');
    t.ok(proxy.resetRecord, `the link was reset on B's "${frame}"`);
    await new Promise((r) => setTimeout(r, 300));
    const sent = await x.stop();
    t.equal(`${x.s.server.host}:${x.s.server.port}`, `127.0.0.1:${a.address().port}`, 'the client is still on A');
    t.equal((await x.add('')).count, sent, `the app on A counted each of the ${sent} requests once`);
    await until(() => b.sessionCount === 0, "B's session to end", 30_000);
    t.pass("B's session ended");
    const id = x.s.id;
    await x.s.finish();
    t.same(await leaks([`vmsynth-${id}`], runDir()), NO_LEAKS, 'nothing left');
  });
}
