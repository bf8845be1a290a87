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
import { counterApp } from '../helpers/counter-app.js';
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
  const app = counterApp(s);
  await app.build(3, 'touch_mb=2&disk_mb=1');
  // Four requests at a time, so some are in flight when the path goes.
  const stream = app.stream(4);
  await new Promise((r) => setTimeout(r, 500));
  toA.down();
  const report = await a.handoff(s.id, { host: '127.0.0.1', port: b.address().port });
  t.ok(report.totalMs > 0, `A handed the session to B while the client was away (${report.totalMs} ms)`);
  await new Promise((r) => setTimeout(r, 1000));
  toA.up();
  // (`moved` names B at once; the resume there is the reconnect.)
  await until(
    () => s.server.port === b.address().port && s.reconnects.length > 0,
    'the client to resume its session on B',
    60_000,
  );
  t.ok(toA.refused > 0, `the client tried A while it was out of reach (${toA.refused} connections reset)`);
  await new Promise((r) => setTimeout(r, 500));
  const sent = await stream.stop();
  t.equal((await app.add('')).count, sent, `B's app counted each of the ${sent} requests once`);
  const id = s.id;
  await s.finish();
  t.same(await leaks([`vmsynth-${first}`, `vmsynth-${id}`], runDir()), NO_LEAKS, 'nothing left');
});
