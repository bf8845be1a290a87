/**
 * Accelerator choice given a /proc/cpuinfo text: KVM only when the CPU has
 * vmx or svm and /dev/kvm is usable, TCG otherwise, VMSYNTH_ACCEL forcing
 * either; and requireAccel refusing a base captured under the other one.
 * The host is never probed: detection runs on fixed texts, and the tests of
 * detectAccel/requireAccel force the accelerator through VMSYNTH_ACCEL.
 */
import t from 'tap';
import diagnostics from 'node:diagnostics_channel';
import { chooseAccel, cpuVirtFlag, detectAccel, requireAccel, type Accel } from '../../lib/vm/accel.js';

/** One /proc/cpuinfo processor block, as Linux prints it. */
function cpu(n: number, vendor: string, model: string, flags: string): string {
  return [
    `processor\t: ${n}`,
    `vendor_id\t: ${vendor}`,
    `model name\t: ${model}`,
    `physical id\t: 0`,
    `core id\t\t: ${n}`,
    `fpu\t\t: yes`,
    `cpuid level\t: 13`,
    `flags\t\t: ${flags}`,
    `bogomips\t: 4192.00`,
    `clflush size\t: 64`,
    `power management:`,
    '',
  ].join('\n');
}

const INTEL_FLAGS =
  'fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx ' +
  'pdpe1gb rdtscp lm constant_tsc arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor ' +
  'ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c ' +
  'rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb invpcid_single pti intel_ppin ssbd ibrs ibpb stibp tpr_shadow flexpriority ept vpid ' +
  'ept_ad fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm cqm mpx rdt_a avx512f avx512dq rdseed adx smap clflushopt clwb';
const AMD_FLAGS =
  'fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt ' +
  'pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf rapl pni pclmulqdq monitor ssse3 fma cx16 sse4_1 ' +
  'sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch ' +
  'osvw ibs skinit wdt tce topoext perfctr_core perfctr_nb bpext perfctr_llc mwaitx cpb cat_l3 cdp_l3 hw_pstate ssbd mba ibrs ibpb stibp ' +
  'vmmcall fsgsbase bmi1 avx2 smep bmi2 erms invpcid cqm rdt_a rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves ' +
  'npt lbrv svm_lock nrip_save tsc_scale vmcb_clean flushbyasid decodeassists pausefilter pfthreshold avic v_vmsave_vmload vgif';
/** A guest vCPU of a cloud VM (this test host's own line): AMD without svm, though it names vmmcall and the hypervisor flag. */
const GUEST_FLAGS =
  'fpu vme de pse tsc msr pae mce cx8 apic sep pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext lm ' +
  'constant_tsc rep_good nopl xtopology tsc_reliable nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 sse4_1 ' +
  'sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cr8_legacy misalignsse 3dnowprefetch ' +
  'topoext pti        vmmcall bmi1 avx2 bmi2 erms avx512f avx512dq adx avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl ' +
  'xsaveopt xsavec xgetbv1 avx_vnni avx512_bf16 clzero xsaveerptr arat avx512vbmi avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni';

const INTEL = cpu(0, 'GenuineIntel', 'Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz', INTEL_FLAGS);
const AMD = cpu(0, 'AuthenticAMD', 'AMD EPYC 7502P 32-Core Processor', AMD_FLAGS);
const GUEST = cpu(0, 'AuthenticAMD', 'AMD EPYC', GUEST_FLAGS);
const multi = (flags: string, n: number) =>
  Array.from({ length: n }, (_, i) => cpu(i, 'GenuineIntel', 'Intel(R) Xeon(R)', flags)).join('\n');

const detect = (cpuinfo: string, kvmUsable: boolean) => chooseAccel({ forced: undefined, cpuinfo, kvmUsable }).accel;

t.test('the CPU flag: vmx on Intel, svm on AMD, none on a guest vCPU or without a flags line', async (t) => {
  t.equal(cpuVirtFlag(INTEL), 'vmx');
  t.equal(cpuVirtFlag(AMD), 'svm');
  t.equal(cpuVirtFlag(GUEST), null, 'vmmcall and hypervisor are not svm');
  t.equal(cpuVirtFlag(''), null, 'an unreadable cpuinfo');
  t.equal(cpuVirtFlag(cpu(0, 'ARM', 'Cortex', 'vmx').replace('flags', 'Features')), null, 'only a "flags" line counts');
  t.equal(cpuVirtFlag(cpu(0, 'GenuineIntel', 'Xeon', 'fpu vmxon sse')), null, 'a whole flag, not a prefix');
});

t.test('KVM when the CPU has vmx or svm and /dev/kvm is usable', async (t) => {
  t.same(detect(INTEL, true), 'kvm');
  t.same(detect(AMD, true), 'kvm');
  t.same(detect(multi(INTEL_FLAGS, 8), true), 'kvm', 'an eight-CPU cpuinfo');
});

t.test('TCG when the CPU has vmx/svm but /dev/kvm is not usable', async (t) => {
  t.equal(detect(INTEL, false), 'tcg');
  t.equal(detect(AMD, false), 'tcg');
});

