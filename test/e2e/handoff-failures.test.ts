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
 *   ends with its grace period (docs/DESIGN-NOTES.md, "Live handoff");
 * - in post-copy: B runs the VM and A heard it, but part of the last pass
 *   has not crossed (the proxy lets through only what B asks for). The VM
 *   cannot finish: A reports VMS_HANDOFF (step post-copy), B's session ends
 *   with VMS_HANDOFF, the client's next request fails with that reason
 *   (VMS_SESSION_GONE, the session having ended with VMS_HANDOFF, if it came
 *   back to B after the end), and nothing is left on either cloudlet.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { ClientSession } from '../../lib/client/session.js';
import { channels } from '../../lib/core/diagnostics.js';
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

t.test(
  'the link to B dies in post-copy: a typed error on both cloudlets and at the client, nothing left',
  async (t) => {
    // Each request of the stream writes 8 MiB of pages: pre-copy does not converge, and the last pass
    // spans several segments, of which the proxy lets through only those B asks for.
    const proxy = await ResetProxy.listen(b.address(), {
      holdAfterClientFrame: 'final',
      resetAfterServerFrame: 'resumed',
      passLater: true,
    });
    const failed: Array<{ role: string; error?: { code?: string; details?: { step?: string } } }> = [];
    const onStep = (m: unknown) => {
      const x = m as (typeof failed)[number] & { step: string };
      if (x.step === 'failed') failed.push(x);
    };
    channels.handoff.subscribe(onStep);
    t.teardown(() => channels.handoff.unsubscribe(onStep));
    const s = await ClientSession.open({ server: `127.0.0.1:${a.address().port}`, overlay: ov });
    await s.complete;
    const app = counterApp(s);
    await app.build(3, 'touch_mb=2');
    const idA = s.id;
    let on = true;
    let streamError: unknown = null;
    const stream = (async () => {
      while (on) await app.add('add=1&touch_mb=8');
    })().catch((err: unknown) => (streamError = err));
    const to = proxy.address();
    const asked = await s.handoff(`${to.host}:${to.port}`).then(
      () => null,
      (err: unknown) => err,
    );
    t.ok(proxy.resetRecord, "the link was reset once B's VM ran and A heard it");
    t.ok(
      proxy.heldCount > proxy.releasedCount,
      `part of the last pass never crossed (${proxy.heldCount - proxy.releasedCount} of ${proxy.heldCount} held segments)`,
    );
    await until(
      () => failed.some((f) => f.role === 'source') && failed.some((f) => f.role === 'target'),
      'both sides to report the failure',
      30_000,
    );
    const source = failed.find((f) => f.role === 'source')!;
    t.match(source.error, { code: 'VMS_HANDOFF', details: { step: 'post-copy' } }, 'A: VMS_HANDOFF in post-copy');
    t.match(
      failed.find((f) => f.role === 'target')!.error,
      { code: 'VMS_HANDOFF' },
      'B: its session ends with VMS_HANDOFF',
    );
    await stream;
    on = false;
    t.comment(
      `the client's handoff call: ${asked === null ? 'resolved (it resumed on B before B ended)' : (asked as Error).message}`,
    );
    // Told on B's connection if the client was back on B before the session ended there; else at its resume.
    const e = streamError as { code?: string; message?: string } | null;
    t.ok(
      e?.code === 'VMS_HANDOFF' || (e?.code === 'VMS_SESSION_GONE' && /ended: VMS_HANDOFF/.test(e.message ?? '')),
      `the client's request fails with B's VMS_HANDOFF (${e?.code ?? 'none'}: ${e?.message ?? ''})`,
    );
    await until(() => a.sessionCount === 0 && b.sessionCount === 0, 'both cloudlets to drop the session', 30_000);
    t.pass('no session on either cloudlet');
    await s.finish().catch(() => undefined);
    t.same(await leaks([`vmsynth-${idA}`, `vmsynth-${s.id}`], runDir()), NO_LEAKS, 'nothing left on either cloudlet');
    proxy.close();
  },
);
