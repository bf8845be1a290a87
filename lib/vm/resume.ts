/**
 * Resuming a base VM with its memory and disk served over FUSE — the path
 * early-start synthesis is built on.
 *
 * The memory image is mapped MAP_PRIVATE (memory-backend-file share=off), so
 * every guest page fault on a page not yet touched becomes a FUSE read, and
 * guest writes stay in QEMU's private memory. The disk is a local qcow2 layer
 * over the FUSE disk image, so guest writes stay local too. The base files
 * are only ever read.
 */
import type { FileHandle } from 'node:fs/promises';
import { promises as fsp } from 'node:fs';
import { publish } from '../core/diagnostics.js';
import { exec } from '../core/exec.js';
import { freePort } from '../core/net.js';
import { withScope, type Scope } from '../core/scope.js';
import { ChunkMap, ChunkSource } from '../fs/chunk-map.js';
import { ImageMount, checkFuseDevice } from '../fs/fuse-images.js';
import { fileReader, ImageFile, type ImageStats, type TouchTrace } from '../fs/image.js';
import { TouchLog, type Touch } from '../fs/touch-log.js';
import { requireAccel, type Accel } from './accel.js';
import { loadBase, verifyBase, type Base } from './base.js';
import type { VmSpec } from './domain-xml.js';
import { AGENT_GUEST_PORT } from './agent.js';
import { waitForApp, workPath, type AppReply, type AppRequest, type AppWork } from './guest-app.js';
import { cleanStale } from './janitor.js';
import { Libvirt } from './libvirt.js';
import { explainFailure, startVm, type RunningVm } from './machine.js';
import { loadState } from './migration.js';
import { Session } from './session.js';

export interface ResumeOptions {
  /** Base name or directory. */
  base: string;
  /** Re-hash the base files first (default true). */
  verify?: boolean;
  /** Work the first request asks of the test guest's app. */
  work?: AppWork;
  /** The first request, for an app other than the test guest's (overrides `work`). */
  request?: AppRequest;
  /** Forward a host port to the guest's customization agent too (ResumedVm.agentPort). */
  agent?: boolean;
  /** How long the app may take to answer after the resume starts. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** FUSE device to require (tests point it elsewhere). */
  fuseDevice?: string;
  /** Record the order in which chunks were first read (image 0 memory, 1 disk). */
  trace?: boolean;
  /** Called while the VM runs, after the first reply, before teardown. */
  whileRunning?: (vm: ResumedVm) => Promise<void>;
}

export interface ResumedVm {
  vm: RunningVm;
  session: Session;
  hostPort: number;
  /** With `agent`: the host port of the guest's customization agent. */
  agentPort: number | null;
  images: { memory: ImageFile; disk: ImageFile };
}

export interface ResumeResult {
  base: string;
  domain: string;
  accel: Accel;
  verifyMs: number | null;
  /** From the start of the resume (mount) to the VM running. */
  resumeMs: number;
  /** From the start of the resume to the app's first reply. */
  firstResponseMs: number;
  /** FUSE bytes (memory + disk) read before the first reply. */
  fuseBytesReadBeforeFirstResponse: number;
  fuseBeforeFirstResponse: { memory: ImageStats; disk: ImageStats };
  fuseTotal: { memory: ImageStats; disk: ImageStats };
  memoryBytes: number;
  diskBytes: number;
  deviceStateBytes: number;
  reply: AppReply['body'];
  /** With `trace`: first touches (image 0 memory, 1 disk) from the resume to the first reply, in order. */
  touchesBeforeFirstResponse?: Touch[];
}

/** Opens a base image read-only and serves it through a chunk map whose every chunk is BASE. */
async function baseImage(name: string, file: string, bytes: number, scope: Scope, trace?: TouchTrace): Promise<ImageFile> {
  const handle: FileHandle = await fsp.open(file, 'r');
  scope.defer(`close ${file}`, () => handle.close());
  return new ImageFile(name, new ChunkMap(bytes, undefined, ChunkSource.BASE), { [ChunkSource.BASE]: fileReader(handle, file) }, trace);
}

/**
 * The VmSpec that restores a base's saved state: the base's machine, kernel and
 * NIC, waiting for incoming state, with the given disk, RAM and host port.
 */
