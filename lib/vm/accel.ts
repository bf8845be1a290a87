/**
 * Which accelerator this host gives QEMU: KVM when the CPU has vmx/svm and
 * /dev/kvm is usable, TCG (software emulation) otherwise. Some hosts have a
 * /dev/kvm that cannot run a stock guest (no vmx/svm, e.g. kvm_pvm), so the
 * CPU flags decide, not the device alone. VMSYNTH_ACCEL=kvm|tcg overrides.
 * The rule itself (chooseAccel) is pure over those inputs; detectAccel reads the host.
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';

export type Accel = 'kvm' | 'tcg';

export interface AccelChoice {
  accel: Accel;
  reason: string;
}

export async function detectAccel(): Promise<AccelChoice> {
  const choice = await choose();
  publish('accel', { ...choice });
  return choice;
}

/** Gathers what chooseAccel needs from this host, reading /proc/cpuinfo and probing /dev/kvm only when the choice depends on them. */
async function choose(): Promise<AccelChoice> {
  const forced = process.env.VMSYNTH_ACCEL;
  if (forced !== undefined && forced !== '') return chooseAccel({ forced, cpuinfo: '', kvmUsable: false });
  const cpuinfo = await fsp.readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const kvmUsable =
    cpuVirtFlag(cpuinfo) !== null &&
    (await fsp.access('/dev/kvm', fsc.R_OK | fsc.W_OK).then(
      () => true,
      () => false,
    ));
  return chooseAccel({ forced, cpuinfo, kvmUsable });
}

/** The hardware virtualization flag of the first CPU in a /proc/cpuinfo text: vmx (Intel), svm (AMD) or null. */
export function cpuVirtFlag(cpuinfo: string): 'vmx' | 'svm' | null {
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1]?.split(/\s+/) ?? [];
  return flags.includes('vmx') ? 'vmx' : flags.includes('svm') ? 'svm' : null;
}

/**
 * The accelerator for a host, given its VMSYNTH_ACCEL (`forced`, unset or ''
 * to detect), its /proc/cpuinfo text and whether /dev/kvm is usable (read
 * and write). Pure; VMS_USAGE for a VMSYNTH_ACCEL other than kvm or tcg.
 */
export function chooseAccel(input: { forced: string | undefined; cpuinfo: string; kvmUsable: boolean }): AccelChoice {
  const { forced } = input;
  if (forced !== undefined && forced !== '') {
    if (forced !== 'kvm' && forced !== 'tcg') {
      throw new VmsynthError('VMS_USAGE', `VMSYNTH_ACCEL must be "kvm" or "tcg", got "${forced}"`, {
        details: { variable: 'VMSYNTH_ACCEL', value: forced, allowed: ['kvm', 'tcg'] },
      });
    }
    return { accel: forced, reason: 'VMSYNTH_ACCEL' };
  }
  const hw = cpuVirtFlag(input.cpuinfo);
  if (!hw) return { accel: 'tcg', reason: 'the CPU has no vmx/svm flag: QEMU software emulation (TCG)' };
  if (!input.kvmUsable)
    return { accel: 'tcg', reason: `the CPU has ${hw} but /dev/kvm is not usable: QEMU software emulation (TCG)` };
  return { accel: 'kvm', reason: `the CPU has ${hw} and /dev/kvm is usable: KVM` };
}

/** The host's accelerator, which must be the one `base` was captured under (VMS_ACCEL_MISMATCH otherwise). */
export async function requireAccel(base: { name: string; manifest: { vm: { accel: Accel } } }): Promise<Accel> {
  const { accel } = await detectAccel();
  const want = base.manifest.vm.accel;
  if (accel !== want)
    throw new VmsynthError(
      'VMS_ACCEL_MISMATCH',
      `base "${base.name}" was captured under ${want.toUpperCase()}, this host runs ${accel.toUpperCase()}`,
    );
  return accel;
}
