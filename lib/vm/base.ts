/**
 * Base VMs: capture, load, list and verify.
 *
 * A base directory holds disk.raw, memory.raw (guest RAM as a raw file),
 * device.state (the migration stream without RAM), the kernel and initrd it
 * booted, and manifest.json. Capture boots the guest with its RAM in a
 * shared file, waits for the app, and saves with x-ignore-shared, so the RAM
 * file is the memory image. A base is built in a temp directory and renamed
 * into place only when complete: a failed capture leaves nothing.
 */
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { isErrorCode, VmsynthError } from '../core/errors.js';
import { exec } from '../core/exec.js';
import { sha256File } from '../core/hash.js';
import { freePort } from '../core/net.js';
import { baseDir } from '../core/paths.js';
import { withScope } from '../core/scope.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { detectAccel } from './accel.js';
import { machineFromXml, type VmSpec } from './domain-xml.js';
import { waitForApp } from './guest-app.js';
import { cleanStale } from './janitor.js';
import { Libvirt } from './libvirt.js';
import { startVm } from './machine.js';
import { settleFreePages } from './free-pages.js';
import { saveState } from './migration.js';
import { BASE_FORMAT, parseBaseManifest, VMGENID_DEVICE, type BaseFile, type BaseManifest } from './base-manifest.js';
import { RunDir } from './run-dir.js';
import { VMSYNTH_VERSION } from '../core/version.js';

export const BASE_MAC = '52:54:00:76:6d:01';
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export interface Base {
  name: string;
  dir: string;
  manifest: BaseManifest;
  file(key: 'disk' | 'memory' | 'deviceState' | 'kernel' | 'initrd'): string;
}

export interface BaseSource {
  kernel: string;
  initrd: string;
  disk: string;
  cmdline: string;
  memoryMiB: number;
  appPort: number;
  /** Recorded in the manifest (e.g. the test guest's build key). */
  info?: Record<string, unknown>;
}

export interface CreateBaseOptions {
  name: string;
  source: BaseSource;
  vcpus?: number;
  /** How long the guest may take to boot and answer. */
  timeoutMs?: number;
  force?: boolean;
  signal?: AbortSignal;
}

export function checkBaseName(name: string): void {
  if (!NAME_RE.test(name)) {
    throw new VmsynthError(
      'VMS_USAGE',
      `invalid base name "${name}": use 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit`,
    );
  }
}

function fileOf(dir: string, m: BaseManifest, key: 'disk' | 'memory' | 'deviceState' | 'kernel' | 'initrd'): string {
  return path.join(dir, m[key].file);
}

async function describe(file: string, name: string, signal?: AbortSignal): Promise<BaseFile> {
  const st = await fsp.stat(file);
  return { file: name, bytes: st.size, sha256: await sha256File(file, signal) };
}

async function requireFile(file: string, what: string): Promise<void> {
  const st = await fsp.stat(file).catch(() => null);
  if (!st?.isFile()) throw new VmsynthError('VMS_USAGE', `${what} ${file} does not exist or is not a file`);
}