t.test('TCG when the CPU has neither flag, whatever /dev/kvm says (e.g. kvm_pvm)', async (t) => {
  t.equal(detect(GUEST, true), 'tcg');
  t.equal(detect(GUEST, false), 'tcg');
  t.equal(detect(multi(GUEST_FLAGS, 4), true), 'tcg', 'a four-CPU cpuinfo');
  t.equal(detect('', true), 'tcg', 'no cpuinfo at all');
});

t.test('a multi-CPU cpuinfo is decided by its first CPU', async (t) => {
  t.equal(detect(`${INTEL}\n${cpu(1, 'GenuineIntel', 'Xeon', GUEST_FLAGS)}`, true), 'kvm');
  t.equal(detect(`${GUEST}\n${cpu(1, 'GenuineIntel', 'Xeon', INTEL_FLAGS)}`, true), 'tcg');
});

t.test('VMSYNTH_ACCEL=kvm|tcg forces the choice; empty means detect', async (t) => {
  for (const forced of ['kvm', 'tcg'] as const) {
    for (const [cpuinfo, kvmUsable] of [
      [INTEL, true],
      [GUEST, false],
      ['', false],
    ] as const) {
      t.same(chooseAccel({ forced, cpuinfo, kvmUsable }), { accel: forced, reason: 'VMSYNTH_ACCEL' });
    }
  }
  t.equal(chooseAccel({ forced: '', cpuinfo: INTEL, kvmUsable: true }).accel, 'kvm');
  t.equal(chooseAccel({ forced: '', cpuinfo: GUEST, kvmUsable: true }).accel, 'tcg');
  t.not(chooseAccel({ forced: '', cpuinfo: INTEL, kvmUsable: true }).reason, 'VMSYNTH_ACCEL');
});

t.test('a bad VMSYNTH_ACCEL is VMS_USAGE naming the variable and its value', async (t) => {
  for (const forced of ['KVM', 'hvf', ' kvm', 'kvm,tcg']) {
    t.throws(
      () => chooseAccel({ forced, cpuinfo: INTEL, kvmUsable: true }),
      {
        code: 'VMS_USAGE',
        details: { variable: 'VMSYNTH_ACCEL', value: forced, allowed: ['kvm', 'tcg'] },
      },
      JSON.stringify(forced),
    );
  }
});

/** Runs fn with VMSYNTH_ACCEL set to `value`, restoring the variable (or its absence) after. */
async function withAccelEnv<T>(value: string, fn: () => Promise<T>): Promise<T> {
  const had = Object.prototype.hasOwnProperty.call(process.env, 'VMSYNTH_ACCEL');
  const before = process.env.VMSYNTH_ACCEL;
  process.env.VMSYNTH_ACCEL = value;
  try {
    return await fn();
  } finally {
    if (had) process.env.VMSYNTH_ACCEL = before;
    else delete process.env.VMSYNTH_ACCEL;
  }
}

const base = (accel: Accel) => ({ name: 'b1', manifest: { vm: { accel } } });

t.test('detectAccel honours VMSYNTH_ACCEL and publishes its choice', async (t) => {
  const seen: unknown[] = [];
  const onAccel = (m: unknown) => seen.push(m);
  diagnostics.subscribe('vmsynth:vm:accel', onAccel);
  t.teardown(() => diagnostics.unsubscribe('vmsynth:vm:accel', onAccel));
  t.same(await withAccelEnv('tcg', detectAccel), { accel: 'tcg', reason: 'VMSYNTH_ACCEL' });
  t.same(await withAccelEnv('kvm', detectAccel), { accel: 'kvm', reason: 'VMSYNTH_ACCEL' });
  t.same(seen, [
    { accel: 'tcg', reason: 'VMSYNTH_ACCEL' },
    { accel: 'kvm', reason: 'VMSYNTH_ACCEL' },
  ]);
  await t.rejects(withAccelEnv('qemu', detectAccel), {
    code: 'VMS_USAGE',
    details: { variable: 'VMSYNTH_ACCEL', value: 'qemu' },
  });
});

t.test("requireAccel: the base's accelerator passes, the other is VMS_ACCEL_MISMATCH", async (t) => {
  t.equal(await withAccelEnv('tcg', () => requireAccel(base('tcg'))), 'tcg');
  t.equal(await withAccelEnv('kvm', () => requireAccel(base('kvm'))), 'kvm');
  await t.rejects(
    withAccelEnv('tcg', () => requireAccel(base('kvm'))),
    { code: 'VMS_ACCEL_MISMATCH' },
  );
  await t.rejects(
    withAccelEnv('kvm', () => requireAccel(base('tcg'))),
    { code: 'VMS_ACCEL_MISMATCH' },
  );
  await t.rejects(
    withAccelEnv('bogus', () => requireAccel(base('tcg'))),
    { code: 'VMS_USAGE' },
    'a bad variable is not a mismatch',
  );
});
