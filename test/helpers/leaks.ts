/**
 * What a run may leave behind, looked up on the real host: libvirt domains,
 * QEMU processes, keeper processes, FUSE mounts and files under a directory. Tests assert all
 * of them are empty after every path, successful or not.
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { CONTROL_SOCKET, socketAccepts } from '../../lib/vm/janitor.js';

const run = promisify(execFile);

export async function virshDomains(): Promise<string[]> {
  const { stdout } = await run('virsh', ['-c', process.env.LIBVIRT_URI ?? 'qemu:///system', 'list', '--all', '--name']);
  return stdout
    .split('\n')
    .map((s) => s.trim())
    .filter(Boolean);
}

export async function qemuProcessesFor(domain: string): Promise<string[]> {
  const out: string[] = [];
  for (const pid of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const cmd = await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes('qemu-system') && cmd.includes(`guest=${domain}`)) out.push(pid);
  }
  return out;
}

/** Keeper processes (synth/keeper.ts) serving sessions under `runDir`: by their arguments or working directory. */
export async function keepersUnder(runDir: string): Promise<string[]> {
  const out: string[] = [];
  for (const pid of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const args = (await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (!args.some((a) => a.endsWith('keeper-main.js'))) continue;
    // A keeper works in its session's run directory (a spare that took one was started without it).
    const cwd = await fsp.readlink(`/proc/${pid}/cwd`).catch(() => '');
    if ([...args, cwd].some((a) => a.startsWith(`${runDir}/`))) out.push(pid);
  }
  return out;
}

export async function mountsUnder(dir: string): Promise<string[]> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  return text
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((mp) => mp.startsWith(dir));
}

export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    for (const e of await fsp.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = `${d}/${e.name}`;
      out.push(p);
      if (e.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return out;
}

export interface Leaks {
  domains: string[];
  qemu: string[];
  keepers: string[];
  mounts: string[];
  files: string[];
}

async function liveControlAside(files: string[], runDir: string): Promise<string[]> {
  const control = path.join(runDir, CONTROL_SOCKET);
  if (!files.includes(control) || !(await socketAccepts(control))) return files;
  return files.filter((f) => f !== control);
}

/** Everything still present for these domains and under this run directory (a live server's control socket aside). */
export async function leaks(domains: string[], runDir: string): Promise<Leaks> {
  const live = await virshDomains();
  const qemu = (await Promise.all(domains.map(qemuProcessesFor))).flat();
  return {
    domains: domains.filter((d) => live.includes(d)),
    qemu,
    keepers: await keepersUnder(runDir),
    mounts: await mountsUnder(runDir),
    // A running server's control socket is its own; a dead one's is a leak.
    files: await liveControlAside(await filesUnder(runDir), runDir),
  };
}

export const NO_LEAKS: Leaks = { domains: [], qemu: [], keepers: [], mounts: [], files: [] };
