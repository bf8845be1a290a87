/**
 * A real systemd for tests: the host's own OS tree booted in systemd-nspawn
 * with a volatile root (a tmpfs; the host's /usr read-only) and a
 * copy-on-write /etc over the host's, so everything bootstrap installed
 * (Node, QEMU, libvirt, this checkout) is there, and nothing written inside
 * reaches the host. The unified cgroup hierarchy lets the container's
 * libvirtd start domains (docs/DESIGN-NOTES.md, "A real systemd for the
 * service test"). It has a network namespace of its own (the host's
 * services that /etc enables start in there, and must not touch the host's
 * network), joined to the host by a veth pair with a /30 of its own: the
 * host is `hostAddr`, the container `addr`.
 *
 * `exec` runs a command in every namespace of the container (nsenter). The
 * container is stopped by its nspawn's PID and waited for; the empty
 * directories nspawn leaves under /run/systemd are removed.
 */
import { execFile, spawn } from 'node:child_process';
import { openSync, closeSync, promises as fsp } from 'node:fs';
import { promisify } from 'node:util';
import { until } from './wait.js';

const run = promisify(execFile);

export interface Container {
  /** PID of the container's systemd (PID 1 inside), as the host sees it. */
  init: number;
  /** The container's address on the veth, and the host's. */
  addr: string;
  hostAddr: string;
  /** Runs `sh -c script` inside; resolves with its stdout (rejects on a non-zero exit, with stderr). */
  exec(script: string, timeoutMs?: number): Promise<string>;
  /** Powers the container off and waits for nspawn to exit. Idempotent. */
  stop(): Promise<void>;
}

function childrenOf(pid: number, stats: Map<number, { ppid: number; comm: string }>): number[] {
  return [...stats].filter(([, s]) => s.ppid === pid).map(([p]) => p);
}

async function processTable(): Promise<Map<number, { ppid: number; comm: string }>> {
  const out = new Map<number, { ppid: number; comm: string }>();
  for (const name of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await fsp.readFile(`/proc/${name}/stat`, 'utf8').catch(() => null);
    if (!stat) continue;
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(stat.indexOf('(') + 1, close);
    const ppid = Number(stat.slice(close + 2).split(' ')[1]);
    out.set(Number(name), { ppid, comm });
  }
  return out;
}

/** The container's systemd: the first process named systemd below nspawn. */
async function findInit(nspawn: number): Promise<number | null> {
  const table = await processTable();
  const queue = childrenOf(nspawn, table);
  while (queue.length) {
    const p = queue.shift()!;
    if (table.get(p)?.comm === 'systemd') return p;
    queue.push(...childrenOf(p, table));
  }
  return null;
}

/**
 * Boots a container. `name` is at most 12 characters (the host's end of the veth is
 * ve-NAME); `subnet` is the first three octets of its /30 (a.b.c.0/30).
 */
export async function bootContainer(opts: {
  name: string;
  subnet: string;
  binds: string[];
  log: string;
}): Promise<Container> {
  if (opts.name.length > 12) throw new Error(`container name "${opts.name}" is over 12 characters`);
  const hostAddr = `${opts.subnet}.1`;
  const addr = `${opts.subnet}.2`;
  const veth = `ve-${opts.name}`;
  const logFd = openSync(opts.log, 'a');
  const child = spawn(
    'systemd-nspawn',
    [
      '-q',
      '-D',
      '/',
      '--volatile=yes',
      '-b',
      `--machine=${opts.name}`,
      '--register=no',
      '--keep-unit',
      '--console=read-only',
      '--network-veth',
      // So that systemd in here can attach the BPF device programs DeviceAllow= needs.
      '--capability=CAP_BPF,CAP_NET_ADMIN',
      '--system-call-filter=bpf',
      '--bind=/dev/fuse',
      ...opts.binds.map((b) => `--bind=${b}`),
      '--overlay=/etc::/etc',
      '--',
      'systemd.firstboot=off',
    ],
    {
      detached: true,
      stdio: ['ignore', logFd, logFd],
      env: { ...process.env, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY: '1' },
    },
  );
  closeSync(logFd);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let stopped: Promise<void> | null = null;
  const stop = () =>
    (stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        // SIGTERM: nspawn asks the container's systemd to power off, then exits.
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
        await exited;
        clearTimeout(timer);
      }
      for (const d of ['/run/systemd/nspawn/propagate', '/run/systemd/nspawn', '/run/systemd/nspawn-root'])
        await fsp.rmdir(d).catch(() => undefined);
    })());
  try {
    let init: number | null = null;
    await until(
      async () => {
        if (child.exitCode !== null) throw new Error(`systemd-nspawn exited (${child.exitCode}); see ${opts.log}`);
        init = await findInit(child.pid!);
        return init !== null;
      },
      'the container to start systemd',
      30_000,
      100,
    );
    // In a session of its own: a signal sent inside to "the process group" never reaches the test.
    const exec = async (script: string, timeoutMs = 120_000) =>
      (
        await run('setsid', ['--wait', 'nsenter', '-t', String(init), '-a', 'sh', '-c', script], {
          timeout: timeoutMs,
        })
      ).stdout;
    // "degraded" counts: a unit of the host's that has nothing to do with us may fail in here.
    await exec('systemctl is-system-running --wait || true', 60_000);
    await run('ip', ['addr', 'add', `${hostAddr}/30`, 'dev', veth]);
    await run('ip', ['link', 'set', veth, 'up']);
    await exec(`ip addr add ${addr}/30 dev host0 && ip link set host0 up`);
    return { init: init!, addr, hostAddr, exec, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
