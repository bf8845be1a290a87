/**
 * Customizing a base VM into the custom VM an overlay is made from.
 *
 * The base is resumed on its own writable copy: RAM from a copy of the
 * base's memory image mapped share=on (so the file is the custom VM's
 * memory when it is saved), and a local qcow2 over the base disk with
 * discard=unmap (so blocks the guest trims become zero clusters, which
 * `qemu-img map` reports). Files are copied in and a script runs through the
 * guest's customization agent; once the app answers again, the guest drops
 * its page cache, and the VM is saved with x-ignore-shared. The custom disk
 * is converted to a raw image next to the memory image. The base itself is
 * only ever read.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { isErrorCode, VmsynthError } from '../core/errors.js';
import { exec } from '../core/exec.js';
import { PhaseTimer, withScope } from '../core/scope.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { requireAccel } from './accel.js';
import { AGENT_GUEST_PORT, agentExec, agentPut } from './agent.js';
import { loadBase, type Base } from './base.js';
import { waitForApp } from './guest-app.js';
import { cleanStale } from './janitor.js';
import { Libvirt } from './libvirt.js';
import { settleFreePages, type SettleResult } from './free-pages.js';
import { explainFailure } from './machine.js';
import { saveState } from './migration.js';
import { restoreVm } from './restore.js';
import { RunDir } from './run-dir.js';

export interface Copy {
  /** Host file. */
  src: string;
  /** Absolute path in the guest. */
  dest: string;
  mode?: number;
}

export interface CustomizeOptions {
  base: string;
  /** Shell script run in the guest with /bin/sh (after the copies). */
  script?: string;
  copies?: Copy[];
  /** Where the custom VM's memory.raw, disk.raw and device.state go (created; the caller removes it). */
  workDir: string;
  /** Drop the guest's page cache before saving (default true). */
  dropCaches?: boolean;
  /** Let free page reporting return free pages of every size before the save (default true; false: only 4 MiB blocks). */
  reportFreePages?: boolean;
  /** How long the script may run, and the app may take to answer after it. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface CustomVm {
  base: Base;
  /** The libvirt domain that ran the customization (gone when this returns). */
  domain: string;
  memory: string;
  disk: string;
  deviceState: string;
  /** Disk chunk ranges [start, end) the guest discarded. */
  trimmed: Array<[number, number]>;
  scriptOutput: string;
  /** Guest memory returned by free page reporting after the script (and drop_caches). */
  freePages: SettleResult;
  ms: { resume: number; script: number; save: number; total: number };
}

interface MapEntry {
  start: number;
  length: number;
  depth: number;
  zero: boolean;
  data: boolean;
}

/** Chunk ranges of a qcow2 layer (depth 0) that read as zeros without data: what the guest discarded. */
export function trimmedRanges(map: MapEntry[]): Array<[number, number]> {
  return map
    .filter((e) => e.depth === 0 && e.zero && !e.data)
    .map((e) => [Math.ceil(e.start / CHUNK_SIZE), Math.floor((e.start + e.length) / CHUNK_SIZE)] as [number, number])
    .filter(([s, e]) => e > s);
}

/**
 * The guest command run after the customization, before the save: drop the
 * page cache (optional), set the free page reporting order (0: report free
 * pages of every size; 10: only 4 MiB blocks, about what a stock kernel does
 * by default), and allocate and free 8 MiB, because reporting runs only when
 * the buddy allocator frees pages after the order changed.
 */
export function freeMemoryCommand(dropCaches: boolean, report: boolean): string {
  return [
    `echo ${report ? 0 : 10} > /sys/module/page_reporting/parameters/page_reporting_order`,
    'sync',
    ...(dropCaches ? ['echo 3 > /proc/sys/vm/drop_caches'] : []),
    'dd if=/dev/zero of=/dev/null bs=8M count=1 2>/dev/null',
  ].join('; ');
}

