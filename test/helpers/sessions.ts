/**
 * What the server's diagnostics channels say about sessions, kept by id for
 * tests that run many sessions at once: when each domain was created and
 * reached "running", and when and how each session ended. Plus a rescue for
 * a session that does not end: aborting its FUSE connection (fusectl) fails
 * every request on it, so a QEMU, or a libvirtd helper, stuck in a read of
 * the session's images is freed and the host's libvirtd does not stay wedged
 * after a failing test.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { channels } from '../../lib/core/diagnostics.js';
import { VmsynthError } from '../../lib/core/errors.js';
import { DOMAIN_PREFIX } from '../../lib/vm/libvirt.js';

export interface Ended {
  at: number;
  error: VmsynthError | null;
  stats: Record<string, unknown> | null;
}

export class SessionWatch {
  readonly created = new Map<string, number>();
  readonly running = new Map<string, number>();
  readonly ended = new Map<string, Ended>();
  private readonly waiters = new Map<string, Array<(e: Ended) => void>>();
  private readonly subs: Array<[keyof typeof channels, (m: unknown) => void]> = [];
  private readonly createdWaiters = new Map<string, Array<() => void>>();

  constructor() {
    this.on('domainCreated', (m) => {
      const name = (m as { name: string }).name;
      this.created.set(name, performance.now());
      for (const w of this.createdWaiters.get(name) ?? []) w();
      this.createdWaiters.delete(name);
    });
    this.on('domainRunning', (m) => this.running.set((m as { name: string }).name, performance.now()));
    this.on('sessionEnded', (m) => {
      const { session, error, stats } = m as {
        session?: string;
        error?: VmsynthError;
        stats?: Record<string, unknown> | null;
      };
      if (!session) return;
      const e: Ended = { at: performance.now(), error: error ?? null, stats: stats ?? null };
      this.ended.set(session, e);
      for (const w of this.waiters.get(session) ?? []) w(e);
      this.waiters.delete(session);
    });
  }

  private on(name: keyof typeof channels, fn: (m: unknown) => void): void {
    channels[name].subscribe(fn);
    this.subs.push([name, fn]);
  }

  close(): void {
    for (const [name, fn] of this.subs) channels[name].unsubscribe(fn);
  }

  static domain(session: string): string {
    return `${DOMAIN_PREFIX}${session}`;
  }

  /** Resolves once the domain has been created (libvirt started its QEMU). */
  waitCreated(domain: string): Promise<void> {
    if (this.created.has(domain)) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.createdWaiters.get(domain) ?? [];
      list.push(resolve);
      this.createdWaiters.set(domain, list);
    });
  }

  /** Resolves when the session has ended, or with null after `ms`. */
  waitEnded(session: string, ms: number): Promise<Ended | null> {
    const done = this.ended.get(session);
    if (done) return Promise.resolve(done);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const list = this.waiters.get(session) ?? [];
        this.waiters.set(
          session,
          list.filter((w) => w !== finish),
        );
        resolve(null);
      }, ms);
      const finish = (e: Ended) => {
        clearTimeout(timer);
        resolve(e);
      };
      const list = this.waiters.get(session) ?? [];
      list.push(finish);
      this.waiters.set(session, list);
    });
  }
}

/**
 * Aborts every FUSE connection mounted under `dir` (the session directory).
 * Returns the mount points it aborted. Only for a session that is already
 * late: the test has failed by then, this keeps the host usable. Synchronous
 * on purpose: when sessions hang, libvirt calls stuck on FUSE reads can hold
 * every thread of libuv's pool, and an fs.promises call would wait behind them.
 */
export function abortFuseUnder(dir: string): string[] {
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  const aborted: string[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const mountpoint = f[4] ?? '';
    if (!mountpoint.startsWith(dir) || !line.includes(' - fuse')) continue;
    const minor = (f[2] ?? '').split(':')[1];
    if (!minor) continue;
    try {
      writeFileSync(`/sys/fs/fuse/connections/${minor}/abort`, '1');
      aborted.push(mountpoint);
    } catch {
      // already gone
    }
  }
  return aborted;
}
