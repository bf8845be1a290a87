/**
 * The synthesis server (`vmsynth serve`): a TCP listener speaking vmsynth/1,
 * one synthesis session per connection, many connections at once.
 *
 * It owns the libvirt connection and the trusted keys that every session
 * shares, the set of live connections, and shutdown: close() ends every
 * session (VM destroyed, FUSE unmounted, files removed) before it resolves.
 * A connection's troubles stay its own: a bad frame, a bad manifest or a
 * vanished client ends that session and nothing else.
 */
import net from 'node:net';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { checkFuseDevice } from '../fs/fuse-images.js';
import { trustedKeys } from '../overlay/keys.js';
import { DEFAULT_PORT } from '../protocol/messages.js';
import { cleanStale } from '../vm/janitor.js';
import { Libvirt } from '../vm/libvirt.js';
import { Connection } from './connection.js';

export interface ServeOptions {
  /** Listen address (default 127.0.0.1). */
  host?: string;
  /** Port (default 8021; 0 picks a free one). */
  port?: number;
  /** Extra trusted public key files (besides the key directory's trusted/). */
  trust?: string[];
  /** When set, clients must present this token in hello. */
  token?: string;
  /** Worker threads per session for verify + decompress + apply (default 2). */
  threads?: number;
  /** Background bytes requested and not yet applied, per session (default 2 MiB). */
  maxInFlightBytes?: number;
  /** Sessions at once; more are refused with VMS_BUSY (default 8). */
  maxSessions?: number;
  /** Time a new connection has to open its session (default 30 s). */
  handshakeTimeoutMs?: number;
  fuseDevice?: string;
}

export interface ServerContext {
  lv: Libvirt;
  trusted: Map<string, Buffer>;
  opts: ServeOptions;
  /** Sessions now running (for the limit). */
  sessions(): number;
}

export class SynthServer {
  private readonly connections = new Set<Connection>();
  private closing: Promise<void> | null = null;

  private constructor(private readonly server: net.Server, private readonly ctx: ServerContext) {}

  /** Checks FUSE, connects to libvirt, cleans what a crashed run left, loads trusted keys, then listens. */
  static async listen(opts: ServeOptions = {}): Promise<SynthServer> {
    await checkFuseDevice(opts.fuseDevice);
    const lv = await Libvirt.connect();
    try {
      await cleanStale(lv);
      const trusted = await trustedKeys(opts.trust ?? []);
      const server = net.createServer();
      let self: SynthServer | null = null;
      const ctx: ServerContext = { lv, trusted, opts, sessions: () => self?.liveSessions() ?? 0 };
      self = new SynthServer(server, ctx);
      const s = self;
      server.on('connection', (socket) => s.accept(socket));
      await new Promise<void>((resolve, reject) => {
        server.once('error', (err: NodeJS.ErrnoException) => reject(new VmsynthError('VMS_USAGE', `cannot listen on ${opts.host ?? '127.0.0.1'}:${opts.port ?? DEFAULT_PORT}: ${err.message}`, { cause: err })));
        server.listen(opts.port ?? DEFAULT_PORT, opts.host ?? '127.0.0.1', () => resolve());
      });
      const a = s.address();
      publish('serverListening', { host: a.host, port: a.port, version: VMSYNTH_VERSION });
      return s;
    } catch (err) {
      await lv.close();
      throw err;
    }
  }

  address(): { host: string; port: number } {
    const a = this.server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  private liveSessions(): number {
    let n = 0;
    for (const c of this.connections) if (c.hasSession) n++;
    return n;
  }

  /** Connections now open. */
  get connectionCount(): number {
    return this.connections.size;
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const c = new Connection(socket, this.ctx, () => this.connections.delete(c));
    this.connections.add(c);
  }

  /** Stops listening, ends every session (telling its client why), and closes libvirt. Idempotent. */
  close(reason = new VmsynthError('VMS_SHUTTING_DOWN', 'the server is shutting down')): Promise<void> {
    this.closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
      await Promise.all([...this.connections].map((c) => c.shutdown(reason)));
      await stopped;
      await this.ctx.lv.close();
    })();
    return this.closing;
  }
}
