/**
 * The janitor: finds what a crashed vmsynth left behind and removes it —
 * `vmsynth-*` domains, FUSE mounts and run directories whose owning
 * process is gone. State owned by a live vmsynth process is never touched,
 * so concurrent runs (and parallel tests) are safe. Stale state of another
 * vmsynth instance (another run directory) is left to that instance while its
 * run directory still exists; orphans whose run directory is gone
 * are anyone's to clean. So are libvirt's QEMU logs of vmsynth domains
 * libvirt no longer knows: after a host restart both the transient domain
 * and the session directory (under /run, a tmpfs) are gone, and only the log
 * in /var/log/libvirt/qemu is left.
 */
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { runDir } from '../core/paths.js';
import { forceUnmount, listFuseMounts } from '../fs/mounts.js';
import { ownerFromXml } from './domain-xml.js';
import { DOMAIN_PREFIX, type Libvirt } from './libvirt.js';
import { qemuLogPath } from './machine.js';
import { keeperAlive, OWNER_FILE, ownerAlive, readOwner, type Owner } from './run-dir.js';

export interface CleanReport {
  domains: string[];
  mounts: string[];
  sessions: string[];
  /** QEMU logs of domains libvirt no longer knows. */
  logs: string[];
}

/**
 * A QEMU log of a domain libvirt does not know is left alone until it has
 * been unmodified this long: a domain that just crashed is gone from libvirt
 * at once, and its session reads the log's tail to say why (explainFailure).
 */
export const QEMU_LOG_GRACE_MS = 60_000;

/**
 * Whether state recorded with this owner and run directory may be removed:
 * its owner is gone, and it is this instance's (or anyone's, with `all`, or
 * an orphan whose run directory no longer exists). State with no owner
 * file is removed only under this instance's run directory, or with `all`.
 */
async function mayClean(owner: Owner | null, sessionDir: string, root: string, all: boolean): Promise<boolean> {
  // No owner file: not a session of a vmsynth process (they write it before they mount), so
  // someone else's (a test's FUSE rig, say), unless it is under this instance's run directory.
  // (Treated as anyone's, it was force-unmounted by any server that started meanwhile.)
  if (!owner) return all || sessionDir.startsWith(root + path.sep);
  // A session left to its keeper (synth/keeper.ts) lives on after its server: a later one adopts it.
  if ((await ownerAlive(owner)) || (await keeperAlive(sessionDir))) return false;
  if (all || sessionDir.startsWith(root + path.sep)) return true;
  return !(await fsp.stat(sessionDir).catch(() => null));
}

/**
 * Removes stale state. With allInstances, stale state of other vmsynth
 * instances (other run directories) is removed too.
 */
export async function cleanStale(
  lv: Libvirt | null,
  opts: { allInstances?: boolean; /** Where libvirt keeps QEMU logs (tests). */ qemuLogDir?: string } = {},
): Promise<CleanReport> {
  const report: CleanReport = { domains: [], mounts: [], sessions: [], logs: [] };
  const root = runDir();
  const all = !!opts.allInstances;

  if (lv) {
    for (const name of await lv.vmsynthDomains()) {
      const owner = ownerFromXml(await lv.xmlDesc(name).catch(() => ''));
      // (A vmsynth-* domain with no owner record is an old vmsynth's: removed, as it always was.)
      if (owner && !(await mayClean(owner, owner.sessionDir, root, all))) continue;
      if (await lv.destroy(name).catch(() => false)) {
        // Its QEMU log too, as a session's own teardown removes it (startVm).
        await fsp.rm(qemuLogPath(name), { force: true });
        report.domains.push(name);
        publish('staleCleaned', { kind: 'domain', what: name });
      }
    }
  }

  if (lv) report.logs = await removeOrphanLogs(lv, opts.qemuLogDir ?? path.dirname(qemuLogPath(DOMAIN_PREFIX)));

  for (const mount of await listFuseMounts()) {
    if (mount.fstype !== 'fuse.vmsynth') continue;
    const sessionDir = path.dirname(mount.mountpoint);
    const owner = await readOwner(path.join(sessionDir, OWNER_FILE));
    if (!(await mayClean(owner, sessionDir, root, all))) continue;
    await forceUnmount(mount);
    report.mounts.push(mount.mountpoint);
    publish('staleCleaned', { kind: 'mount', what: mount.mountpoint });
  }

  // A server killed without its stop left its control socket (server/control.ts): nothing accepts on it.
  const control = path.join(root, CONTROL_SOCKET);
  if ((await fsp.lstat(control).catch(() => null))?.isSocket() && !(await socketAccepts(control))) {
    await fsp.rm(control, { force: true });
    publish('staleCleaned', { kind: 'control-socket', what: control });
  }

  for (const entry of await fsp.readdir(root).catch(() => [] as string[])) {
    const dir = path.join(root, entry);
    const owner = await readOwner(path.join(dir, OWNER_FILE));
    if ((owner && (await ownerAlive(owner))) || (await keeperAlive(dir))) continue;
    const st = await fsp.stat(dir).catch(() => null);
    if (!st?.isDirectory()) continue;
    // Never remove a directory that still has a mount under it.
    const mounted = (await listFuseMounts()).some((m) => m.mountpoint.startsWith(dir + path.sep));
    if (mounted) continue;
    await fsp.rm(dir, { recursive: true, force: true });
    // After a host restart libvirt has forgotten the transient domain, but its log is still there.
    await fsp.rm(qemuLogPath(`${DOMAIN_PREFIX}${entry}`), { force: true });
    report.sessions.push(dir);
    publish('staleCleaned', { kind: 'run-dir', what: dir });
  }
  return report;
}

/** The control socket's name in a run directory (server/control.ts listens there). */
export const CONTROL_SOCKET = 'control.sock';

/** Whether a process accepts connections on the unix socket `file` (a live server's). */
export function socketAccepts(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(file);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Removes `vmsynth-*` QEMU logs whose domain libvirt does not know, unmodified for QEMU_LOG_GRACE_MS; returns them. */
async function removeOrphanLogs(lv: Libvirt, dir: string): Promise<string[]> {
  const logs = (await fsp.readdir(dir).catch(() => [] as string[])).filter(
    (f) => f.startsWith(DOMAIN_PREFIX) && f.endsWith('.log'),
  );
  if (logs.length === 0) return [];
  // Listed after the logs: a log whose domain is being created is of a domain libvirt already lists.
  const known = new Set(await lv.vmsynthDomains());
  const removed: string[] = [];
  for (const f of logs) {
    const file = path.join(dir, f);
    if (known.has(f.slice(0, -'.log'.length))) continue;
    const st = await fsp.stat(file).catch(() => null);
    if (!st || Date.now() - st.mtimeMs < QEMU_LOG_GRACE_MS) continue;
    await fsp.rm(file, { force: true });
    removed.push(file);
    publish('staleCleaned', { kind: 'qemu-log', what: file });
  }
  return removed;
}
