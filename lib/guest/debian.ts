/**
 * Builds vmsynth's Debian base guest from Debian packages:
 *   - `debootstrap --variant=minbase` of bookworm, plus python3 and iproute2,
 *     into a directory;
 *   - guest/debian/vmsynth-init as PID 1 (no systemd) and the static
 *     offload-app as the placeholder app and customization agent;
 *   - an ext4 image of that directory made by `mkfs.ext4 -d` (no loop
 *     device, no mount);
 *   - Debian's generic kernel, and a busybox initramfs that loads the virtio
 *     modules and switch_roots into the ext4 root.
 * The result is cached under <cache>/debian/<key>, the key a hash of every
 * input, built atomically. The root directory stays in the cache (root/): apt
 * resolves an app's packages against exactly the base's package set there.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { exec } from '../core/exec.js';
import { mountsUnder } from '../fs/mounts.js';
import { cacheDir } from '../core/paths.js';
import type { BaseSource } from '../vm/base.js';
import { cpioNewc } from './cpio.js';
import { appSourcesSha, busyboxInitramfs, commitBuild, compileOffloadApp, fileSha, GUEST_APP_PORT, MODULES, resolveKernel, sh, sourceDir, unpackKernel } from './build.js';

const BUILDER_VERSION = 1;
export const DEBIAN_SUITE = 'bookworm';
/** What the base holds besides minbase: the apps' request servers are python3, the init uses `ip`. */
export const DEBIAN_BASE_PACKAGES = ['python3', 'iproute2'];
/** The generic kernel has ext4 as a module; it needs crc32c (a soft dependency kmod would load) for its checksums. */
const DEBIAN_MODULES = [...MODULES, 'crc32c_generic', 'ext4'];
const KERNEL_FLAGS = 'console=ttyS0 loglevel=4 panic=-1 page_reporting.page_reporting_order=0';

export interface DebianGuestOptions {
  /** Root disk size in MiB (sparse). Elijah's bases had 8 GB disks and 1 GB of memory. */
  diskMiB?: number;
  memoryMiB?: number;
  /** Debian mirror debootstrap uses (default $VMSYNTH_DEBIAN_MIRROR or deb.debian.org). */
  mirror?: string;
}

export interface DebianGuest {
  key: string;
  dir: string;
  kernel: string;
  initrd: string;
  disk: string;
  /** The debootstrapped root the disk was made from (apt resolves app packages here). */
  root: string;
  cmdline: string;
  memoryMiB: number;
  diskMiB: number;
  appPort: number;
  kernelPackage: string;
  suite: string;
}


export function debianMirror(opts: DebianGuestOptions = {}): string {
  return opts.mirror ?? process.env.VMSYNTH_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
}

