/**
 * Starting a vmsynth VM: a transient libvirt domain from a VmSpec, plus the
 * private QMP connection to it. Everything started is registered with the
 * caller's scope, so the domain is destroyed however the caller ends.
 */
import { promises as fsp } from 'node:fs';
import { VmsynthError } from '../core/errors.js';
import type { Scope } from '../core/scope.js';
import { domainXml, type VmSpec } from './domain-xml.js';
import type { Libvirt } from './libvirt.js';
import { QmpClient } from './qmp.js';

export interface RunningVm {
  spec: VmSpec;
  qmp: QmpClient;
  /** True while the domain exists and is not shut off. */
  alive: () => Promise<boolean>;
  /** Destroys the domain now (the scope would do it at the end anyway). */
  destroy: () => Promise<void>;
}

export async function startVm(
  lv: Libvirt,
  spec: VmSpec,
  scope: Scope,
  opts: { signal?: AbortSignal } = {},
): Promise<RunningVm> {
  const destroy = destroyStep(lv, spec.name, scope);
  await fsp.rm(spec.qmpSocket, { force: true });
  await lv.create(domainXml(spec), spec.name);
  const alive = () => lv.isActive(spec.name);
  const qmp = await QmpClient.connect(spec.qmpSocket, { signal: opts.signal, alive }).catch(async (err: unknown) => {
    throw await explainFailure(err, { spec, alive });
  });
  scope.defer(`close QMP ${spec.qmpSocket}`, () => qmp.close());
  return { spec, qmp, alive, destroy };
}

/** Registers the domain's destruction (and its QEMU log's removal) with `scope`; returns it, to run sooner. */
function destroyStep(lv: Libvirt, name: string, scope: Scope): () => Promise<void> {
  let destroyed: Promise<void> | null = null;
  const destroy = () => (destroyed ??= lv.destroy(name).then(() => undefined));
  scope.defer(
    `destroy domain ${name}`,
    async () => {
      await destroy();
      await fsp.rm(qemuLogPath(name), { force: true });
    },
    { lasting: true },
  );
  return destroy;
}

/**
 * Takes over a running domain a previous vmsynth process started from `spec`: a new QMP
 * connection (the monitor socket accepts one client at a time, and the old one is gone), and the
 * same teardown steps startVm registers.
 */
export async function adoptVm(lv: Libvirt, spec: VmSpec, scope: Scope): Promise<RunningVm> {
  const destroy = destroyStep(lv, spec.name, scope);
  const alive = () => lv.isActive(spec.name);
  if (!(await alive())) throw new VmsynthError('VMS_QEMU_DIED', `domain ${spec.name} is not running`);
  const qmp = await QmpClient.connect(spec.qmpSocket, { alive });
  scope.defer(`close QMP ${spec.qmpSocket}`, () => qmp.close());
  return { spec, qmp, alive, destroy };
}

/**
 * Turns a failure while a VM was starting or running into the error a user
 * needs: when QEMU itself is gone, that is the story (VMS_QEMU_DIED, whatever
 * step noticed first), told with the tail of QEMU's log.
 */
export async function explainFailure(err: unknown, vm: Pick<RunningVm, 'spec' | 'alive'>): Promise<unknown> {
  if (!(err instanceof VmsynthError) || err.code === 'VMS_INTERRUPTED') return err;
  const died = err.code !== 'VMS_QEMU_DIED' && !(await vm.alive());
  const e = died
    ? new VmsynthError('VMS_QEMU_DIED', `QEMU exited underneath vmsynth (first noticed as: ${err.message})`, {
        cause: err,
        details: err.details,
      })
    : err;
  return withQemuLog(e, vm.spec.name);
}

/** Adds the tail of libvirt's QEMU log for the domain to an error's message. */
export async function withQemuLog(err: unknown, name: string): Promise<unknown> {
  if (!(err instanceof VmsynthError)) return err;
  const text = await fsp.readFile(qemuLogPath(name), 'utf8').catch(() => '');
  const tail = text.trim().split('\n').slice(-6).join('\n');
  if (!tail) return err;
  return new VmsynthError(err.code, `${err.message}\n--- QEMU log (${qemuLogPath(name)}) ---\n${tail}`, {
    cause: err.cause,
    details: err.details,
  });
}

/** libvirt's per-domain QEMU log (system mode). */
export function qemuLogPath(name: string): string {
  return `/var/log/libvirt/qemu/${name}.log`;
}
