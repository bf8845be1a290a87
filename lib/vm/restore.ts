/**
 * Restoring a VM: the one way vmsynth resumes a saved VM, whatever its images
 * are. Given a base (the machine: kernel, CPU, devices), memory and disk
 * images and a device state, it starts a transient domain waiting for
 * incoming state, loads the device state, and returns once the VM runs.
 * `vmsynth base resume`, synthesis, customization and a handoff's target all
 * restore through here; the target starts the domain ahead (prepareRestore)
 * and loads the device state once the source stops.
 *
 * The disk image is never written: guest writes go to a local qcow2 layer
 * created over it. The memory image is mapped share=off (writes stay in
 * QEMU's private memory; over FUSE, page faults become reads) or share=on
 * (the file is the VM's memory, as a customization needs), or is anonymous
 * and loaded with the state (a classic restore). Everything it
 * starts is registered with the caller's scope, so the domain is destroyed
 * however the caller ends.
 */
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { exec } from '../core/exec.js';
import { freePort } from '../core/net.js';
import { throwIfAborted, type Scope } from '../core/scope.js';
import { AGENT_GUEST_PORT } from './agent.js';
import { guestNet } from './guest-netns.js';
import type { Base } from './base.js';
import { hasGenid } from './base-manifest.js';
import type { VmSpec } from './domain-xml.js';
import type { Libvirt } from './libvirt.js';
import { adoptVm, explainFailure, startVm, type RunningVm } from './machine.js';
import { loadState } from './migration.js';
import type { RunDir } from './run-dir.js';

export interface RestoreOptions {
  /** The base whose machine the state was saved on. */
  base: Base;
  /** The VM's run directory: domain name, sockets, console log. */
  run: RunDir;
  /**
   * Guest RAM: the image and whether guest writes reach it (share=on) or stay
   * private; path null: anonymous RAM, loaded from a device state that
   * carries it (a classic full restore, the benchmark's baseline).
   */
  memory: { path: string | null; share: boolean };
  /**
   * The disk image the guest reads (raw; never written), and where its qcow2
   * layer goes (default: the run directory). `discard` passes the guest's
   * TRIMs to the layer, so trimmed blocks show as zero clusters.
   */
  disk: { path: string; layer?: string; discard?: boolean };
  /** The saved device state: a file, or its bytes (written into the run directory). */
  deviceState: string | Uint8Array;
  /** The state is the devices alone, without a configuration section (QMP xen-save-devices-state). */
  devicesOnly?: boolean;
  /**
   * The VM generation ID to resume with, for a VM that goes on (a handoff: it
   * is the same VM, not a clone). Default: a fresh one, if the base has the device.
   */
  genid?: string;
  /** The app's port in the guest (default: the base's). */
  appPort?: number;
  /** Forward a host port to the guest's customization agent too. */
  agent?: boolean;
  signal?: AbortSignal;
  /** Called once the domain exists, before its state loads (a watchdog, say). */
  onStarted?: (vm: RunningVm) => void;
}

export interface RestoredVm extends RunningVm {
  /** Host port forwarded to the app's port in the guest. */
  hostPort: number;
  /** With `agent`: the host port forwarded to the customization agent. */
  agentPort: number | null;
  /** The qcow2 layer holding the guest's disk writes. */
  diskLayer: string;
}

/**
 * The VmSpec that restores a base's saved state: the base's machine, kernel and
 * NIC, waiting for incoming state, with the given disk, RAM and host port.
 */
export function restoreSpec(
  base: Base,
  run: RunDir,
  at: {
    disk: VmSpec['disk'];
    memory: VmSpec['memory'];
    hostPort: number;
    appPort?: number;
    agent?: VmSpec['net']['agent'];
    devicesOnly?: boolean;
    genid?: string;
  },
): VmSpec {
  const m = base.manifest;
  return {
    name: run.domainName,
    accel: m.vm.accel,
    machine: m.vm.machine,
    vcpus: m.vm.vcpus,
    memoryMiB: m.vm.memoryMiB,
    kernel: base.file('kernel'),
    initrd: base.file('initrd'),
    cmdline: m.vm.cmdline,
    disk: at.disk,
    memory: at.memory,
    qmpSocket: run.file('qmp.sock'),
    consoleLog: run.file('console.log'),
    net: {
      mac: m.vm.mac,
      hostPort: at.hostPort,
      guestPort: at.appPort ?? m.vm.appPort,
      ...(at.agent ? { agent: at.agent } : {}),
    },
    incoming: true,
    ...(at.devicesOnly ? { devicesOnly: true } : {}),
    ...(hasGenid(m) ? { genid: at.genid ?? randomUUID() } : {}),
    owner: { ...run.owner, sessionDir: run.dir },
  };
}

