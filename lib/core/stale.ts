/**
 * Output directories built beside their target, and what killed runs left of
 * them. Commands that write an output directory build it next to the output
 * as `<out>.tmp-<pid>` or `<out>.work-<pid>` (claimOutput) and rename or
 * remove it at the end; a run killed with SIGKILL cannot. The next run for
 * the same output removes those whose process is gone (a live process's are
 * left alone).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { publish } from './diagnostics.js';
import { VmsynthError } from './errors.js';

/** True while a process with this PID exists (EPERM: it exists, owned by another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes `<out>.tmp-<pid>` and `<out>.work-<pid>` directories of dead processes; returns what it removed. */
export async function removeStaleSiblings(out: string): Promise<string[]> {
  const dir = path.dirname(path.resolve(out));
  const base = path.basename(out);
  const removed: string[] = [];
  for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith(`${base}.`)) continue;
    const m = /^\.(?:tmp|work)-(\d+)$/.exec(name.slice(base.length));
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || processAlive(pid)) continue;
    const p = path.join(dir, name);
    await fsp.rm(p, { recursive: true, force: true });
    publish('staleCleaned', { kind: 'work directory', what: p });
    removed.push(p);
  }
  return removed;
}

/**
 * Claims `out` for a command that builds it beside itself: refuses an
 * existing `out` unless `force` (VMS_OVERLAY_EXISTS), removes what dead runs
 * left beside it, and returns a fresh, empty `<out>.<kind>-<pid>` directory.
 */
export async function claimOutput(out: string, kind: 'tmp' | 'work', force = false): Promise<string> {
  if (!force && (await fsp.stat(out).catch(() => null)))
    throw new VmsynthError('VMS_OVERLAY_EXISTS', `${out} already exists`, { details: { path: out } });
  await removeStaleSiblings(out);
  const dir = `${out}.${kind}-${process.pid}`;
  await fsp.rm(dir, { recursive: true, force: true });
  await fsp.mkdir(dir, { recursive: true });
  return dir;
}