/** Boots a guest, waits for its app, and captures it as a base VM. */
export async function createBase(opts: CreateBaseOptions): Promise<Base> {
  checkBaseName(opts.name);
  const { source } = opts;
  await requireFile(source.kernel, 'kernel');
  await requireFile(source.initrd, 'initrd');
  await requireFile(source.disk, 'disk');
  const root = baseDir();
  const final = path.join(root, opts.name);
  if (!opts.force && (await fsp.stat(final).catch(() => null))) {
    throw new VmsynthError('VMS_BASE_EXISTS', `base "${opts.name}" already exists in ${root}`);
  }
  await fsp.mkdir(root, { recursive: true });
  const { accel, reason } = await detectAccel();

  return withScope(async (scope) => {
    const tmp = path.join(root, `.${opts.name}.tmp-${process.pid}`);
    await fsp.rm(tmp, { recursive: true, force: true });
    await fsp.mkdir(tmp);
    scope.defer(`remove ${tmp}`, () => fsp.rm(tmp, { recursive: true, force: true }));

    publish('progress', { step: `copying the guest into ${tmp}` });
    await fsp.copyFile(source.kernel, path.join(tmp, 'vmlinuz'));
    await fsp.copyFile(source.initrd, path.join(tmp, 'initrd.img'));
    await exec('cp', ['--sparse=always', source.disk, path.join(tmp, 'disk.raw')], { code: 'VMS_USAGE' });
    const memoryBytes = source.memoryMiB * 1024 * 1024;
    const memFile = path.join(tmp, 'memory.raw');
    await fsp.writeFile(memFile, '');
    await fsp.truncate(memFile, memoryBytes);

    const lv = await Libvirt.connect();
    scope.defer('close libvirt connection', () => lv.close());
    await cleanStale(lv);
    const run = await RunDir.create(scope);
    const spec: VmSpec = {
      name: run.domainName,
      accel,
      machine: 'q35',
      vcpus: opts.vcpus ?? 1,
      memoryMiB: source.memoryMiB,
      kernel: path.join(tmp, 'vmlinuz'),
      initrd: path.join(tmp, 'initrd.img'),
      cmdline: source.cmdline,
      disk: { path: path.join(tmp, 'disk.raw'), format: 'raw' },
      memory: { path: memFile, share: true },
      qmpSocket: run.file('qmp.sock'),
      consoleLog: run.file('console.log'),
      net: { mac: BASE_MAC, hostPort: await freePort(), guestPort: source.appPort },
      incoming: false,
      genid: randomUUID(),
      owner: { ...run.owner, sessionDir: run.dir },
    };
    publish('progress', { step: `booting ${spec.name} under ${accel.toUpperCase()} (${reason})` });
    const booted = Date.now();
    const vm = await startVm(lv, spec, scope, { signal: opts.signal });
    await waitForApp(spec.net.hostPort, {
      timeoutMs: opts.timeoutMs ?? 180_000,
      signal: opts.signal,
      alive: vm.alive,
      consoleLog: spec.consoleLog,
    });
    const bootMs = Date.now() - booted;
    publish('progress', { step: 'waiting for the guest to report its free pages' });
    await settleFreePages(memFile, { signal: opts.signal });
    const machine = machineFromXml(await lv.xmlDesc(spec.name)) ?? spec.machine;
    publish('progress', { step: `guest app answered after ${bootMs} ms; saving device state` });
    await saveState(vm.qmp, path.join(tmp, 'device.state'), run.file('migrate.sock'), {
      ignoreShared: true,
      signal: opts.signal,
    });
    await vm.destroy();

    publish('progress', { step: 'hashing disk and memory' });
    const qemu =
      (await exec('qemu-system-x86_64', ['--version']).catch(() => ({ stdout: 'unknown' }))).stdout.split('\n')[0] ??
      'unknown';
    const manifest: BaseManifest = {
      format: BASE_FORMAT,
      name: opts.name,
      chunkSize: CHUNK_SIZE,
      disk: await describe(path.join(tmp, 'disk.raw'), 'disk.raw', opts.signal),
      memory: await describe(memFile, 'memory.raw', opts.signal),
      deviceState: await describe(path.join(tmp, 'device.state'), 'device.state', opts.signal),
      kernel: await describe(path.join(tmp, 'vmlinuz'), 'vmlinuz', opts.signal),
      initrd: await describe(path.join(tmp, 'initrd.img'), 'initrd.img', opts.signal),
      vm: {
        accel,
        cpu: accel === 'kvm' ? 'host-passthrough' : 'maximum',
        machine,
        vcpus: spec.vcpus,
        memoryMiB: spec.memoryMiB,
        cmdline: spec.cmdline,
        mac: BASE_MAC,
        appPort: source.appPort,
        devices: [
          'virtio-blk-pci:vda',
          'virtio-net-pci:user',
          'serial:file',
          'virtio-balloon-pci:free-page-reporting',
          VMGENID_DEVICE,
        ],
      },
      created: {
        at: new Date().toISOString(),
        host: os.hostname(),
        qemu,
        vmsynth: VMSYNTH_VERSION,
        source: source.info ?? {},
        bootMs,
      },
    };
    await fsp.writeFile(path.join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
    if (opts.force) await fsp.rm(final, { recursive: true, force: true });
    await fsp.rename(tmp, final);
    return baseFrom(final, manifest);
  });
}

/**
 * The base `name`, captured from `source` unless it already was: a base whose
 * manifest records the same source.info.guestKey is reused as it is.
 */
export async function ensureBase(
  name: string,
  source: BaseSource,
  signal?: AbortSignal,
): Promise<{ base: Base; created: boolean; ms: number | null }> {
  const want = source.info?.guestKey;
  try {
    const base = await loadBase(name);
    if (want !== undefined && base.manifest.created.source.guestKey === want) return { base, created: false, ms: null };
    publish('progress', { step: `base "${name}" is from another guest build; capturing it again` });
  } catch (err) {
    if (!isErrorCode(err, 'VMS_BASE_NOT_FOUND'))
      publish('progress', { step: `base "${name}" is unusable (${(err as Error).message}); capturing it again` });
  }
  const t0 = Date.now();
  const base = await createBase({ name, source, force: true, signal });
  return { base, created: true, ms: Date.now() - t0 };
}

function baseFrom(dir: string, manifest: BaseManifest): Base {
  return { name: manifest.name, dir, manifest, file: (key) => fileOf(dir, manifest, key) };
}

/** Loads a base by name (or directory path) and checks that its files exist with the right sizes. */
export async function loadBase(nameOrDir: string): Promise<Base> {
  const dir = nameOrDir.includes('/') ? path.resolve(nameOrDir) : path.join(baseDir(), nameOrDir);
  if (!nameOrDir.includes('/')) checkBaseName(nameOrDir);
  const manifestPath = path.join(dir, 'manifest.json');
  const text = await fsp.readFile(manifestPath, 'utf8').catch((cause: NodeJS.ErrnoException) => {
    throw new VmsynthError(
      'VMS_BASE_NOT_FOUND',
      `no base at ${dir} (${cause.code === 'ENOENT' ? 'no manifest.json' : cause.message})`,
      { cause, details: { dir } },
    );
  });
  const manifest = parseBaseManifest(text, manifestPath);
  for (const key of ['disk', 'memory', 'deviceState', 'kernel', 'initrd'] as const) {
    const file = fileOf(dir, manifest, key);
    const st = await fsp.stat(file).catch(() => null);
    if (!st?.isFile()) {
      throw new VmsynthError('VMS_BASE_FILE_MISSING', `base "${manifest.name}" is missing ${manifest[key].file}`, {
        details: { file },
      });
    }
    if (st.size !== manifest[key].bytes) {
      const code = key === 'memory' ? 'VMS_MEMORY_SIZE_MISMATCH' : 'VMS_BASE_CORRUPT';
      throw new VmsynthError(
        code,
        `base "${manifest.name}": ${manifest[key].file} is ${st.size} bytes, the manifest says ${manifest[key].bytes}`,
        {
          details: { file, actual: st.size, expected: manifest[key].bytes },
        },
      );
    }
  }
  return baseFrom(dir, manifest);
}

export interface VerifyResult {
  name: string;
  ok: true;
  files: Record<string, { bytes: number; sha256: string }>;
  ms: number;
}

/** Re-hashes every base file against the manifest. */
export async function verifyBase(base: Base, signal?: AbortSignal): Promise<VerifyResult> {
  const t0 = Date.now();
  const files: VerifyResult['files'] = {};
  for (const key of ['disk', 'memory', 'deviceState', 'kernel', 'initrd'] as const) {
    const want = base.manifest[key];
    const got = await sha256File(base.file(key), signal);
    if (got !== want.sha256) {
      throw new VmsynthError(
        'VMS_HASH_MISMATCH',
        `base "${base.name}": ${want.file} has SHA-256 ${got}, the manifest says ${want.sha256}`,
        {
          details: { file: base.file(key), actual: got, expected: want.sha256 },
        },
      );
    }
    files[want.file] = { bytes: want.bytes, sha256: got };
  }
  return { name: base.name, ok: true, files, ms: Date.now() - t0 };
}

export interface BaseListEntry {
  name: string;
  dir: string;
  ok: boolean;
  manifest?: BaseManifest;
  error?: { code: string; message: string };
}

/** Every base in the base directory; damaged ones are listed with their error. */
export async function listBases(): Promise<BaseListEntry[]> {
  const root = baseDir();
  const names = (await fsp.readdir(root).catch(() => [] as string[])).filter((n) => !n.startsWith('.')).sort();
  const out: BaseListEntry[] = [];
  for (const name of names) {
    const dir = path.join(root, name);
    try {
      const base = await loadBase(dir);
      out.push({ name, dir, ok: true, manifest: base.manifest });
    } catch (err) {
      const e = err instanceof VmsynthError ? err : new VmsynthError('VMS_INTERNAL', String(err));
      out.push({ name, dir, ok: false, error: { code: e.code, message: e.message } });
    }
  }
  return out;
}

/** A base image's identity, as an overlay names the base it was made against. */
export interface BaseImages {
  name: string;
  memory: { bytes: number; sha256: string };
  disk: { bytes: number; sha256: string };
}

/** The local base whose memory and disk images are `want`'s (VMS_BASE_NOT_FOUND when none is). */
export async function findBaseWithImages(want: BaseImages): Promise<Base> {
  const same = (a: { bytes: number; sha256: string }, b: { bytes: number; sha256: string }) =>
    a.sha256 === b.sha256 && a.bytes === b.bytes;
  const hit = (await listBases()).find(
    (b) => b.ok && same(b.manifest!.disk, want.disk) && same(b.manifest!.memory, want.memory),
  );
  if (!hit) {
    throw new VmsynthError(
      'VMS_BASE_NOT_FOUND',
      `no local base has the disk and memory the overlay was made against (base "${want.name}", disk ${want.disk.sha256.slice(0, 12)}…, memory ${want.memory.sha256.slice(0, 12)}…)`,
      {
        details: { want },
      },
    );
  }
  return loadBase(hit.dir);
}
