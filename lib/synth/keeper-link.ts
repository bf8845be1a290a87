/**
 * The server's side of a session's keeper (keeper.ts): starts the keeper
 * process (detached, so it outlives this one) or adopts one a previous
 * server left, mirrors every chunk that arrives or is redirected into it,
 * and hears back the segments held guest reads need. close() ends the
 * keeper (it unmounts and exits); detach() only lets go of it, and it waits
 * out the session's grace period for a server to adopt it.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { packr } from '../core/msgpack.js';
import { keeperMain, type KeeperPool } from './keeper-pool.js';
import { sleep } from '../core/scope.js';
import type { ChunkSource } from '../fs/chunk-map.js';
import { forceUnmount, listFuseMounts } from '../fs/mounts.js';
import { KEEPER_FILE, ownerAlive, procStat, readOwner } from '../vm/run-dir.js';
import type { ArrivalsObserver, ArrivalsState, BlockedReadStats, HeldReads } from './arrivals.js';
import {
  bytesInt32,
  frameReader,
  KEEPER_LOG,
  KEEPER_SOCKET,
  KEEPER_SPEC,
  sendFrame,
  u32Bytes,
  type FromKeeper,
  type KeeperSpec,
  type ToKeeper,
} from './keeper-wire.js';

export interface KeeperEvents {
  /** A held guest read needs this segment. */
  demand(segment: number): void;
  /** A held guest read went on after waiting this long. */
  unblocked(ms: number): void;
}

/** What an adopted keeper holds: its chunk maps and the segments applied into them. */
export interface KeeperState extends ArrivalsState {
  applied: number[];
}

/** How long a keeper may take to mount and listen, or to unmount and exit. */
const START_TIMEOUT_MS = 15_000;
const CLOSE_TIMEOUT_MS = 10_000;

export class KeeperLink implements ArrivalsObserver {
  held: HeldReads = { reads: 0, oldestMs: 0, segments: [] };
  blocked: BlockedReadStats = { count: 0, totalMs: 0, maxMs: 0, p50Ms: 0, p90Ms: 0 };
  private readonly pending = new Map<number, number[]>();
  private flushing = false;
  private closed: ((forced: boolean | null) => void) | null = null;
  private stateWaiter: ((s: KeeperState) => void) | null = null;
  private gone = false;

  private socket: net.Socket | null = null;
  /** Messages sent before the keeper listens, in order. */
  private outbox: ToKeeper[] = [];
  pid = -1;

  private constructor(private readonly events: KeeperEvents) {}

  /** A link to a keeper not started yet: what is sent is queued until start() connects. */
  static create(events: KeeperEvents): KeeperLink {
    return new KeeperLink(events);
  }

  private connected(socket: net.Socket, pid: number): void {
    this.socket = socket;
    this.pid = pid;
    const read = frameReader((v) => this.handle(v as FromKeeper));
    socket.on('data', (chunk: Buffer) => read(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.gone = true;
      this.closed?.(null); // no answer: it is gone
    });
    for (const m of this.outbox) sendFrame(socket, m);
    this.outbox = [];
  }

  /**
   * Writes the spec, has the pool's spare keeper take run directory `dir` (or starts one) and
   * connects once it has mounted.
   */
  async start(dir: string, spec: KeeperSpec, pool?: KeeperPool): Promise<void> {
    await fsp.writeFile(path.join(dir, KEEPER_SPEC), packr.pack(spec));
    const t0 = performance.now();
    const pid = pool ? await pool.take(dir) : null;
    if (pid !== null) {
      const socket = await connect(path.join(dir, KEEPER_SOCKET));
      this.connected(socket, pid);
      publish('keeperStarted', { session: spec.session, pid, ms: Math.round(performance.now() - t0), spare: true });
      return;
    }
    const main = keeperMain();
    const log = await fsp.open(path.join(dir, KEEPER_LOG), 'a');
    const child = spawn(process.execPath, [main, dir], { detached: true, stdio: ['ignore', log.fd, log.fd] });
    await log.close();
    child.unref();
    const status: { exited: number | null } = { exited: null };
    child.once('exit', (code) => (status.exited = code ?? 1));
    child.once('error', () => (status.exited = 1));
    for (;;) {
      const socket = await connect(path.join(dir, KEEPER_SOCKET)).catch(() => null);
      if (socket) {
        this.connected(socket, child.pid ?? -1);
        publish('keeperStarted', {
          session: spec.session,
          pid: child.pid,
          ms: Math.round(performance.now() - t0),
          spare: false,
        });
        return;
      }
      if (status.exited !== null) throw await keeperFailure(dir, `the keeper exited with status ${status.exited}`);
      if (performance.now() - t0 > START_TIMEOUT_MS) {
        if (child.pid) process.kill(child.pid, 'SIGTERM');
        throw await keeperFailure(dir, `the keeper did not mount within ${START_TIMEOUT_MS} ms`);
      }
      await sleep(10);
    }
  }

