/**
 * The client is out of reach while its VM moves, on the real stack: its
 * path to A goes down (every connection reset, every new one too) with
 * requests in flight; A hands the session to B meanwhile (the ops API, as
 * `vmsynth handoff` does), so nobody can tell the client. When the path
 * comes back, the client's resume at A is answered `moved`, it resumes on
 * B, and every request it sent, before, during and after, is answered
 * exactly once, by the VM with the state the earlier ones built.
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
import { OutageProxy } from '../helpers/outage-proxy.js';
import { until } from '../helpers/wait.js';

t.teardown(removeTestRoot);

await guestBase('habase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 'habase', out: ov, script: demo });

// A serves B the overlay's segments from its store.
const a = await SynthServer.listen({ port: 0, store: { dir: path.join(testRoot, 'store-a'), maxBytes: 1 << 30 } });
t.teardown(() => a.close());
const b = await SynthServer.listen({ port: 0 });
t.teardown(() => b.close());
const toA = await OutageProxy.listen({ host: '127.0.0.1', port: a.address().port });
t.teardown(() => toA.close());

t.test('the client is away while its VM moves: it finds it on B, every request answered once', async (t) => {
  const s = await ClientSession.open({ server: `${toA.address().host}:${toA.address().port}`, overlay: ov });
  await s.complete;
  const first = s.id;
  const add = async (q: string) => {
    const r = await s.offload({ method: 'GET', path: `/state?${q}` });
    if (r.status !== 200) throw new Error(`${r.status} ${r.body.toString()}`);
    return JSON.parse(r.body.toString()) as { count: number };
  };
  for (let i = 0; i < 3; i++) await add('add=1&touch_mb=2&disk_mb=1');
  // Four requests at a time, so some are in flight when the path goes.
  let sent = 3;
  let on = true;
  const stream = Promise.all(
    [0, 1, 2, 3].map(async () => {
      while (on) {
        await add('add=1');
        sent++;
      }
    }),
  );
  await new Promise((r) => setTimeout(r, 500));
  toA.down();
  const reconnectsBefore = s.reconnects.length;
  const report = await a.handoff(s.id, { host: '127.0.0.1', port: b.address().port });
  t.ok(report.totalMs > 0, `A handed the session to B while the client was away (${report.totalMs} ms)`);
  await new Promise((r) => setTimeout(r, 1000));
  toA.up();
  await until(() => s.server.port === b.address().port, 'the client to find its session on B', 60_000);
  t.ok(s.reconnects.length > reconnectsBefore, 'the client reconnected');
  await new Promise((r) => setTimeout(r, 500));
  on = false;
  await stream;
  t.equal((await add('')).count, sent, `B's app counted each of the ${sent} requests once`);
  const id = s.id;
  await s.finish();
  t.same(await leaks([`vmsynth-${first}`, `vmsynth-${id}`], runDir()), NO_LEAKS, 'nothing left');
});