export async function customizeBase(opts: CustomizeOptions): Promise<CustomVm> {
  const base = await loadBase(opts.base);
  await requireAccel(base);
  const script = opts.script ?? '';
  for (const c of opts.copies ?? []) {
    if (!path.isAbsolute(c.dest))
      throw new VmsynthError('VMS_USAGE', `copy destination "${c.dest}" must be an absolute path in the guest`);
    if (!(await fsp.stat(c.src).catch(() => null))?.isFile())
      throw new VmsynthError('VMS_USAGE', `copy source ${c.src} is not a file`);
  }
  const timeoutMs = opts.timeoutMs ?? 300_000;
  const work = path.resolve(opts.workDir);
  await fsp.mkdir(work, { recursive: true });
  const out = {
    memory: path.join(work, 'memory.raw'),
    disk: path.join(work, 'disk.raw'),
    deviceState: path.join(work, 'device.state'),
  };

  return withScope(async (scope) => {
    const timer = new PhaseTimer<'resume' | 'script' | 'save'>();
    const lv = await Libvirt.connect();
    scope.defer('close libvirt connection', () => lv.close());
    await cleanStale(lv);
    const run = await RunDir.create(scope);
    publish('progress', { step: `customize: copying base "${base.name}" memory into ${work}` });
    await exec('cp', ['--sparse=always', '--reflink=auto', base.file('memory'), out.memory]);
    const vm = await restoreVm(
      lv,
      {
        base,
        run,
        memory: { path: out.memory, share: true },
        disk: { path: base.file('disk'), layer: path.join(work, 'disk.qcow2'), discard: true },
        deviceState: base.file('deviceState'),
        agent: true,
        signal: opts.signal,
      },
      scope,
    );
    const { hostPort, diskLayer: qcow } = vm;
    const agentPort = vm.agentPort!; // asked for with `agent`
    const consoleLog = vm.spec.consoleLog;
    let output = '';
    let freePages: SettleResult;
    try {
      await waitForApp(agentPort, {
        timeoutMs: 60_000,
        signal: opts.signal,
        alive: vm.alive,
        consoleLog,
        path: '/health',
      }).catch((err: unknown) => {
        if (!isErrorCode(err, 'VMS_GUEST_TIMEOUT')) throw err;
        throw new VmsynthError(
          'VMS_CUSTOMIZE_FAILED',
          `the guest agent (guest port ${AGENT_GUEST_PORT}) of base "${base.name}" never answered: customizing needs a base whose guest runs the vmsynth agent; a base captured from an older test guest does not (capture it again with \`vmsynth base create ${base.name} --force\`). ${(err as Error).message}`,
          { cause: err },
        );
      });
      timer.lap('resume');
      for (const c of opts.copies ?? []) {
        publish('progress', { step: `customize: copying ${c.src} to ${c.dest}` });
        await agentPut(agentPort, c.dest, await fsp.readFile(c.src), c.mode ?? 0o755, timeoutMs, opts.signal);
      }
      if (script) {
        publish('progress', { step: 'customize: running the script in the guest' });
        const r = await agentExec(agentPort, script, timeoutMs, opts.signal);
        output = r.output;
        if (r.status !== 0) {
          const tail = r.output.slice(-2000);
          throw new VmsynthError(
            'VMS_CUSTOMIZE_FAILED',
            `the customization script exited with status ${r.status}; its output ends:\n${tail}`,
            {
              details: { status: r.status, outputTail: tail },
            },
          );
        }
      }
      await waitForApp(hostPort, { timeoutMs, signal: opts.signal, alive: vm.alive, consoleLog });
      publish('progress', { step: 'customize: returning free guest memory' });
      await agentExec(
        agentPort,
        freeMemoryCommand(opts.dropCaches ?? true, opts.reportFreePages ?? true),
        60_000,
        opts.signal,
      );
      freePages = await settleFreePages(out.memory, { signal: opts.signal });
      timer.lap('script');
      publish('progress', { step: 'customize: saving the custom VM' });
      await saveState(vm.qmp, out.deviceState, run.file('migrate.sock'), { ignoreShared: true, signal: opts.signal });
    } catch (err) {
      throw await explainFailure(err, vm);
    }
    await vm.destroy();
    const map = JSON.parse(
      (await exec('qemu-img', ['map', '--output=json', '-f', 'qcow2', qcow])).stdout,
    ) as MapEntry[];
    await exec('qemu-img', ['convert', '-q', '-f', 'qcow2', '-O', 'raw', qcow, out.disk]);
    timer.lap('save');
    return {
      base,
      domain: vm.spec.name,
      ...out,
      trimmed: trimmedRanges(map),
      scriptOutput: output,
      freePages,
      ms: timer.ms(),
    };
  });
}
