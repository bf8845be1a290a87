/**
 * End to end on the real stack: capture a base from the test guest under
 * libvirt, resume it with memory and disk served over FUSE, check what the
 * guest read, and check that nothing is left behind.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { runDir } from '../../lib/core/paths.js';
import { appDigest, diskPattern, hex64, workingSetPattern } from '../../lib/guest/patterns.js';
import { verifyBase } from '../../lib/vm/base.js';
import { resumeBase } from '../../lib/vm/base-resume.js';
import { guestRequest } from '../../lib/vm/guest-app.js';
import { guestBase } from '../helpers/guest-base.js';
import { ageSnapshot, CLOCK_TOLERANCE_MS, guestClockOffset } from '../helpers/guest-clock.js';
import { leaks, mountsUnder, NO_LEAKS, virshDomains } from '../helpers/leaks.js';

t.teardown(removeTestRoot);

const { base } = await guestBase('e2e');

t.test('the captured base verifies and records what QEMU needs to resume it', async (t) => {
  const r = await verifyBase(base);
  t.same(Object.keys(r.files).sort(), ['device.state', 'disk.raw', 'initrd.img', 'memory.raw', 'vmlinuz']);
  const m = base.manifest;
  t.equal(m.chunkSize, 4096);
  t.equal(m.memory.bytes, m.vm.memoryMiB * 1024 * 1024);
  t.match(m.vm.machine, /^pc-q35-/, 'the expanded machine type, not the alias');
  t.ok(m.deviceState.bytes < 2 * 1024 * 1024, `device state is small without RAM (${m.deviceState.bytes} bytes)`);
  t.same(
    await fsp.readdir(path.join(testRoot, 'bases')).then((d) => d.filter((n) => n.startsWith('.'))),
    [],
    'no temp dirs',
  );
});

t.test(
  'resume over FUSE: the app answers with the captured bytes, in virsh list while running, nothing leaked after',
  async (t) => {
    let seenInVirsh = false;
    let mountsWhileRunning: string[] = [];
    let clockOffset = NaN;
    await ageSnapshot(Date.parse(base.manifest.created.at), 5000);
    const r = await resumeBase({
      base: 'e2e',
      work: { memMb: 8, diskMb: 4, diskOffMb: 2 },
      whileRunning: async ({ vm, hostPort }) => {
        seenInVirsh = (await virshDomains()).includes(vm.spec.name);
        mountsWhileRunning = await mountsUnder(runDir());
        clockOffset = await guestClockOffset(async () => (await guestRequest(hostPort, 'GET', '/info', 10_000)).body);
      },
    });
    t.ok(seenInVirsh, `${r.domain} is listed by virsh while it runs`);
    t.equal(mountsWhileRunning.length, 1, 'one FUSE mount while running');
    t.equal(
      r.reply.memDigest,
      hex64(appDigest(workingSetPattern(8 << 20))),
      'guest memory after resume holds the captured working set',
    );
    t.equal(
      r.reply.diskDigest,
      hex64(appDigest(diskPattern(6 << 20).subarray(2 << 20))),
      'guest disk reads return the base disk bytes',
    );
    t.ok(r.fuseBeforeFirstResponse.memory.bytesRead > 0, 'memory pages came through FUSE');
    t.ok(r.fuseBeforeFirstResponse.memory.bytesRead < r.memoryBytes, 'and not all of them: demand paging');
    t.ok(r.fuseBeforeFirstResponse.disk.bytesRead >= 4 << 20, 'the disk reads came through FUSE');
    t.ok(r.resumeMs <= r.firstResponseMs);
    t.ok(
      Math.abs(clockOffset) <= CLOCK_TOLERANCE_MS,
      `the guest's clock is the host's to within the RTC's half second, not its snapshot's 5 s or more ago (off by ${Math.round(clockOffset)} ms)`,
    );
    t.same(await leaks([r.domain], runDir()), NO_LEAKS);
    await verifyBase(base); // guest writes never reach the base files
  },
);
