/**
 * The handoff's core on the real stack, without the network: a synthesized
 * VM (session A) builds state through offload requests; pre-copy passes and
 * the pass after the stop capture what it changed (lib/handoff, through
 * /proc and the qcow2 layer); a second session (B) over the same base and
 * overlay announces and applies them, resumes from A's device state before
 * the last pass's segments have arrived (a guest read demands them), and
 * its app answers with the state only A's requests built: the request
 * count goes on, and the pages and disk blocks they wrote read back the same.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../../lib/core/paths.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { tablesOf } from '../../lib/server/handoff-out.js';
import { HandoffCapture } from '../../lib/synth/handoff-capture.js';
import { HandoffIntake } from '../../lib/synth/handoff-intake.js';
import { SynthSession, type SynthEvents } from '../../lib/synth/session.js';
import { Libvirt } from '../../lib/vm/libvirt.js';
import { runDir } from '../../lib/core/paths.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';

t.teardown(removeTestRoot);

const { base } = await guestBase('handoffbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const demo = await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8');
await createOverlay({ base: 'handoffbase', out: ov, script: demo });
const overlay = await Overlay.open(ov, { trusted: null });
const segFile = overlay.segmentFile();
t.teardown(() => segFile.close());
const lv = await Libvirt.connect();
t.teardown(() => lv.close());

/** A session whose segments come straight from the overlay's file, as the client would send them. */
async function session(
  incoming: boolean,
  deltaDemand?: (segment: number) => void,
): Promise<{ s: SynthSession; ready: Promise<number>; complete: Promise<number> }> {
  const at: { s?: SynthSession } = {};
  let ready!: (ms: number) => void;
  let complete!: (ms: number) => void;
  let failed!: (err: Error) => void;
  const failure = new Promise<never>((_, reject) => (failed = reject));
  failure.catch(() => undefined);
  const events: SynthEvents = {
    want: (_lane, segments) => {
      for (const i of segments) setImmediate(() => at.s!.receive(i, segFile.read(overlay.body.segments[i]!)));
    },
    hurry: () => undefined,
    tables: () => undefined,
    thin: () => undefined,
    ready: (ms) => ready(ms),
    complete: (ms) => complete(ms),
    failed: (err) => failed(err),
    ...(deltaDemand ? { deltaDemand } : {}),
  };
  const s = (at.s = await SynthSession.start({ overlay, base, policy: 'baseline', lv, events, incoming, threads: 2 }));
  const race = <T>(p: Promise<T>) => Promise.race([p, failure]);
  const r = {
    s,
    ready: race(new Promise<number>((res) => (ready = res))),
    complete: race(new Promise<number>((res) => (complete = res))),
  };
  s.run();
  return r;
}

const ask = async (s: SynthSession, p: string) => {
  const r = await s.offload('GET', p, Buffer.alloc(0), 120_000);
  if (r.status !== 200) throw new Error(`${p}: ${r.status} ${r.body.toString()}`);
  return JSON.parse(r.body.toString()) as Record<string, unknown>;
};

t.test('a VM handed off goes on with the state its requests built', async (t) => {
  const a = await session(false);
  t.teardown(() => a.s.close());
  await a.ready;
  for (let i = 1; i <= 5; i++) await ask(a.s, `/state?add=${i}&touch_mb=4&disk_mb=1&disk_off_mb=56`);
  const capture = new HandoffCapture(a.s);
  t.teardown(() => capture.close());
  const p1 = await capture.pass(3);
  t.ok(
    p1.segments.length > 0,
    `pass 1: ${p1.looked} chunks looked at, ${p1.bytes} bytes in ${p1.segments.length} segments`,
  );
  await ask(a.s, '/state?add=6&touch_mb=1&disk_mb=1&disk_off_mb=57');
  const p2 = await capture.pass(3);
  t.ok(p2.bytes < p1.bytes, `pass 2 sends less: ${p2.bytes} bytes (${p2.kinds.join('/')})`);
  const state = await ask(a.s, '/state');
  const run = await ask(a.s, '/run?mem_mb=16&disk_mb=2&disk_off_mb=56');
  const info = await ask(a.s, '/info');
  t.equal(state.count, 6, 'six requests built the state on A');
  const stop = await capture.stop();
  const p3 = await capture.pass(3);
  t.ok(stop.deviceState.length > 0, `device state: ${stop.deviceState.length} bytes; last pass ${p3.bytes} bytes`);

  const demanded: number[] = [];
  const ref: { intake?: HandoffIntake } = {};
  const b = await session(true, (segment) => {
    demanded.push(segment);
    ref.intake!.demand(segment);
    sendFinal(); // a guest read waits: send the last pass now
  });
  t.teardown(() => b.s.close());
  await b.complete;
  let done!: () => void;
  const allThere = new Promise<void>((res) => (done = res));
  const intake = (ref.intake = new HandoffIntake(b.s, (err) => t.fail(err.message), done));
  for (const p of [p1, p2]) {
    const applied = intake.pass(tablesOf(p));
    for (const seg of p.segments) intake.segment(seg.index, seg.data);
    await applied;
  }
  let sent = false;
  const sendFinal = () => {
    if (sent) return;
    sent = true;
    for (const seg of p3.segments) intake.segment(seg.index, seg.data);
  };
  await intake.final(tablesOf(p3), stop.deviceState, stop.genid);
  const timer = setTimeout(sendFinal, 3000); // no read waited: send it anyway
  t.teardown(() => clearTimeout(timer));
  await b.ready;
  t.same(await ask(b.s, '/state'), state, 'B has the count and chain A built');
  const runB = await ask(b.s, '/run?mem_mb=16&disk_mb=2&disk_off_mb=56');
  t.same(
    [runB.memDigest, runB.diskDigest],
    [run.memDigest, run.diskDigest],
    'the pages and blocks A wrote read back the same',
  );
  const infoB = await ask(b.s, '/info');
  t.ok(
    (infoB.uptimeMs as number) > (info.uptimeMs as number),
    `the app went on: uptime ${info.uptimeMs} ms on A, ${infoB.uptimeMs} ms on B`,
  );
  t.equal(b.s.vm.restored?.spec.genid, stop.genid, "B runs with A's generation ID");
  await allThere;
  t.equal(b.s.launch.missingChunks, 0, 'B holds every chunk');
  t.comment(`demand fetches of the last pass: ${demanded.length}`);
  const next = await ask(b.s, '/state?add=7');
  t.equal(next.count, 7, 'and B goes on counting');
  const domains = [a.s.domain, b.s.domain];
  await a.s.close();
  await b.s.close();
  t.same(await leaks(domains, runDir()), NO_LEAKS, 'nothing left of either session');
});
