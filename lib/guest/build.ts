/**
 * Builds vmsynth's small test guest from Debian packages, reproducibly:
 *   - Debian's generic kernel, unpacked from its .deb (never installed on the host);
 *     not the cloud kernel, which lacks the vmgenid driver (CONFIG_VIRT_DRIVERS off);
 *   - an initramfs of busybox-static, the virtio modules the guest needs,
 *     guest/init and the offload app (guest/*.c, built static);
 *   - a small raw data disk of a known pseudo-random pattern.
 * The result is cached under <cache>/guest/<key>, the key a hash of every
 * input (sources, package versions, compiler, sizes), and built atomically.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { createWriteStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { exec } from '../core/exec.js';
import { cacheDir, packageRoot } from '../core/paths.js';
import { cpioNewc, type CpioEntry } from './cpio.js';
import { indexModules, loadOrder } from './kmod.js';

const BUILDER_VERSION = 1;
const KERNEL_META = 'linux-image-amd64';
export const MODULES = ['virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_balloon'];
/**
 * Kernel flags of the test guest. page_reporting_order=0: free page reporting
 * returns free pages of any size, not only 2 MiB blocks (see lib/vm/free-pages.ts).
 */
const KERNEL_FLAGS = 'console=ttyS0 loglevel=4 panic=-1 page_reporting.page_reporting_order=0';

export const GUEST_APP_PORT = 8000;

export interface GuestOptions {
  /** Data disk size in MiB. */
  diskMiB?: number;
  /** Working set the app fills at start, in MiB. */
  workingSetMiB?: number;
  /** Guest RAM in MiB. */
  memoryMiB?: number;
}

export interface Guest {
  key: string;
  dir: string;
  kernel: string;
  initrd: string;
  disk: string;
  cmdline: string;
  memoryMiB: number;
  workingSetMiB: number;
  diskMiB: number;
  appPort: number;
  kernelPackage: string;
}

/** guest/ in the package: what runs inside the guests. */
export const sourceDir = (): string => path.join(packageRoot(), 'guest');

/** Runs a build tool; its failure is VMS_GUEST_BUILD. Returns its stdout, trimmed. */
export async function sh(cmd: string, args: string[], cwd?: string): Promise<string> {
  return (await exec(cmd, args, { cwd, code: 'VMS_GUEST_BUILD' })).stdout.trim();
}

/** Moves a finished build from tmp into dir, unless another process completed the same build first (its guest.json is there). */
export async function commitBuild(tmp: string, dir: string): Promise<void> {
  if (await fsp.stat(path.join(dir, 'guest.json')).catch(() => null)) {
    await fsp.rm(tmp, { recursive: true, force: true });
    return;
  }
  await fsp.rm(dir, { recursive: true, force: true });
  await fsp.rename(tmp, dir);
}

/** The concrete kernel package behind the metapackage, and its version. */
export async function resolveKernel(): Promise<{ name: string; version: string }> {
  const tryResolve = async () => {
    const deps = await sh('apt-cache', ['depends', KERNEL_META]);
    const name = /Depends:\s*(linux-image-\S+)/.exec(deps)?.[1];
    if (!name) return null;
    const show = await sh('apt-cache', ['show', '--no-all-versions', name]);
    const version = /^Version:\s*(\S+)/m.exec(show)?.[1];
    return version ? { name, version } : null;
  };
  let found = await tryResolve().catch(() => null);
  if (!found) {
    publish('progress', { step: 'apt-get update (to find the Debian kernel package)' });
    await sh('apt-get', ['update', '-qq']);
    found = await tryResolve();
  }
  if (!found) throw new VmsynthError('VMS_GUEST_BUILD', `apt knows no ${KERNEL_META}; check /etc/apt/sources.list`);
  return found;
}

export async function fileSha(p: string): Promise<string> {
  return createHash('sha256').update(await fsp.readFile(p)).digest('hex');
}

/** Returns the cached guest for these options, building it first if needed. */
export async function buildGuest(options: GuestOptions = {}): Promise<Guest> {
  const diskMiB = options.diskMiB ?? 64;
  const workingSetMiB = options.workingSetMiB ?? 32;
  const memoryMiB = options.memoryMiB ?? 256;
  const src = sourceDir();
  const kernel = await resolveKernel();
  const inputs = {
    builder: BUILDER_VERSION,
    kernel,
    busybox: await sh('dpkg-query', ['-W', '-f=${Version}', 'busybox-static']).catch(() => 'missing'),
    gcc: (await sh('gcc', ['-dumpfullversion']).catch(() => 'missing')),
    init: await fileSha(path.join(src, 'init')),
    app: await appSourcesSha(),
    modules: MODULES,
    cmdline: KERNEL_FLAGS,
    diskMiB,
  };
  const key = createHash('sha256').update(JSON.stringify(inputs)).digest('hex').slice(0, 16);
  const dir = path.join(cacheDir(), 'guest', key);
  const cmdline = `${KERNEL_FLAGS} vmsynth.ws_mb=${workingSetMiB}`;
  const guest: Guest = {
    key, dir, cmdline, memoryMiB, workingSetMiB, diskMiB, appPort: GUEST_APP_PORT,
    kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'initrd.img'), disk: path.join(dir, 'data.raw'),
    kernelPackage: `${kernel.name}=${kernel.version}`,
  };
  if (await fsp.stat(path.join(dir, 'guest.json')).catch(() => null)) return guest;

  publish('progress', { step: `building test guest ${key}` });
  const tmp = `${dir}.tmp-${process.pid}`;
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp, { recursive: true });
  try {
    const { order, entries: moduleEntries } = await unpackKernel(kernel, tmp);
    publish('progress', { step: `compiling the offload app; modules: ${order.join(' ')}` });
    const app = await compileOffloadApp(tmp);
    const entries: CpioEntry[] = [
      ...await busyboxInitramfs(await fsp.readFile(path.join(src, 'init'))),
      { kind: 'file', path: 'bin/offload-app', data: await fsp.readFile(app), mode: 0o755 },
      ...moduleEntries,
    ];
    await fsp.writeFile(path.join(tmp, 'initrd.img'), cpioNewc(entries));
    await fsp.rm(app);

    publish('progress', { step: `writing the ${diskMiB} MiB data disk` });
    await writeDiskPattern(path.join(tmp, 'data.raw'), diskMiB * 1024 * 1024);
    await fsp.writeFile(path.join(tmp, 'guest.json'), JSON.stringify({ key, inputs, order }, null, 2) + '\n');
    await commitBuild(tmp, dir);
  } catch (err) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return guest;
}