/** Returns the cached Debian guest for these options, building it first if needed. */
export async function buildDebianGuest(opts: DebianGuestOptions = {}): Promise<DebianGuest> {
  const diskMiB = opts.diskMiB ?? 4096;
  const memoryMiB = opts.memoryMiB ?? 1024;
  const kernel = await resolveKernel();
  const inputs = {
    builder: BUILDER_VERSION,
    suite: DEBIAN_SUITE,
    packages: DEBIAN_BASE_PACKAGES,
    kernel,
    busybox: await sh('dpkg-query', ['-W', '-f=${Version}', 'busybox-static']).catch(() => 'missing'),
    gcc: await sh('gcc', ['-dumpfullversion']).catch(() => 'missing'),
    init: await fileSha(path.join(sourceDir(), 'debian', 'vmsynth-init')),
    initramfs: await fileSha(path.join(sourceDir(), 'debian', 'initramfs-init')),
    app: await appSourcesSha(),
    cmdline: KERNEL_FLAGS,
    modules: DEBIAN_MODULES,
    diskMiB,
  };
  const key = createHash('sha256').update(JSON.stringify(inputs)).digest('hex').slice(0, 16);
  const dir = path.join(cacheDir(), 'debian', key);
  const guest: DebianGuest = {
    key, dir, cmdline: KERNEL_FLAGS, memoryMiB, diskMiB, appPort: GUEST_APP_PORT, suite: DEBIAN_SUITE,
    kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'initrd.img'), disk: path.join(dir, 'disk.raw'), root: path.join(dir, 'root'),
    kernelPackage: `${kernel.name}=${kernel.version}`,
  };
  if (await fsp.stat(path.join(dir, 'guest.json')).catch(() => null)) return guest;

  await requireTools();
  publish('progress', { step: `building the Debian ${DEBIAN_SUITE} base guest ${key}` });
  const tmp = `${dir}.tmp-${process.pid}`;
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp, { recursive: true });
  try {
    const root = path.join(tmp, 'root');
    const debs = path.join(cacheDir(), 'debs', 'debootstrap');
    await fsp.mkdir(debs, { recursive: true });
    publish('progress', { step: `debootstrap --variant=minbase ${DEBIAN_SUITE} (+ ${DEBIAN_BASE_PACKAGES.join(', ')}) from ${debianMirror(opts)}` });
    await sh('debootstrap', ['--variant=minbase', `--include=${DEBIAN_BASE_PACKAGES.join(',')}`, `--cache-dir=${debs}`, DEBIAN_SUITE, root, debianMirror(opts)]);
    await installVmsynthFiles(root, tmp);
    const versions = await sh('chroot', [root, 'dpkg-query', '-W', '-f=${Package}=${Version}\\n']);

    publish('progress', { step: `making the ${diskMiB} MiB ext4 root disk (mkfs.ext4 -d)` });
    const disk = path.join(tmp, 'disk.raw');
    await fsp.writeFile(disk, '');
    await fsp.truncate(disk, diskMiB * 1024 * 1024);
    // Initialize inode tables and journal now: lazy init would write them from the guest, into every overlay.
    await sh('mkfs.ext4', ['-q', '-F', '-L', 'vmsynth-root', '-E', 'lazy_itable_init=0,lazy_journal_init=0', '-d', root, disk]);

    publish('progress', { step: 'making the initramfs (virtio modules, switch_root)' });
    const { entries } = await unpackKernel(kernel, tmp, DEBIAN_MODULES);
    const init = await fsp.readFile(path.join(sourceDir(), 'debian', 'initramfs-init'));
    await fsp.writeFile(path.join(tmp, 'initrd.img'), cpioNewc([...await busyboxInitramfs(init), { kind: 'dir', path: 'newroot' }, ...entries]));
    await fsp.writeFile(path.join(tmp, 'packages.txt'), versions + '\n');
    await fsp.writeFile(path.join(tmp, 'guest.json'), JSON.stringify({ key, inputs, mirror: debianMirror(opts) }, null, 2) + '\n');
    await commitBuild(tmp, dir);
  } catch (err) {
    // debootstrap mounts /proc and /sys in its target: never recurse into a mounted filesystem.
    await unmountUnder(tmp);
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return guest;
}

/** Lazily unmounts every mount point under dir, deepest first. */
async function unmountUnder(dir: string): Promise<void> {
  for (const m of await mountsUnder(dir)) await exec('umount', ['-l', m]).catch(() => undefined);
}

async function requireTools(): Promise<void> {
  for (const [tool, pkg] of [['debootstrap', 'debootstrap'], ['mkfs.ext4', 'e2fsprogs']] as const) {
    await exec('sh', ['-c', `command -v ${tool}`]).catch(() => {
      throw new VmsynthError('VMS_GUEST_BUILD', `building the Debian base needs ${tool}: apt-get install ${pkg} (npm run bootstrap installs it)`);
    });
  }
  if (process.getuid?.() !== 0) throw new VmsynthError('VMS_GUEST_BUILD', 'building the Debian base runs debootstrap, which needs root');
}

/** PID 1, the offload app, and a root with no network apt sources (customizations bring their own). */
async function installVmsynthFiles(root: string, tmp: string): Promise<void> {
  await fsp.copyFile(path.join(sourceDir(), 'debian', 'vmsynth-init'), path.join(root, 'sbin', 'vmsynth-init'));
  await fsp.chmod(path.join(root, 'sbin', 'vmsynth-init'), 0o755);
  const app = await compileOffloadApp(tmp);
  await fsp.copyFile(app, path.join(root, 'usr', 'local', 'sbin', 'offload-app'));
  await fsp.chmod(path.join(root, 'usr', 'local', 'sbin', 'offload-app'), 0o755);
  await fsp.rm(app);
  await fsp.mkdir(path.join(root, 'etc', 'vmsynth'), { recursive: true });
  await fsp.writeFile(path.join(root, 'etc', 'hostname'), 'vmsynth-debian\n');
  await fsp.writeFile(path.join(root, 'etc', 'apt', 'sources.list'), '# vmsynth Debian base: no network sources; a customization adds its own repository.\n');
  await fsp.rm(path.join(root, 'var', 'lib', 'apt', 'lists'), { recursive: true, force: true });
  await fsp.mkdir(path.join(root, 'var', 'lib', 'apt', 'lists', 'partial'), { recursive: true });
  await sh('chroot', [root, 'apt-get', 'clean']);
}

/** The base source `vmsynth base create --debian` captures. */
export function debianBaseSource(g: DebianGuest): BaseSource {
  return {
    kernel: g.kernel, initrd: g.initrd, disk: g.disk, cmdline: g.cmdline, memoryMiB: g.memoryMiB, appPort: g.appPort,
    info: { kind: 'vmsynth-debian-guest', guestKey: g.key, suite: g.suite, kernelPackage: g.kernelPackage },
  };
}
