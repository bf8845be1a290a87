/**
 * `vmsynth base resume`: a base VM resumed with its memory and disk served
 * over FUSE (every chunk from the base), the app's first request answered —
 * the path early-start synthesis is built on, and the floor it is measured
 * against. With `trace`, the order of first touches (access-order profiles).
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
import { withScope, type Scope } from '../core/scope.js';
import { ChunkMap, ChunkSource } from '../fs/chunk-map.js';
import { ImageMount, checkFuseDevice } from '../fs/fuse-images.js';
import { fileReader, ImageFile, type ImageStats, type TouchTrace } from '../fs/image.js';
import { TouchLog, type Touch } from '../fs/touch-log.js';
import { requireAccel, type Accel } from './accel.js';
import { loadBase, verifyBase, type Base } from './base.js';
import { waitForApp, workPath, type AppReply, type AppRequest, type AppWork } from './guest-app.js';
import { cleanStale } from './janitor.js';
import { Libvirt } from './libvirt.js';
import { explainFailure, type RunningVm } from './machine.js';
import { restoreVm } from './restore.js';
import { RunDir } from './run-dir.js';

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
  run: RunDir;
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
async function baseImage(
  name: string,
  file: string,
  bytes: number,
  scope: Scope,
  trace?: TouchTrace,
): Promise<ImageFile> {
  const handle: FileHandle = await fsp.open(file, 'r');
  scope.defer(`close ${file}`, () => handle.close());
  return new ImageFile(
    name,
    new ChunkMap(bytes, undefined, ChunkSource.BASE),
    { [ChunkSource.BASE]: fileReader(handle, file) },
    trace,
  );
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
    const run = await RunDir.create(scope);
    const t0 = performance.now();

    const log = opts.trace ? new TouchLog() : undefined;
    const memory = await baseImage('memory.img', base.file('memory'), m.memory.bytes, scope, log && { log, image: 0 });
    const disk = await baseImage('disk.img', base.file('disk'), m.disk.bytes, scope, log && { log, image: 1 });
    const mount = await ImageMount.mount(run.file('mnt'), [memory, disk], { fuseDevice: opts.fuseDevice });
    scope.defer(`unmount ${mount.mountpoint}`, () => mount.unmount());

    const vm = await restoreVm(
      lv,
      {
        base,
        run,
        memory: { path: mount.path('memory.img'), share: false },
        disk: { path: mount.path('disk.img') },
        deviceState: base.file('deviceState'),
        agent: opts.agent,
        signal: opts.signal,
      },
      scope,
    );
    const resumeMs = performance.now() - t0;
    publish('domainRunning', { name: vm.spec.name, ms: resumeMs, genid: vm.spec.genid ?? null });
    const remaining = Math.max(1000, (opts.timeoutMs ?? 60_000) - resumeMs);
    const { hostPort, agentPort } = vm;
    const { reply } = await waitForApp(hostPort, {
      timeoutMs: remaining,
      signal: opts.signal,
      alive: vm.alive,
      consoleLog: vm.spec.consoleLog,
      path: opts.request?.path ?? workPath(opts.work),
      request: opts.request,
    }).catch(async (err: unknown) => {
      throw await explainFailure(err, vm);
    });
    const firstResponseMs = performance.now() - t0;
    const before = { memory: { ...memory.stats }, disk: { ...disk.stats } };
    const touchesBefore = log?.length ?? 0;

    if (opts.whileRunning) await opts.whileRunning({ vm, run, hostPort, agentPort, images: { memory, disk } });

    return {
      base: base.name,
      domain: vm.spec.name,
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
