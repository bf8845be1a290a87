/**
 * Reaching QEMU's host forwards from another network namespace. libvirtd
 * starts every QEMU in its own namespace (the host's), and the forwards
 * listen on 127.0.0.1 there; a vmsynth process that runs in another
 * namespace (a cloudlet of the handoff tests and bench, entered with
 * `nsenter --net`) cannot reach them. Then one helper process per vmsynth
 * process runs in libvirtd's namespace (netns-helper-main.ts), connects
 * for it, and passes the connected sockets back; it also picks the free
 * ports for new forwards there. In libvirtd's own namespace (every real
 * cloudlet) there is no helper: `guestNet()` is null.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import type net from 'node:net';
import { fileURLToPath } from 'node:url';
import { compiledModule } from '../core/compiled.js';
import { VmsynthError } from '../core/errors.js';

export interface GuestNet {
  /** A TCP connection to 127.0.0.1:port in QEMU's namespace. */
  dial(port: number): Promise<net.Socket>;
  /** A free port there, for a new host forward. */
  freePort(): Promise<number>;
}

const PID_FILES = ['/run/libvirtd.pid', '/var/run/libvirtd.pid'];

/** The network namespace of libvirtd's QEMUs, when it is not this process's; null otherwise, or when it cannot be told. */
async function qemuNetns(): Promise<string | null> {
  for (const f of PID_FILES) {
    const pid = Number((await fsp.readFile(f, 'utf8').catch(() => '')).trim());
    if (!Number.isInteger(pid) || pid <= 0) continue;
    const theirs = await fsp.readlink(`/proc/${pid}/ns/net`).catch(() => null);
    const ours = await fsp.readlink('/proc/self/ns/net').catch(() => null);
    if (!theirs || !ours) return null;
    return theirs === ours ? null : `/proc/${pid}/ns/net`;
  }
  return null;
}

class Helper implements GuestNet {
  private next = 1;
  private readonly waiting = new Map<
    number,
    (m: { ok: boolean; error?: string; port?: number }, s?: net.Socket) => void
  >();

  constructor(private readonly child: ChildProcess) {
    child.on('message', (m: { id?: number; ok: boolean; error?: string; port?: number }, handle?: net.Socket) => {
      if (m.id === undefined) return;
      const w = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      w?.(m, handle);
    });
    child.on('exit', () => {
      for (const w of this.waiting.values()) w({ ok: false, error: 'the netns helper exited' });
      this.waiting.clear();
    });
    // The helper lives as long as this process, and does not keep it alive: a pending ask holds a ref.
    child.unref();
    (child.channel as { unref?: () => void } | undefined)?.unref?.();
  }

  private ask(op: 'dial' | 'port', port?: number): Promise<{ port?: number; socket?: net.Socket }> {
    const channel = this.child.channel as { ref?: () => void; unref?: () => void } | undefined;
    if (this.waiting.size === 0) channel?.ref?.();
    return new Promise<{ port?: number; socket?: net.Socket }>((resolve, reject) => {
      const id = this.next++;
      this.waiting.set(id, (m, s) => {
        if (this.waiting.size === 0) channel?.unref?.();
        if (m.ok) resolve({ ...(m.port !== undefined ? { port: m.port } : {}), ...(s ? { socket: s } : {}) });
        else {
          const err = new Error(`connect 127.0.0.1:${port ?? '?'} in QEMU's network namespace: ${m.error}`);
          (err as NodeJS.ErrnoException).code = m.error;
          reject(err);
        }
      });
      this.child.send({ id, op, ...(port !== undefined ? { port } : {}) });
    });
  }

  async dial(port: number): Promise<net.Socket> {
    const { socket } = await this.ask('dial', port);
    if (!socket) throw new VmsynthError('VMS_INTERNAL', 'the netns helper passed no socket');
    return socket;
  }

  async freePort(): Promise<number> {
    return (await this.ask('port')).port!;
  }
}

let shared: Promise<GuestNet | null> | null = null;

/** The way to QEMU's host forwards from this process: null when they are in this namespace. */
export function guestNet(): Promise<GuestNet | null> {
  shared ??= (async () => {
    const ns = await qemuNetns();
    if (!ns) return null;
    const main = fileURLToPath(compiledModule(import.meta.url, 'vm/netns-helper-main.js', 'netns helper'));
    const child = spawn('nsenter', [`--net=${ns}`, process.execPath, main], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    await new Promise<void>((resolve, reject) => {
      child.once('message', () => resolve());
      child.once('error', (err) =>
        reject(new VmsynthError('VMS_INTERNAL', `cannot start the netns helper: ${err.message}`, { cause: err })),
      );
      child.once('exit', (code) =>
        reject(
          new VmsynthError(
            'VMS_INTERNAL',
            `the netns helper exited (${code}) before it was ready (nsenter needs root)`,
          ),
        ),
      );
    });
    return new Helper(child);
  })();
  return shared;
}
