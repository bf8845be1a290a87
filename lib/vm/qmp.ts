/**
 * A QEMU Machine Protocol client over a unix socket: what libvirt's API does
 * not offer (x-ignore-shared, migrate, migrate-incoming, cont) goes here.
 *
 * One request at a time is enough for vmsynth; replies are matched by id
 * anyway. When the socket closes (QEMU died), every pending and future call
 * fails with VMS_QEMU_DIED.
 */
import net from 'node:net';
import { VmsynthError } from '../core/errors.js';
import { sleep, throwIfAborted } from '../core/scope.js';

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  command: string;
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
}

export class QmpClient {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedError: VmsynthError | null = null;
  private readonly eventListeners = new Set<(e: QmpEvent) => void>();
  private readonly closeListeners = new Set<(err: VmsynthError) => void>();
  private greeted!: Promise<void>;

  private constructor(
    private readonly socket: net.Socket,
    readonly path: string,
  ) {
    socket.setEncoding('utf8');
    this.greeted = new Promise((resolve, reject) => {
      const onData = (chunk: string) => this.onData(chunk, resolve);
      socket.on('data', onData);
      socket.on('close', () => {
        this.closedError ??= new VmsynthError('VMS_QEMU_DIED', `QEMU closed its monitor socket ${path}`);
        reject(this.closedError);
        for (const p of this.pending.values()) p.reject(this.closedError);
        this.pending.clear();
        if (this.closedError.code === 'VMS_QEMU_DIED') for (const l of this.closeListeners) l(this.closedError);
      });
      socket.on('error', () => {
        /* 'close' follows and reports */
      });
    });
    this.greeted.catch(() => undefined);
  }

  /**
   * Connects to QEMU's QMP socket, retrying while QEMU starts, and negotiates
   * capabilities. `alive` is polled between retries so a QEMU that died is
   * reported at once instead of after the timeout.
   */
  static async connect(
    path: string,
    opts: { timeoutMs?: number; signal?: AbortSignal; alive?: () => Promise<boolean> } = {},
  ): Promise<QmpClient> {
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
    for (;;) {
      throwIfAborted(opts.signal);
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(path, () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        const client = new QmpClient(socket, path);
        await client.greeted;
        await client.execute('qmp_capabilities');
        return client;
      } catch (err) {
        if (err instanceof VmsynthError) throw err;
        if (opts.alive && !(await opts.alive())) {
          throw new VmsynthError(
            'VMS_QEMU_DIED',
            `QEMU exited before its monitor socket ${path} accepted a connection`,
            { cause: err },
          );
        }
        if (Date.now() > deadline) {
          throw new VmsynthError('VMS_QMP', `cannot connect to QEMU monitor ${path}: ${(err as Error).message}`, {
            cause: err,
          });
        }
        await sleep(50, opts.signal);
      }
    }
  }

  /** Runs a QMP command and resolves with its "return" value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, command });
      this.socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
  }

  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  /** Calls `listener` once if QEMU closes the monitor (it died or was killed), not when we close it. */
  onQemuGone(listener: (err: VmsynthError) => void): () => void {
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  close(): void {
    this.closedError ??= new VmsynthError('VMS_QMP', 'QMP client closed');
    this.socket.destroy();
  }

  private onData(chunk: string, greeted: () => void): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in msg) {
        greeted();
      } else if ('event' in msg) {
        for (const l of this.eventListeners) l(msg as unknown as QmpEvent);
      } else if (typeof msg.id === 'string') {
        const p = this.pending.get(msg.id);
        if (!p) continue;
        this.pending.delete(msg.id);
        if ('error' in msg) {
          const e = msg.error as { class?: string; desc?: string };
          p.reject(
            new VmsynthError('VMS_QMP', `QMP ${p.command} failed: ${e.desc ?? 'unknown error'} (${e.class ?? '?'})`, {
              details: { command: p.command, class: e.class, desc: e.desc },
            }),
          );
        } else {
          p.resolve(msg.return);
        }
      }
    }
  }
}