  /** Connects to the keeper a previous server left in `dir`, and takes its state. Null: there is none alive. */
  static async adopt(dir: string, events: KeeperEvents): Promise<{ link: KeeperLink; state: KeeperState } | null> {
    const owner = await readOwner(path.join(dir, KEEPER_FILE));
    if (!owner || !(await ownerAlive(owner))) return null;
    const socket = await connect(path.join(dir, KEEPER_SOCKET)).catch(() => null);
    if (!socket) return null;
    const link = new KeeperLink(events);
    const state = new Promise<KeeperState>((resolve) => (link.stateWaiter = resolve));
    link.connected(socket, owner.pid);
    link.send({ t: 'hello' });
    const s = await Promise.race([state, sleep(START_TIMEOUT_MS).then(() => null)]);
    if (!s) {
      socket.destroy();
      return null;
    }
    return { link, state: s };
  }

  private handle(m: FromKeeper): void {
    switch (m.t) {
      case 'demand':
        return this.events.demand(m.segment);
      case 'unblocked':
        return this.events.unblocked(m.ms);
      case 'reads':
        this.held = m.held;
        this.blocked = m.blocked;
        return;
      case 'state':
        this.stateWaiter?.({ sources: m.sources, segmentOf: m.segmentOf.map(bytesInt32), applied: m.applied });
        this.stateWaiter = null;
        return;
      case 'closed':
        this.closed?.(m.forced);
        return;
    }
  }

  private send(m: ToKeeper): void {
    if (!this.socket) this.outbox.push(m);
    else if (!this.gone) sendFrame(this.socket, m);
  }

  arrived(image: number, index: number, source: ChunkSource): void {
    const key = image * 4 + source;
    const list = this.pending.get(key);
    if (list) list.push(index);
    else this.pending.set(key, [index]);
    if (this.flushing) return;
    this.flushing = true;
    queueMicrotask(() => this.flush());
  }

  /** Sends the chunks marked present since the last flush, one message per image and source. */
  private flush(): void {
    this.flushing = false;
    for (const [key, list] of this.pending) {
      this.send({ t: 'arrived', image: key >> 2, source: (key & 3) as ChunkSource, chunks: u32Bytes(list) });
    }
    this.pending.clear();
  }

  redirected(image: number, index: number, segment: number): void {
    this.flush();
    this.send({ t: 'redirect', image, index, segment });
  }

  /** These chunks of `image` are missing again and wait for `segment` (a handoff's delta). */
  expected(image: number, segment: number, chunks: number[]): void {
    this.flush();
    this.send({ t: 'expect', image, segment, chunks: u32Bytes(chunks) });
  }

  /** Segment `segment` is applied and every chunk it brought marked present. */
  applied(segment: number): void {
    this.flush();
    this.send({ t: 'applied', segment });
  }

  /** Fails every held guest read and every later one (teardown). */
  fail(): void {
    this.send({ t: 'fail' });
  }

  /** Ends the keeper: it unmounts and exits. Forces both if it does not within the time limit. */
  async close(mountpoint: string): Promise<{ forced: boolean }> {
    this.flush();
    if (!this.socket) return { forced: false }; // never started
    const wasGone = this.gone;
    const answer = new Promise<boolean | null>((resolve) => (this.closed = resolve));
    this.send({ t: 'close' });
    // The keeper's answer: whether it had to force its unmount; null: no answer in time, or it was gone.
    const said = wasGone ? null : await Promise.race([answer, sleep(CLOSE_TIMEOUT_MS).then(() => null)]);
    this.socket.destroy();
    // It answers, then closes its files and exits: the session is over once the process is.
    if (said !== null) await exited(this.pid, CLOSE_TIMEOUT_MS);
    if (said === false) return { forced: false };
    const why =
      said === true
        ? 'had to abort its FUSE connection to unmount'
        : wasGone
          ? 'was gone'
          : `did not unmount and exit within ${CLOSE_TIMEOUT_MS} ms`;
    publish('cleanupFailed', {
      what: `end the keeper of ${mountpoint}`,
      error: new VmsynthError('VMS_INTERRUPTED', `the keeper (pid ${this.pid}) ${why}`),
    });
    if (said === null && this.pid > 0) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
      const m = (await listFuseMounts()).find((x) => x.mountpoint === mountpoint);
      if (m) await forceUnmount(m);
    }
    return { forced: true };
  }

  /** Lets go of the keeper without ending it: it waits out its grace period for a server to adopt it. */
  detach(): void {
    this.flush();
    this.socket?.destroy();
  }
}

/** Waits until process `pid` is gone (a zombie counts as gone), for at most `ms`. */
async function exited(pid: number, ms: number): Promise<void> {
  const end = performance.now() + ms;
  while (pid > 0 && performance.now() < end) {
    const fields = await procStat(pid);
    if (fields === null || fields[0] === 'Z') return;
    await sleep(10);
  }
}

function connect(file: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(file);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Why a keeper did not start, with what it logged. */
async function keeperFailure(dir: string, what: string): Promise<VmsynthError> {
  const text = await fsp.readFile(path.join(dir, KEEPER_LOG), 'utf8').catch(() => '');
  const last = text.trim().split('\n').at(-1) ?? '';
  let code: string | undefined;
  let message = last;
  try {
    const j = JSON.parse(last) as { code?: string; error?: string };
    code = j.code;
    message = j.error ?? last;
  } catch {
    // not a JSON line: quoted as it is
  }
  return new VmsynthError(
    code === 'VMS_NO_FUSE' || code === 'VMS_FUSE_MOUNT' ? code : 'VMS_FUSE_MOUNT',
    `${what}${message ? `: ${message}` : ''} (log: ${path.join(dir, KEEPER_LOG)})`,
  );
}
