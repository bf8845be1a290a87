/**
 * The keeper: a small process per synthesis session that owns the session's
 * FUSE mount, so the VM outlives the server (a restart, an upgrade, a
 * crash). QEMU maps its memory from that mount; if the process serving it
 * died, the next page fault would kill the VM.
 *
 * It serves the launch images from the base files and the files of received
 * chunks, through its own copy of the chunk maps and the read gates
 * (arrivals.ts): a read of a chunk not arrived is held and its segment asked
 * of the server. The server applies segments into the received files itself
 * and tells the keeper which chunks are now present (keeper-link.ts). With
 * no server attached, reads of present chunks go on and the rest wait; a
 * server that starts adopts the keeper and is handed its maps. If none does
 * within the session's grace period, the keeper ends the session itself:
 * held reads fail, the domain is destroyed, the mount and the run directory
 * go.
 */
import { promises as fsp, writeSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { VmsynthError } from '../core/errors.js';
import { unpackOne } from '../core/msgpack.js';
import { ChunkMap, ChunkSource } from '../fs/chunk-map.js';
import { ImageMount } from '../fs/fuse-images.js';
import { fileReader, ImageFile, zeroReader } from '../fs/image.js';
import { qemuLogPath } from '../vm/machine.js';
import { currentOwner, KEEPER_FILE } from '../vm/run-dir.js';
import { ChunkArrivals } from './arrivals.js';
import {
  bytesInt32,
  frameReader,
  bytesU32,
  int32Bytes,
  KEEPER_SOCKET,
  KEEPER_SPEC,
  sendFrame,
  type FromKeeper,
  type KeeperSpec,
  type ToKeeper,
} from './keeper-wire.js';

/** How often at most the held-read summary goes to the server. */
const READS_EVERY_MS = 100;

let logFd = 2;

/** Where the keeper's log lines go from now on (a spare taking a session: its keeper.log). */
export function logTo(fd: number): void {
  logFd = fd;
}

function log(event: string, fields: Record<string, unknown> = {}): void {
  const line = JSON.stringify({ time: new Date().toISOString(), pid: process.pid, event, ...fields }) + '\n';
  try {
    writeSync(logFd, line);
  } catch {
    // a log that cannot be written does not stop the keeper
  }
}

export class ImageKeeper {
  private server: net.Socket | null = null;
  private readonly applied = new Set<number>();
  private graceTimer: NodeJS.Timeout | null = null;
  private readsTimer: NodeJS.Timeout | null = null;
  private ending: Promise<void> | null = null;
  private listener!: net.Server;
  private mount!: ImageMount;
  private readonly handles: FileHandle[] = [];

  private constructor(
    private readonly dir: string,
    private readonly spec: KeeperSpec,
    private readonly arrivals: ChunkArrivals,
  ) {}

  /** Starts the keeper of run directory `dir`: mounts, listens, and waits for its server. */
  static async start(dir: string): Promise<ImageKeeper> {
    process.chdir(dir); // its home: /proc/PID/cwd tells which session a keeper (a spare, say) serves
    const spec = unpackOne(await fsp.readFile(path.join(dir, KEEPER_SPEC))) as KeeperSpec;
    const maps = spec.sizes.map((n) => new ChunkMap(n));
    let keeper: ImageKeeper | null = null;
    const arrivals = new ChunkArrivals(
      maps,
      (segment) => keeper?.toServer({ t: 'demand', segment }),
      (ms) => {
        keeper?.toServer({ t: 'unblocked', ms });
        keeper?.readsChanged();
      },
    );
    arrivals.load({ sources: spec.sources, segmentOf: spec.segmentOf.map(bytesInt32) });
    const k = (keeper = new ImageKeeper(dir, spec, arrivals));
    await fsp.writeFile(path.join(dir, KEEPER_FILE), JSON.stringify(await currentOwner()));
    const open = async (file: string) => {
      const h = await fsp.open(file, 'r');
      k.handles.push(h);
      return h;
    };
    const gates = [arrivals.gate(0), arrivals.gate(1)];
    const image = async (i: number, name: string) =>
      new ImageFile(
        name,
        maps[i]!,
        {
          [ChunkSource.BASE]: fileReader(await open(spec.base[i]!), spec.base[i]!),
          [ChunkSource.ZERO]: zeroReader,
          [ChunkSource.OVERLAY]: fileReader(await open(spec.received[i]!), spec.received[i]!),
        },
        undefined,
        (offset, length) => {
          const held = gates[i]!(offset, length);
          if (held) k.readsChanged();
          return held;
        },
      );
    k.mount = await ImageMount.mount(spec.mountpoint, [await image(0, 'memory.img'), await image(1, 'disk.img')]);
    const sock = path.join(dir, KEEPER_SOCKET);
    await fsp.rm(sock, { force: true });
    k.listener = net.createServer((c) => k.attach(c));
    await new Promise<void>((resolve, reject) => {
      k.listener.once('error', reject);
      k.listener.listen(sock, () => resolve());
    });
    process.on('SIGTERM', () => void k.abandon('SIGTERM'));
    process.on('SIGINT', () => void k.abandon('SIGINT'));
    k.startGrace(); // until the server that started it connects
    log('keeperReady', { session: spec.session, mountpoint: k.mount.mountpoint });
    return k;
  }

  private toServer(m: FromKeeper): void {
    if (this.server && !this.server.destroyed) sendFrame(this.server, m);
  }

  /** A server connected: it replaces any earlier one (which is gone, or about to be). */
  private attach(c: net.Socket): void {
    if (this.ending) return void c.destroy();
    const old = this.server;
    this.server = c;
    old?.destroy();
    this.stopGrace();
    log('serverAttached', { session: this.spec.session });
    const read = frameReader((v) => this.handle(v as ToKeeper));
    c.on('data', (chunk: Buffer) => {
      try {
        read(chunk);
      } catch (err) {
        log('badFrame', { error: String(err) });
        c.destroy();
      }
    });
    c.on('error', () => undefined);
    c.on('close', () => {
      if (this.server !== c || this.ending) return;
      this.server = null;
      log('serverDetached', { session: this.spec.session, graceMs: this.spec.graceMs });
      this.startGrace();
    });
  }

  private handle(m: ToKeeper): void {
    switch (m.t) {
      case 'hello': {
        const s = this.arrivals.state();
        this.toServer({
          t: 'state',
          sources: s.sources,
          segmentOf: s.segmentOf.map(int32Bytes),
          applied: [...this.applied],
        });
        // Reads held while no server was attached asked for their segments then: ask again.
        for (const segment of this.arrivals.waitingSegments()) this.toServer({ t: 'demand', segment });
        this.readsChanged();
        return;
      }
      case 'arrived':
        for (const i of bytesU32(m.chunks)) this.arrivals.arrived(m.image, i, m.source);
        return;
      case 'redirect':
        this.arrivals.redirect(m.image, m.index, m.segment);
        return;
      case 'expect':
        for (const i of bytesU32(m.chunks)) this.arrivals.expect(m.image, i, m.segment);
        return;
      case 'applied':
        this.applied.add(m.segment);
        return;
      case 'fail':
        this.arrivals.failAll();
        return;
      case 'close':
        void this.close();
        return;
    }
  }

  /** The held reads changed: their summary goes to the server soon. */
  private readsChanged(): void {
    if (this.readsTimer || !this.server) return;
    this.readsTimer = setTimeout(() => {
      this.readsTimer = null;
      this.toServer({ t: 'reads', held: this.arrivals.held(), blocked: this.arrivals.stats() });
    }, READS_EVERY_MS);
  }

  private startGrace(): void {
    this.stopGrace();
    this.graceTimer = setTimeout(() => void this.abandon('grace-expired'), this.spec.graceMs);
  }

  private stopGrace(): void {
    if (this.graceTimer) clearTimeout(this.graceTimer);
    this.graceTimer = null;
  }

  /** The server ends the session: unmount (it has destroyed the domain) and exit. */
  private close(): Promise<void> {
    this.ending ??= (async () => {
      this.arrivals.failAll();
      const { forced } = await this.mount.unmount();
      this.toServer({ t: 'closed', forced });
      await this.release();
      log('keeperClosed', { session: this.spec.session, forced });
    })().finally(() => this.exit());
    return this.ending;
  }

  /** No server took the session back: end it here, VM, mount and files. */
  private abandon(why: string): Promise<void> {
    this.ending ??= (async () => {
      log('keeperAbandoning', { session: this.spec.session, why });
      // Held reads fail first: a vCPU blocked in one keeps QEMU from exiting.
      this.arrivals.failAll(new VmsynthError('VMS_PEER_GONE', `no server adopted session ${this.spec.session}`));
      // Loaded only now: libvirt's binding is most of what a keeper would otherwise hold in memory.
      const { Libvirt } = await import('../vm/libvirt.js');
      const lv = await Libvirt.connect().catch((err: unknown) => (log('libvirtFailed', { error: String(err) }), null));
      if (lv) {
        await lv.destroy(this.spec.domain).catch((err: unknown) => log('destroyFailed', { error: String(err) }));
        await lv.close().catch(() => undefined);
      }
      await fsp.rm(qemuLogPath(this.spec.domain), { force: true });
      await this.mount.unmount();
      await this.release();
      await fsp.rm(this.dir, { recursive: true, force: true });
      log('keeperAbandoned', { session: this.spec.session, why });
    })().finally(() => this.exit());
    return this.ending;
  }

  private async release(): Promise<void> {
    this.stopGrace();
    if (this.readsTimer) clearTimeout(this.readsTimer);
    await new Promise<void>((resolve) => this.listener.close(() => resolve()));
    await Promise.all(this.handles.map((h) => h.close().catch(() => undefined)));
    await fsp.rm(path.join(this.dir, KEEPER_SOCKET), { force: true });
    await fsp.rm(path.join(this.dir, KEEPER_FILE), { force: true });
  }

  private exit(): void {
    // Let the `closed` frame reach the server before the socket goes with the process.
    const s = this.server;
    if (s && !s.destroyed) s.end(() => process.exit(0));
    else process.exit(0);
    setTimeout(() => process.exit(0), 1000).unref();
  }
}