/**
 * Unpacks the kernel package into <into>/vmlinuz and returns the modules the
 * guest loads (by default the virtio ones), in load order, as initramfs entries
 * (lib/modules/<m>.ko and lib/modules/load-order).
 */
export async function unpackKernel(
  kernel: { name: string; version: string },
  into: string,
  modules: string[] = MODULES,
): Promise<{ order: string[]; entries: CpioEntry[] }> {
  const deb = await downloadKernel(kernel);
  const root = path.join(into, 'kernel-root');
  try {
    await sh('dpkg-deb', ['-x', deb, root]);
    const release = kernel.name.replace(/^linux-image-/, '');
    await fsp.copyFile(path.join(root, 'boot', `vmlinuz-${release}`), path.join(into, 'vmlinuz'));
    const index = await indexModules(path.join(root, 'lib', 'modules', release));
    const order = await loadOrder(index, modules);
    const entries: CpioEntry[] = [
      { kind: 'file', path: 'lib/modules/load-order', data: Buffer.from(order.map((m) => `${m}.ko`).join('\n') + '\n') },
    ];
    for (const m of order) entries.push({ kind: 'file', path: `lib/modules/${m}.ko`, data: await fsp.readFile(index.get(m)!) });
    return { order, entries };
  } finally {
    await fsp.rm(root, { recursive: true, force: true });
  }
}

/** The skeleton of a busybox initramfs whose PID 1 is `init` (a busybox sh script). */
export async function busyboxInitramfs(init: Buffer): Promise<CpioEntry[]> {
  const busybox = await fsp.readFile('/bin/busybox');
  return [
    { kind: 'dir', path: 'bin' }, { kind: 'dir', path: 'dev' }, { kind: 'dir', path: 'lib' },
    { kind: 'dir', path: 'lib/modules' }, { kind: 'dir', path: 'proc' }, { kind: 'dir', path: 'sys' },
    { kind: 'dir', path: 'tmp', mode: 0o1777 },
    { kind: 'char', path: 'dev/console', major: 5, minor: 1 },
    { kind: 'file', path: 'init', data: init, mode: 0o755 },
    { kind: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 },
    { kind: 'symlink', path: 'bin/sh', target: 'busybox' },
  ];
}

/** The offload app's C sources and headers (guest/*.c, guest/*.h), sorted. */
async function appSources(): Promise<string[]> {
  const names = (await fsp.readdir(sourceDir())).filter((n) => n.endsWith('.c') || n.endsWith('.h')).sort();
  return names.map((n) => path.join(sourceDir(), n));
}

/** One hash over the offload app's sources (names and contents): a build input. */
export async function appSourcesSha(): Promise<string> {
  const h = createHash('sha256');
  for (const f of await appSources()) h.update(`${path.basename(f)}\0${await fileSha(f)}\0`);
  return h.digest('hex');
}

/** guest/*.c built static into <dir>/offload-app; returns its path. */
export async function compileOffloadApp(dir: string): Promise<string> {
  const app = path.join(dir, 'offload-app');
  const sources = (await appSources()).filter((f) => f.endsWith('.c'));
  await sh('gcc', ['-static', '-O2', '-s', '-o', app, ...sources]);
  return app;
}

export async function downloadKernel(kernel: { name: string; version: string }): Promise<string> {
  const debs = path.join(cacheDir(), 'debs');
  await fsp.mkdir(debs, { recursive: true });
  const want = `${kernel.name}_${kernel.version.replace(/:/g, '%3a')}_amd64.deb`;
  const file = path.join(debs, want);
  if (await fsp.stat(file).catch(() => null)) return file;
  publish('progress', { step: `downloading ${kernel.name} ${kernel.version}` });
  // apt's sandbox user cannot write into root-only directories; download as root into a fresh dir.
  await sh('apt-get', ['download', '-o', 'APT::Sandbox::User=root', `${kernel.name}=${kernel.version}`], debs);
  if (!(await fsp.stat(file).catch(() => null))) throw new VmsynthError('VMS_GUEST_BUILD', `apt-get download did not produce ${want}`);
  return file;
}

/** Writes the data disk's pseudo-random pattern (same as patterns.diskPattern), 1 MiB at a time. */
async function writeDiskPattern(file: string, bytes: number): Promise<void> {
  const key = Buffer.alloc(16);
  key.write('vmsynth-test-disk');
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const out = createWriteStream(file);
  const zeros = Buffer.alloc(1024 * 1024);
  for (let done = 0; done < bytes; done += zeros.length) {
    if (!out.write(cipher.update(zeros.subarray(0, Math.min(zeros.length, bytes - done))))) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
}
