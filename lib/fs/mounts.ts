/**
 * Mount bookkeeping on the host: which FUSE mounts exist, how to take one
 * down even when its daemon hangs or died (lazy unmount, then abort the
 * connection through fusectl), and which mounts of any kind lie under a
 * directory.
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);
const FUSECTL = '/sys/fs/fuse/connections';

export interface FuseMount {
  mountpoint: string;
  /** The fusectl connection id (the minor device number of the mount). */
  connection: number;
  fstype: string;
}

function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Lists FUSE mounts from /proc/self/mountinfo. */
export async function listFuseMounts(): Promise<FuseMount[]> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const out: FuseMount[] = [];
  for (const line of text.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const fstype = line.slice(sep + 3).split(' ')[0] ?? '';
    if (fstype !== 'fuse' && !fstype.startsWith('fuse.')) continue;
    const minor = Number((left[2] ?? '').split(':')[1]);
    out.push({ mountpoint: unescapeMountField(left[4] ?? ''), connection: minor, fstype });
  }
  return out;
}

/** Mount points of any type at or under `dir`, deepest first. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  return text
    .split('\n')
    .map((line) => unescapeMountField(line.split(' ')[4] ?? ''))
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

/** Aborts a FUSE connection: every pending and future request fails with ENOTCONN. */
export async function abortConnection(connection: number): Promise<boolean> {
  try {
    await fsp.access(FUSECTL);
    const entries = await fsp.readdir(FUSECTL);
    if (entries.length === 0) await run('mount', ['-t', 'fusectl', 'fusectl', FUSECTL]).catch(() => undefined);
  } catch {
    return false;
  }
  try {
    await fsp.writeFile(`${FUSECTL}/${connection}/abort`, '1');
    return true;
  } catch {
    return false;
  }
}

/** Lazily detaches a mount point (works when the daemon is gone or hung). */
export async function lazyUnmount(mountpoint: string): Promise<void> {
  try {
    await run('fusermount', ['-u', '-z', mountpoint]);
  } catch {
    await run('umount', ['-l', mountpoint]);
  }
}

/** Takes a FUSE mount down no matter what state its daemon is in. */
export async function forceUnmount(mount: FuseMount): Promise<void> {
  await abortConnection(mount.connection);
  await lazyUnmount(mount.mountpoint).catch(() => undefined);
}