/** Restores a VM from the given images and device state; resolves when it runs. */
export async function restoreVm(lv: Libvirt, opts: RestoreOptions, scope: Scope): Promise<RestoredVm> {
  return (await prepareRestore(lv, opts, scope)).load(opts.deviceState);
}

/** A domain started and waiting for its device state (prepareRestore). */
export interface PendingRestore {
  /** Loads the device state and continues the VM; resolves when it runs. */
  load(deviceState: string | Uint8Array): Promise<RestoredVm>;
}

/**
 * Starts the domain, waiting for incoming state, and stops there: the device
 * state comes with load(). QEMU reads no guest RAM before the state loads, so
 * the images may still change until then (a handoff's last pass).
 */
export async function prepareRestore(
  lv: Libvirt,
  opts: Omit<RestoreOptions, 'deviceState'>,
  scope: Scope,
): Promise<PendingRestore> {
  const { base, run } = opts;
  const layer = opts.disk.layer ?? run.file('disk.qcow2');
  if (opts.disk.layer) scope.defer(`remove ${layer}`, () => fsp.rm(layer, { force: true }), { lasting: true });
  // -u: do not open the backing file now (over FUSE, that would read this process's own mount).
  await exec('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-u',
    '-b',
    opts.disk.path,
    '-F',
    'raw',
    layer,
    String(base.manifest.disk.bytes),
  ]);
  // (A process in another network namespace than QEMU's picks the ports in QEMU's: guest-netns.ts.)
  const gn = await guestNet();
  const port = () => (gn ? gn.freePort() : freePort());
  const hostPort = await port();
  const agentPort = opts.agent ? await port() : null;
  const spec = restoreSpec(base, run, {
    disk: { path: layer, format: 'qcow2', ...(opts.disk.discard ? { discard: true } : {}) },
    memory: opts.memory,
    hostPort,
    appPort: opts.appPort,
    ...(agentPort ? { agent: { hostPort: agentPort, guestPort: AGENT_GUEST_PORT } } : {}),
    ...(opts.devicesOnly ? { devicesOnly: true } : {}),
    ...(opts.genid ? { genid: opts.genid } : {}),
  });
  throwIfAborted(opts.signal);
  const vm = await startVm(lv, spec, scope, { signal: opts.signal });
  opts.onStarted?.(vm);
  return {
    async load(deviceState) {
      let state = deviceState;
      if (typeof state !== 'string') {
        await fsp.writeFile(run.file('device.state'), state);
        state = run.file('device.state');
      }
      try {
        await loadState(vm.qmp, state, run.file('incoming.sock'), {
          ignoreShared: opts.memory.path !== null,
          signal: opts.signal,
        });
      } catch (err) {
        throw await explainFailure(err, vm);
      }
      return { ...vm, hostPort, agentPort, diskLayer: layer };
    },
  };
}

/**
 * Takes over a VM restoreVm started in another process (a session a previous server left to its
 * keeper): the same spec, a new QMP connection, the same teardown.
 */
export async function adoptRestored(
  lv: Libvirt,
  opts: { base: Base; run: RunDir; memory: string; disk: string; hostPort: number; appPort?: number },
  scope: Scope,
): Promise<RestoredVm> {
  const layer = opts.run.file('disk.qcow2');
  const spec = restoreSpec(opts.base, opts.run, {
    disk: { path: layer, format: 'qcow2' },
    memory: { path: opts.memory, share: false },
    hostPort: opts.hostPort,
    appPort: opts.appPort,
  });
  const vm = await adoptVm(lv, spec, scope);
  return { ...vm, hostPort: opts.hostPort, agentPort: null, diskLayer: layer };
}
