/**
 * End to end on the real stack: customize the test guest (copy a file in,
 * run the example script: start a second app, install 4 MiB on the disk,
 * write and trim 4 MiB of scratch), build the overlay, verify it, apply it
 * offline byte-identically, and resume the synthesized VM: its app reads the
 * installed bytes. Nothing may be left behind.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { packageRoot, runDir } from '../../lib/core/paths.js';
import { appDigest, hex64 } from '../../lib/guest/patterns.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey, loadSigningKey } from '../../lib/overlay/keys.js';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { applyOverlay, verifyOverlay } from '../../lib/offline/apply.js';
import { inspectOverlay } from '../../lib/overlay/inspect.js';
import { profileOverlay } from '../../lib/offline/profile.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { verifyBase } from '../../lib/vm/base.js';
import { resumeBase } from '../../lib/vm/base-resume.js';
import { guestBase } from '../helpers/guest-base.js';
import { leaks, NO_LEAKS } from '../helpers/leaks.js';

t.teardown(removeTestRoot);

const { base } = await guestBase('ovbase');
await generateKey();
const script = path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh');
const ov = path.join(testRoot, 'overlay');
const custom = path.join(testRoot, 'custom');

t.test('create, verify, apply byte-identically, resume the synthesized VM', async (t) => {
  const r = await createOverlay({
    base: 'ovbase',
    out: ov,
    script: await fsp.readFile(script, 'utf8'),
    copies: [{ src: script, dest: '/customize-demo.sh' }],
    keepCustom: custom,
  });
  t.match(r.custom.scriptOutput, /customized/, 'the script ran in the guest');
  t.match(r.custom.scriptOutput, /"ok":true/, 'the app it started answered');
  t.same(await leaks([r.custom.domain], runDir()), NO_LEAKS, 'the customization VM is gone');
  t.same(
    (await fsp.readdir(testRoot)).filter((n) => n.includes('.work-') || n.includes('.tmp-')),
    [],
    'no work or temp directories left',
  );

  const rep = inspectOverlay(await Overlay.open(ov, { trusted: null }));
  t.equal(rep.trimmedChunks, 1024, 'the 4 MiB the guest discarded are known as trimmed');
  t.ok(
    rep.kinds['base-ref'].chunks >= 2048,
    `the second app's working set is found in the base (${rep.kinds['base-ref'].chunks} base references)`,
  );
  t.ok(rep.overlayBytes < rep.naiveBytes / 2, `overlay ${rep.overlayBytes} bytes vs naive ${rep.naiveBytes}`);

  const v = await verifyOverlay({ overlay: ov, base: 'ovbase' });
  t.equal(v.chunks, rep.modifiedChunks.memory + rep.modifiedChunks.disk, 'every modified chunk verified');

  const synth = path.join(testRoot, 'synth');
  await applyOverlay({ overlay: ov, base: 'ovbase', out: synth });
  for (const f of ['memory.raw', 'disk.raw', 'device.state']) {
    const [a, b] = await Promise.all([fsp.readFile(path.join(synth, f)), fsp.readFile(path.join(custom, f))]);
    t.ok(a.equals(b), `${f}: apply(base, create(base, custom)) == custom`);
  }

  const installed = (await fsp.readFile(path.join(custom, 'disk.raw'))).subarray(40 << 20, 44 << 20);
  const res = await resumeBase({ base: synth, work: { diskMb: 4, diskOffMb: 40 } });
  t.equal(res.reply.diskDigest, hex64(appDigest(installed)), 'the synthesized VM reads the installed bytes');
  t.same(await leaks([res.domain], runDir()), NO_LEAKS);
  await verifyBase(base); // the base files were only read
});

t.test(
  'profile: two traced runs of the synthesized VM re-pack the overlay so the first request needs a shorter prefix',
  async (t) => {
    const out = path.join(testRoot, 'profiled');
    // The first request reads the last of the installed MiB: in default order (memory, then disk by
    // offset) everything before it must arrive first.
    const work = { diskMb: 1, diskOffMb: 42, memMb: 4 };
    // The overlay is ~1.8 MB: in two 1 MB segments any order looks alike. Re-pack it in 64 KiB
    // segments, default order, and profile that.
    const ov64 = path.join(testRoot, 'overlay-64k');
    const orig = await Overlay.open(ov, { trusted: null });
    await buildOverlay({
      base: baseInput(base),
      custom: {
        memory: path.join(custom, 'memory.raw'),
        disk: path.join(custom, 'disk.raw'),
        deviceState: path.join(custom, 'device.state'),
      },
      appPort: orig.body.vm.appPort,
      trimmedChunks: orig.body.stats.trimmedChunks,
      segmentBytes: 64 << 10,
      key: await loadSigningKey(),
      out: ov64,
    });
    const r = await profileOverlay({ overlay: ov64, out, runs: 2, work, base: 'ovbase' });
    t.equal(r.runs.length, 2);
    for (const run of r.runs) {
      t.ok(
        run.touches.memory > 0 && run.touches.disk >= 256,
        `memory faults and the 1 MiB disk read were traced (${run.touches.memory} memory, ${run.touches.disk} disk chunks)`,
      );
      t.ok(
        run.after.chunks >= 256,
        `the installed disk chunks read are among the touched overlay chunks (${run.after.chunks})`,
      );
      t.ok(
        run.after.prefixBytes < 0.9 * run.before.prefixBytes,
        `in-order prefix before the first reply: ${run.before.prefixBytes} -> ${run.after.prefixBytes} bytes`,
      );
    }
    const p = await Overlay.open(out, { trusted: null });
    t.same(p.body.order, { kind: 'profile', runs: 2, rank: r.rank }, 'the manifest says how it was ordered');
    t.same(p.body.stats, orig.body.stats, 'same chunks, same kinds, same trimmed count: only the order changed');

    const synth = path.join(testRoot, 'synth-profiled');
    await applyOverlay({ overlay: out, base: 'ovbase', out: synth, verifyBase: false });
    for (const f of ['memory.raw', 'disk.raw', 'device.state']) {
      const [a, b] = await Promise.all([fsp.readFile(path.join(synth, f)), fsp.readFile(path.join(custom, f))]);
      t.ok(a.equals(b), `${f}: the profiled overlay still synthesizes the custom VM`);
    }
    t.same(
      (await fsp.readdir(testRoot)).filter((n) => n.includes('.work-') || n.includes('.tmp-')),
      [],
      'no work or temp directories left',
    );
    t.same(
      await leaks(
        r.runs.map((run) => run.domain),
        runDir(),
      ),
      NO_LEAKS,
      'no domains, QEMU processes, mounts or session directories left',
    );
  },
);

t.test('a failing customization script is a typed error with its output, and leaves nothing', async (t) => {
  const out = path.join(testRoot, 'failed');
  await t.rejects(
    createOverlay({ base: 'ovbase', out, script: 'echo about to fail; exit 7' }),
    { code: 'VMS_CUSTOMIZE_FAILED', details: { status: 7, outputTail: /about to fail/ } },
    "the error carries the script's status and output",
  );
  t.same(
    (await fsp.readdir(testRoot)).filter((n) => n.startsWith('failed')),
    [],
    'no partial overlay, no work directory',
  );
  t.same(await leaks([], runDir()), NO_LEAKS);
});
