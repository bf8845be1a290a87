/**
 * A run directory: one VM's private working directory under the host's run
 * directory (FUSE mount point, QMP and migration sockets, local disk layer,
 * console log), named after the libvirt domain it holds, and the owner
 * record that lets a later start tell a live one from one a crash left
 * behind (vm/janitor.ts).
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { runDir } from '../core/paths.js';
import type { Scope } from '../core/scope.js';

export interface Owner {
  pid: number;
  /** Process start time (clock ticks since boot), to survive pid reuse. */
  start: string;
}

/** Every vmsynth domain's name starts so: the prefix, then the run id. */
export const DOMAIN_PREFIX = 'vmsynth-';

export const OWNER_FILE = 'owner.json';
/** The keeper process serving a session's images (synth/keeper.ts), while it runs: an Owner too. */
export const KEEPER_FILE = 'keeper.json';

/** This process as an owner. */
export async function currentOwner(): Promise<Owner> {
  return { pid: process.pid, start: (await processStart(process.pid)) ?? '' };
}

/** The fields of /proc/PID/stat after the command name (the first is the state: R, S, Z...); null when there is no such process. */
export async function procStat(pid: number): Promise<string[] | null> {
  const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  // The command name may contain spaces and parentheses: fields start after the last ')'.
  return stat === null ? null : stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

async function processStart(pid: number): Promise<string | null> {
  return (await procStat(pid))?.[19] ?? null; // field 22 overall: starttime
}

export async function ownerAlive(owner: Owner): Promise<boolean> {
  const start = await processStart(owner.pid);
  return start !== null && (owner.start === '' || start === owner.start);
}

/** A new session (run directory) id: 12 hex digits, also its domain's name suffix. */
export function newRunId(): string {
  return randomBytes(6).toString('hex');
}

export class RunDir {
  private constructor(
    readonly id: string,
    readonly dir: string,
    readonly owner: Owner,
  ) {}

  get domainName(): string {
    return `${DOMAIN_PREFIX}${this.id}`;
  }

  file(name: string): string {
    return path.join(this.dir, name);
  }

  /** Creates the directory (named `id`, default a new one); the scope removes it at the end. */
  static async create(scope: Scope, id: string = newRunId()): Promise<RunDir> {
    if (!/^[0-9a-f]{12}$/.test(id)) throw new Error(`"${id}" is not a run id (12 hex digits)`);
    const dir = path.join(runDir(), id);
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    scope.defer(`remove run directory ${dir}`, () => fsp.rm(dir, { recursive: true, force: true }), { lasting: true });
    const owner = await currentOwner();
    await fsp.writeFile(path.join(dir, OWNER_FILE), JSON.stringify(owner));
    return new RunDir(id, dir, owner);
  }

  /** Takes over the existing run directory `id` (a session a previous server left): this process owns it now. */
  static async adopt(scope: Scope, id: string): Promise<RunDir> {
    if (!/^[0-9a-f]{12}$/.test(id)) throw new Error(`"${id}" is not a run id (12 hex digits)`);
    const dir = path.join(runDir(), id);
    await fsp.access(dir);
    scope.defer(`remove run directory ${dir}`, () => fsp.rm(dir, { recursive: true, force: true }), { lasting: true });
    const owner = await currentOwner();
    await fsp.writeFile(path.join(dir, OWNER_FILE), JSON.stringify(owner));
    return new RunDir(id, dir, owner);
  }
}

/** Whether a live keeper process holds the session in `dir` (its state is not stale, whoever started it). */
export async function keeperAlive(dir: string): Promise<boolean> {
  const k = await readOwner(path.join(dir, KEEPER_FILE));
  return k !== null && (await ownerAlive(k));
}

export async function readOwner(file: string): Promise<Owner | null> {
  try {
    const o = JSON.parse(await fsp.readFile(file, 'utf8')) as Partial<Owner>;
    return typeof o.pid === 'number' ? { pid: o.pid, start: String(o.start ?? '') } : null;
  } catch {
    return null;
  }
}