export function restoreSpec(base: Base, session: Session, at: { disk: VmSpec['disk']; memory: VmSpec['memory']; hostPort: number; agent?: VmSpec['net']['agent'] }): VmSpec {
  const m = base.manifest;
  return {
    name: session.domainName,
    accel: m.vm.accel,
    machine: m.vm.machine,
    vcpus: m.vm.vcpus,
    memoryMiB: m.vm.memoryMiB,
    kernel: base.file('kernel'),
    initrd: base.file('initrd'),
    cmdline: m.vm.cmdline,
    disk: at.disk,
    memory: at.memory,
    qmpSocket: session.file('qmp.sock'),
    consoleLog: session.file('console.log'),
    net: { mac: m.vm.mac, hostPort: at.hostPort, guestPort: m.vm.appPort, ...(at.agent ? { agent: at.agent } : {}) },
    incoming: true,
    owner: { ...session.owner, sessionDir: session.dir },
  };
}

export async function resumeBase(opts: ResumeOptions): Promise<ResumeResult> {
  const base: Base = await loadBase(opts.base);
  const m = base.manifest;
  let verifyMs: number | null = null;
  if (opts.verify ?? true) verifyMs = (await verifyBase(base, opts.signal)).ms;
  const accel = await requireAccel(base);
  await checkFuseDevice(opts.fuseDevice);

  return withScope(async (scope) => {
    const lv = await Libvirt.connect();
    scope.defer('close libvirt connection', () => lv.close());
    await cleanStale(lv);
    const session = await Session.create(scope);
    const t0 = performance.now();

    const log = opts.trace ? new TouchLog() : undefined;
    const memory = await baseImage('memory.img', base.file('memory'), m.memory.bytes, scope, log && { log, image: 0 });
    const disk = await baseImage('disk.img', base.file('disk'), m.disk.bytes, scope, log && { log, image: 1 });
    const mount = await ImageMount.mount(session.file('mnt'), [memory, disk], { fuseDevice: opts.fuseDevice });
    scope.defer(`unmount ${mount.mountpoint}`, () => mount.unmount());

    const qcow = session.file('disk.qcow2');
    // -u: do not open the backing file now (that would read our own FUSE mount).
    await exec('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', mount.path('disk.img'), '-F', 'raw', qcow, String(m.disk.bytes)]);

    const hostPort = await freePort();
    const agentPort = opts.agent ? await freePort() : null;
    const spec = restoreSpec(base, session, {
      disk: { path: qcow, format: 'qcow2' }, memory: { path: mount.path('memory.img'), share: false }, hostPort,
      ...(agentPort ? { agent: { hostPort: agentPort, guestPort: AGENT_GUEST_PORT } } : {}),
    });
    const vm = await startVm(lv, spec, scope, { signal: opts.signal });
    let resumeMs = 0;
    let reply: AppReply;
    try {
      await loadState(vm.qmp, base.file('deviceState'), session.file('incoming.sock'), { ignoreShared: true, signal: opts.signal });
      resumeMs = performance.now() - t0;
      publish('domainRunning', { name: spec.name, ms: resumeMs });
      const remaining = Math.max(1000, (opts.timeoutMs ?? 60_000) - resumeMs);
      ({ reply } = await waitForApp(hostPort, { timeoutMs: remaining, signal: opts.signal, alive: vm.alive, consoleLog: spec.consoleLog, path: opts.request?.path ?? workPath(opts.work), request: opts.request }));
    } catch (err) {
      throw await explainFailure(err, vm);
    }
    const firstResponseMs = performance.now() - t0;
    const before = { memory: { ...memory.stats }, disk: { ...disk.stats } };
    const touchesBefore = log?.length ?? 0;

    if (opts.whileRunning) await opts.whileRunning({ vm, session, hostPort, agentPort, images: { memory, disk } });

    return {
      base: base.name,
      domain: spec.name,
      accel,
      verifyMs,
      resumeMs: Math.round(resumeMs),
      firstResponseMs: Math.round(firstResponseMs),
      fuseBytesReadBeforeFirstResponse: before.memory.bytesRead + before.disk.bytesRead,
      fuseBeforeFirstResponse: before,
      fuseTotal: { memory: { ...memory.stats }, disk: { ...disk.stats } },
      memoryBytes: m.memory.bytes,
      diskBytes: m.disk.bytes,
      deviceStateBytes: m.deviceState.bytes,
      reply: reply.body,
      ...(log ? { touchesBeforeFirstResponse: log.slice(0, touchesBefore) } : {}),
    };
  });
}
