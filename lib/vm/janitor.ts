/**
 * The janitor: finds what a crashed vmsynth left behind and removes it —
 * `vmsynth-*` domains, FUSE mounts and session directories whose owning
 * process is gone. State owned by a live vmsynth process is never touched,
 * so concurrent runs (and parallel tests) are safe.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { runDir } from '../core/paths.js';
import { forceUnmount, listFuseMounts } from '../fs/mounts.js';
import { ownerFromXml } from './domain-xml.js';
import type { Libvirt } from './libvirt.js';
import { OWNER_FILE, ownerAlive, readOwner } from './session.js';

export interface CleanReport {
  domains: string[];
  mounts: string[];
  sessions: string[];
}

export async function cleanStale(lv: Libvirt | null): Promise<CleanReport> {
  const report: CleanReport = { domains: [], mounts: [], sessions: [] };

  if (lv) {
    for (const name of await lv.vmsynthDomains()) {
      const owner = ownerFromXml(await lv.xmlDesc(name).catch(() => ''));
      if (owner && (await ownerAlive(owner))) continue;
      if (await lv.destroy(name).catch(() => false)) {
        report.domains.push(name);
        publish('staleCleaned', { kind: 'domain', what: name });
      }
    }
  }

  for (const mount of await listFuseMounts()) {
    if (mount.fstype !== 'fuse.vmsynth') continue;
    const owner = await readOwner(path.join(path.dirname(mount.mountpoint), OWNER_FILE));
    if (owner && (await ownerAlive(owner))) continue;
    await forceUnmount(mount);
    report.mounts.push(mount.mountpoint);
    publish('staleCleaned', { kind: 'mount', what: mount.mountpoint });
  }

  const root = runDir();
  for (const entry of await fsp.readdir(root).catch(() => [] as string[])) {
    const dir = path.join(root, entry);
    const owner = await readOwner(path.join(dir, OWNER_FILE));
    if (owner && (await ownerAlive(owner))) continue;
    const st = await fsp.stat(dir).catch(() => null);
    if (!st?.isDirectory()) continue;
    // Never remove a directory that still has a mount under it.
    const mounted = (await listFuseMounts()).some((m) => m.mountpoint.startsWith(dir + path.sep));
    if (mounted) continue;
    await fsp.rm(dir, { recursive: true, force: true });
    report.sessions.push(dir);
    publish('staleCleaned', { kind: 'session', what: dir });
  }
  return report;
}
