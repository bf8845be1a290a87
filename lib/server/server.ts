/**
 * The synthesis server (`vmsynth serve`): a TCP listener speaking the vmsynth protocol,
 * one synthesis session per connection, many connections at once.
 *
 * It owns the libvirt connection and the trusted keys that every session
 * shares, the set of live connections, and shutdown: close() ends every
 * session (VM destroyed, FUSE unmounted, files removed) before it resolves.
 * A connection's troubles stay its own: a bad frame, a bad manifest or a
 * vanished client ends that session and nothing else.
 */
import net from 'node:net';
import tls from 'node:tls';
import { tokenSha256, type ClientCredential } from '../core/config.js';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { checkFuseDevice } from '../fs/fuse-images.js';
import { trustedKeys } from '../overlay/keys.js';
import { DEFAULT_PORT } from '../protocol/messages.js';
import { listBases, loadBase, verifyBase, type Base } from '../vm/base.js';
import { cleanStale } from '../vm/janitor.js';
import { Libvirt } from '../vm/libvirt.js';
import { Authenticator, RateLimiter } from './admission.js';
import { Connection } from './connection.js';

export interface ServeOptions {
  /** Listen address (default 127.0.0.1). */
  host?: string;
  /** Port (default 8021; 0 picks a free one). */
  port?: number;
  /** Extra trusted public key files (besides the key directory's trusted/). */
  trust?: string[];
  /** Clients allowed in (name + SHA-256 of the token); none: no authentication. */
  clients?: ClientCredential[];
  /** Shorthand for one client, named "token", with this token. */
  token?: string;
  /** PEM certificate and key: the server speaks TLS. */
  tls?: { cert: Buffer | string; key: Buffer | string };
  /** Sessions at once per authenticated client name (default: maxSessions). */
  maxSessionsPerClient?: number;
  /** Guest RAM + in-flight segment bytes one session may use (default: no limit). */
  sessionMemoryBytes?: number;
  /** New connections per minute from one address (default 120). */
  connectionsPerMinute?: number;
  /** Re-hash every local base before listening (default false; `vmsynth serve` does). Bases added later are hashed at first use. */
  verifyBases?: boolean;
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
  auth: Authenticator;
  /** Sessions now running (for the limit), or those of one client. */
  sessions(client?: string): number;
  /** Resolves when the base's files hash as its manifest says (hashed once per server). */
  checkBase(base: Base): Promise<void>;
}

export class SynthServer {
  private readonly connections = new Set<Connection>();
  private closing: Promise<void> | null = null;

  private constructor(private readonly server: net.Server, private readonly ctx: ServerContext, private readonly rate: RateLimiter) {}

  /**
   * Checks FUSE, connects to libvirt, cleans what a crashed run left, loads
   * trusted keys, verifies the bases (with verifyBases), then listens.
   */
  static async listen(opts: ServeOptions = {}): Promise<SynthServer> {
    await checkFuseDevice(opts.fuseDevice);
    const lv = await Libvirt.connect();
    try {
      await cleanStale(lv);
      const trusted = await trustedKeys(opts.trust ?? []);
      const verified = new Map<string, Promise<void>>();
      const checkBase = (base: Base): Promise<void> => {
        const key = `${base.dir}\0${base.manifest.created.at}`;
        let p = verified.get(key);
        if (!p) {
          p = verifyBase(base).then(() => undefined);
          p.catch(() => undefined);
          verified.set(key, p);
        }
        return p;
      };
      if (opts.verifyBases) {
        for (const entry of await listBases()) {
          if (!entry.ok) {
            publish('baseChecked', { base: entry.name, ok: false, error: entry.error });
            continue;
          }
          const t0 = performance.now();
          const base = await loadBase(entry.dir);
          const error = await checkBase(base).then(() => undefined, (e: unknown) => e);
          publish('baseChecked', { base: entry.name, ok: !error, ms: Math.round(performance.now() - t0), ...(error ? { error } : {}) });
        }
      }
      const clients = [...(opts.clients ?? []), ...(opts.token !== undefined ? [{ name: 'token', tokenSha256: tokenSha256(opts.token) }] : [])];
      const server = opts.tls ? tls.createServer({ cert: opts.tls.cert, key: opts.tls.key, minVersion: 'TLSv1.2' }) : net.createServer();
      let self: SynthServer | null = null;
      const ctx: ServerContext = {
        lv, trusted, opts, auth: new Authenticator(clients), checkBase,
        sessions: (client) => self?.liveSessions(client) ?? 0,
      };
      self = new SynthServer(server, ctx, new RateLimiter(opts.connectionsPerMinute ?? 120));
      const s = self;
      server.on(opts.tls ? 'secureConnection' : 'connection', (socket: net.Socket) => s.accept(socket));
      if (opts.tls) server.on('tlsClientError', (err: Error, socket: net.Socket) => {
        publish('connectionRefused', { peer: `${socket.remoteAddress}:${socket.remotePort}`, code: 'VMS_PROTOCOL', message: `TLS handshake failed: ${err.message}` });
        socket.destroy();
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', (err: NodeJS.ErrnoException) => reject(new VmsynthError('VMS_USAGE', `cannot listen on ${opts.host ?? '127.0.0.1'}:${opts.port ?? DEFAULT_PORT}: ${err.message}`, { cause: err })));
        server.listen(opts.port ?? DEFAULT_PORT, opts.host ?? '127.0.0.1', () => resolve());
      });
      const a = s.address();
      publish('serverListening', { host: a.host, port: a.port, version: VMSYNTH_VERSION, tls: !!opts.tls, auth: ctx.auth.required });
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

  private liveSessions(client?: string): number {
    let n = 0;
    for (const c of this.connections) if (c.hasSession && (client === undefined || c.client === client)) n++;
    return n;
  }

  /** Sessions running now. */
  get sessionCount(): number {
    return this.liveSessions();
  }

  /** True until close() starts. */
  get accepting(): boolean {
    return this.closing === null;
  }

  /** libvirt still answers (for /readyz). */
  libvirtAlive(): Promise<boolean> {
    return this.ctx.lv.alive();
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
    const limit = this.ctx.opts.connectionsPerMinute ?? 120;
    if (!this.rate.admit(socket.remoteAddress ?? '?')) void c.end(new VmsynthError('VMS_RATE_LIMITED', `more than ${limit} connections in the last minute from ${socket.remoteAddress}`));
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
