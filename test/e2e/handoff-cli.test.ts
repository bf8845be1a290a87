/**
 * `vmsynth handoff` against real `vmsynth serve` processes, each with its
 * own run directory and store (cloudlets A, B, and C, which lacks the base):
 * a handoff C refuses fails with VMS_HANDOFF_REFUSED naming why, and the VM
 * goes on serving on A; a handoff to B moves it, the client follows, and
 * the report says what crossed (in the safe mode, --whole: the target
 * resumed only once it held everything). Nothing is left on any of them.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { ClientSession } from '../../lib/client/session.js';
import { freePort } from '../../lib/core/net.js';
import { packageRoot } from '../../lib/core/paths.js';
import { Scope } from '../../lib/core/scope.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { startCloudlet, VMSYNTH_CLI, type CloudletServer } from '../../bench/lib/cloudlet-server.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';
import { until } from '../helpers/wait.js';

const run = promisify(execFile);
t.teardown(removeTestRoot);

await guestBase('hcbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 'hcbase', out: ov, script: demo });

const cli = VMSYNTH_CLI;
const scope = new Scope();
t.teardown(() => scope.close());

interface Cloudlet extends CloudletServer {
  name: string;
}

/** Starts `vmsynth serve` as cloudlet `name`, with its own run directory and store (and base directory, if given). */
async function cloudlet(name: string, bases?: string): Promise<Cloudlet> {
  const listen = { host: '127.0.0.1', port: await freePort() };
  const env = bases ? { VMSYNTH_BASE_DIR: bases } : {};
  return { name, ...(await startCloudlet(scope, { name, dir: testRoot, listen, env })) };
}

/** Runs `vmsynth handoff ... --json` against cloudlet `from`; resolves with its exit code and JSON. */
async function handoff(from: Cloudlet, args: string[]): Promise<{ code: number; out: Record<string, unknown> }> {
  const r = await run(process.execPath, [cli, 'handoff', ...args, '--json'], { env: from.env }).then(
    (x) => ({ code: 0, stdout: x.stdout }),
    (e: { code: number; stdout: string }) => ({ code: e.code, stdout: e.stdout }),
  );
  return { code: r.code, out: JSON.parse(r.stdout) as Record<string, unknown> };
}

t.test('vmsynth handoff: refused by a cloudlet without the base, then done to one with it', async (t) => {
  const [a, b, c] = await Promise.all([cloudlet('a'), cloudlet('b'), cloudlet('c', path.join(testRoot, 'no-bases'))]);
  const s = await ClientSession.open({ server: a.addr, overlay: ov });
  await s.complete;
  const count = async () =>
    (
      JSON.parse((await s.offload({ method: 'GET', path: '/state?add=1&touch_mb=1' })).body.toString()) as {
        count: number;
      }
    ).count;
  t.equal(await count(), 1);
  const listed = await handoff(a, ['--list']);
  t.match(listed.out, { sessions: [{ id: s.id, vmRunning: true }] }, '--list shows the session');

  const refused = await handoff(a, ['--session', s.id, '--to', c.addr]);
  t.equal(refused.code, 69, 'exit 69');
  t.match(
    refused.out,
    { error: { code: 'VMS_HANDOFF_REFUSED', details: { targetCode: 'VMS_BASE_NOT_FOUND' } } },
    `refused: ${JSON.stringify(refused.out).slice(0, 300)}`,
  );
  t.equal(await count(), 2, 'the VM goes on serving on A');
  t.equal(`${s.server.host}:${s.server.port}`, a.addr);

  // The safe mode: B resumes only once it holds every chunk, so it never demand-fetches from A.
  const moved = await handoff(a, ['--session', s.id, '--to', b.addr, '--whole']);
  t.equal(moved.code, 0, `moved: ${JSON.stringify(moved.out).slice(0, 400)}`);
  t.match(moved.out, { to: b.addr, passes: Array, final: { deviceStateBytes: Number }, demandFetches: 0 });
  await until(() => `${s.server.host}:${s.server.port}` === b.addr, 'the client to follow');
  t.equal(await count(), 3, 'the count goes on, on B');
  const domains = [`vmsynth-${String((listed.out.sessions as Array<{ id: string }>)[0]!.id)}`, `vmsynth-${s.id}`];
  await s.finish();
  for (const x of [a, b, c]) await x.stop();
  for (const x of [a, b, c]) t.same(await leaks(domains, x.runDir), NO_LEAKS, `nothing left on ${x.name}`);
});
