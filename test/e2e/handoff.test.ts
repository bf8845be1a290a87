/**
 * A live handoff between two `vmsynth serve`s (two SynthServers on loopback,
 * each with its own store; real QEMU, libvirt, FUSE and keepers): a client
 * synthesizes on cloudlet A, its requests build state in the app, and while
 * it keeps sending small requests it asks A to move the VM to cloudlet B.
 * B holds no overlay: it gets the segments from A's store. The client is
 * told `moved`, resumes on B, and every request is answered exactly once
 * (the app counts them: the count after equals the requests sent), with the
 * state A's requests built. Nothing is left on A.
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
import { leaks, NO_LEAKS } from '../helpers/leaks.js';
import { until } from '../helpers/wait.js';

t.teardown(removeTestRoot);

await guestBase('handoffbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 'handoffbase', out: ov, script: demo });

const a = await SynthServer.listen({ port: 0, store: { dir: path.join(testRoot, 'store-a'), maxBytes: 1 << 30 } });
t.teardown(() => a.close());
const b = await SynthServer.listen({ port: 0 });
t.teardown(() => b.close());
const addr = (s: SynthServer) => `127.0.0.1:${s.address().port}`;

const steps: string[] = [];
const onStep = (m: unknown) => {
  const x = m as { role: string; step: string; ms?: number; detail?: string };
  steps.push(`${x.role}: ${x.step}${x.ms !== undefined ? ` (${x.ms} ms)` : ''}${x.detail ? `: ${x.detail}` : ''}`);
};
channels.handoff.subscribe(onStep);
t.teardown(() => channels.handoff.unsubscribe(onStep));

t.test('a VM moves to the next cloudlet while it serves, with its state, every request answered once', async (t) => {
  const events: string[] = [];
  const s = await ClientSession.open({
    server: addr(a),
    overlay: ov,
    policy: 'early-start',
    onEvent: (e) => {
      if (e.type === 'moved' || e.type === 'dropped' || e.type === 'reconnected')
        events.push(`${Math.round(performance.now())} ${JSON.stringify(e)}`);
    },
  });
  const failed: string[] = [];
  const state = async (q: string) => {
    const r = await s.offload({ method: 'GET', path: `/state?${q}` });
    if (r.status !== 200) failed.push(`/state?${q}: ${r.status}`);
    return JSON.parse(r.body.toString()) as { count: number; chain: string };
  };
  await s.complete;
  for (let i = 1; i <= 5; i++) await state(`add=${i}&touch_mb=4&disk_mb=1&disk_off_mb=56`);
  const disk = async () =>
    JSON.parse(
      (await s.offload({ method: 'GET', path: '/run?mem_mb=4&disk_mb=1&disk_off_mb=56' })).body.toString(),
    ) as { memDigest: string; diskDigest: string };
  const before = await disk();
  const sessionA = s.id;

  // A steady stream of small requests, each adding 1, across the handoff.
  let adds = 0;
  let streaming = true;
  const gaps: number[] = [];
  const stream = (async () => {
    let last = performance.now();
    while (streaming) {
      await state('add=1');
      adds++;
      const now = performance.now();
      gaps.push(now - last);
      last = now;
    }
  })();
  await new Promise((r) => setTimeout(r, 500));
  const t0 = performance.now();
  await s.handoff(addr(b));
  const handoffMs = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 1000));
  streaming = false;
  await stream;

  t.same(failed, [], 'every request was answered 200');
  t.equal(`${s.server.host}:${s.server.port}`, addr(b), 'the client is on B now');
  t.not(s.id, sessionA, "as B's session");
  t.ok(
    events.some((e) => e.includes('"moved"')),
    'it was told the session moved',
  );
  const after = await state('');
  t.equal(after.count, 5 + adds, `the app counted every request once: 5 + ${adds}`);
  const same = await disk();
  t.equal(same.diskDigest, before.diskDigest, "the disk blocks A's requests wrote read back on B");
  t.ok(
    Math.max(...gaps) > 0,
    `longest gap between replies: ${Math.round(Math.max(...gaps))} ms; handoff ${Math.round(handoffMs)} ms`,
  );
  const tA = performance.now();
  await until(() => a.sessionCount === 0, "A's session to end");
  t.comment(steps.join('\n'));
  t.comment(`handoff asked at ${Math.round(t0)}; client: ${events.join('\n')}`);
  t.comment(
    `gaps over 200 ms: ${gaps
      .map((g, i) => [i, Math.round(g)])
      .filter(([, g]) => g! > 200)
      .map(([i, g]) => `#${i}: ${g}`)
      .join(', ')}`,
  );
  t.pass(`A's session ended ${Math.round(performance.now() - tA)} ms after the stream stopped`);
  t.equal(b.sessionCount, 1, 'B holds it');

  // Straight back, B to A: what the first handoff brought goes back too (B never wrote it itself).
  const sessionB = s.id;
  await state('add=100&touch_mb=1');
  const backT0 = performance.now();
  await s.handoff(addr(a));
  t.equal(`${s.server.host}:${s.server.port}`, addr(a), `back on A (${Math.round(performance.now() - backT0)} ms)`);
  const back = await state('');
  t.same([back.count, back.chain], [after.count + 1, back.chain], `the count went on: ${back.count}`);
  t.equal(
    (await disk()).diskDigest,
    before.diskDigest,
    'the blocks written on A before the first handoff are still there',
  );
  await until(() => b.sessionCount === 0, "B's session to end");
  const domains = [`vmsynth-${sessionA}`, `vmsynth-${sessionB}`, `vmsynth-${s.id}`];
  await s.finish();
  t.same(await leaks(domains, runDir()), NO_LEAKS, 'nothing left on either');
});
