/** Builds the test guest (cached) and captures it as a base in this test file's base directory. */
import { buildGuest, type Guest } from '../../lib/guest/build.js';
import { createBase, type Base, type BaseSource } from '../../lib/vm/base.js';

export function guestSource(g: Guest): BaseSource {
  return {
    kernel: g.kernel,
    initrd: g.initrd,
    disk: g.disk,
    cmdline: g.cmdline,
    memoryMiB: g.memoryMiB,
    appPort: g.appPort,
    info: { kind: 'vmsynth-test-guest', guestKey: g.key },
  };
}

export async function guestBase(name: string): Promise<{ guest: Guest; base: Base }> {
  const guest = await buildGuest();
  const base = await createBase({ name, source: guestSource(guest) });
  return { guest, base };
}
