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
import { DEFAULTS } from '../core/defaults.js';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { checkFuseDevice } from '../fs/fuse-images.js';
import { trustedKeys } from '../overlay/keys.js';
import type { Overlay } from '../overlay/reader.js';
import { ObjectSource } from '../store/object-source.js';
import { ObjectStore, parseS3Url, s3Url, type ObjectStoreOptions } from '../store/object-store.js';
import { SegmentStore } from '../store/segment-store.js';
import { SessionSource } from '../store/session-source.js';
import type { SynthRecord } from '../synth/session-record.js';
import { KeeperPool } from '../synth/keeper-pool.js';
import { SynthSession } from '../synth/session.js';
import { requireAccel } from '../vm/accel.js';
import { findBaseWithImages, type Base } from '../vm/base.js';
import { baseChecker, checkAllBases } from './base-checks.js';
import { cloudletInfo } from './cloudlet-info.js';
import { cleanStale } from '../vm/janitor.js';
import { Libvirt } from '../vm/libvirt.js';
import { newRunId } from '../vm/run-dir.js';
import { Admission, defaultLimits } from './admission.js';
import { Authenticator, RateLimiter } from './auth.js';
import { ByteBudget } from './byte-budget.js';
import { Connection } from './connection.js';
import type { ServerContext, SessionRequest } from './context.js';
import { adoptSessions, keepServed } from './adoption.js';
import { Handoffs } from './handoffs.js';
import type { HandoffReport, HandoffTuning } from './handoff-out.js';
import type { ServedSession } from './served-session.js';
import { SessionRegistry } from './session-registry.js';

export interface ServeOptions {
  /** Listen address (default: DEFAULTS.listenHost). */
  host?: string;
  /** Port (default: DEFAULTS.port; 0 picks a free one). */
  port?: number;
  /** Extra trusted public key files (besides the key directory's trusted/). */
  trust?: string[];
  /** Clients allowed in (name + SHA-256 of the token); none: no authentication. */
  clients?: ClientCredential[];
  /** Shorthand for one client, named "token", with this token. */
  token?: string;
  /** PEM certificate and key: the server speaks TLS. */
  tls?: { cert: Buffer | string; key: Buffer | string };
  /** Sessions at once per authenticated client name (default: DEFAULTS.maxSessionsPerClient; null: no per-client limit). */
  maxSessionsPerClient?: number | null;
  /** Guest RAM + in-flight segment bytes one session may use (default: DEFAULTS.sessionMemoryMib; null: no limit). */
  sessionMemoryBytes?: number | null;
  /** New connections per minute from one address (default: DEFAULTS.connectionsPerMinute). */
  connectionsPerMinute?: number;
  /** Re-hash every local base before listening (default false; `vmsynth serve` does). Bases added later are hashed at first use. */
  verifyBases?: boolean;
  /** Worker threads per session for verify + decompress + apply (default: DEFAULTS.threads). */
  threads?: number;
  /** Background bytes requested and not yet applied, per session (default: DEFAULTS.maxInFlightKib). */
  maxInFlightBytes?: number;
  /** Sessions at once; more are refused with VMS_BUSY (default: DEFAULTS.maxSessions). */
  maxSessions?: number;
  /** Time a new connection has to open or resume its session (default: DEFAULTS.handshakeTimeoutS). */
  handshakeTimeoutMs?: number;
  /** A ping goes to a client that heard nothing for this long (default: DEFAULTS.keepaliveS). */
  keepaliveMs?: number;
  /** A connection that sent or read nothing for this long is dropped; its session waits for a resume (default: DEFAULTS.idleS). */
  idleMs?: number;
  /** How long a session whose connection dropped waits for a resume; 0 ends it at the drop (default: DEFAULTS.graceS). */
  graceMs?: number;
  /** Offload requests running plus replies not yet acknowledged, per session (default: DEFAULTS.maxOffloadsInFlight). */
  maxOffloadsInFlight?: number;
  /** Bytes all connections may buffer before their sessions start (default: DEFAULTS.preSessionMemoryMib). */
  preSessionMemoryBytes?: number;
  fuseDevice?: string;
  /** The cloudlet store (warm starts); none: every segment comes from the client. */
  store?: { dir: string; maxBytes: number; admitReceived?: boolean; lookaside?: boolean };
  /** The object store sessions may fetch their overlay from, when the client names it by a URL under `sources`. */
  objects?: ObjectStoreOptions & { sources: string[]; parallel?: number };
  /**
   * Sessions outlive the server (default true): a keeper process serves each session's images, a
   * stop (release()) or a crash leaves the VMs running for graceMs, and the next server adopts them.
   */
  keepSessions?: boolean;
  /** Handoffs (server/handoffs.ts): this cloudlet's name, the token other cloudlets want, pre-copy tuning. */
  handoff?: { name?: string; token?: string; tuning?: Partial<HandoffTuning> };
}

/** A connection over its address's rate must authenticate within this long. */
const RATE_LIMITED_HELLO_MS = 2000;

export class SynthServer {
  private readonly connections = new Set<Connection>();
  private closing: Promise<void> | null = null;

  private readonly rate: RateLimiter;
  private readonly registry: SessionRegistry;
  private readonly ctx: ServerContext;
  private readonly checkBase: (base: Base) => Promise<void>;
  private readonly handoffs: Handoffs;
  /** A spare keeper started ahead of each session's need. */
  private readonly pool = new KeeperPool();

  private constructor(
    private readonly server: net.Server,
    private readonly lv: Libvirt,
    private readonly opts: ServeOptions,
    trusted: Map<string, Buffer>,
    /** The cloudlet store, when configured. */
    readonly store: SegmentStore | null,
    private readonly objects: ObjectStore | null,
  ) {
    this.rate = new RateLimiter(opts.connectionsPerMinute ?? DEFAULTS.connectionsPerMinute);
    // An ended session's fate is remembered for a grace period after it could have been resumed.
    this.registry = new SessionRegistry(2 * (opts.graceMs ?? DEFAULTS.graceS * 1000) + 60_000);
    const clients = [
      ...(opts.clients ?? []),
      ...(opts.token !== undefined ? [{ name: 'token', tokenSha256: tokenSha256(opts.token) }] : []),
    ];
    const auth = new Authenticator(clients);
    const checkBase = baseChecker();
    const d = defaultLimits();
    const admission = new Admission(
      {
        maxSessions: opts.maxSessions ?? d.maxSessions,
        maxSessionsPerClient:
          opts.maxSessionsPerClient === undefined ? d.maxSessionsPerClient : opts.maxSessionsPerClient,
        sessionMemoryBytes: opts.sessionMemoryBytes === undefined ? d.sessionMemoryBytes : opts.sessionMemoryBytes,
        maxInFlightBytes: opts.maxInFlightBytes ?? d.maxInFlightBytes,
      },
      {
        trusted,
        authRequired: auth.required,
        checkBase,
        findBase: findBaseWithImages,
        sessions: (client) => this.liveSessions(client),
        checkAccel: async (base) => void (await requireAccel(base)),
      },
    );
    this.ctx = {
      auth,
      admit: (client, manifest) => admission.admit(client, manifest),
      startSession: (req) => this.startSynth(req, newRunId()),
      ...(this.keeps ? { keep: (served: ServedSession) => void keepServed(served).catch(() => undefined) } : {}),
      sessions: this.registry,
      timing: {
        handshakeTimeoutMs: opts.handshakeTimeoutMs ?? DEFAULTS.handshakeTimeoutS * 1000,
        keepaliveMs: opts.keepaliveMs ?? DEFAULTS.keepaliveS * 1000,
        idleMs: opts.idleMs ?? DEFAULTS.idleS * 1000,
        graceMs: opts.graceMs ?? DEFAULTS.graceS * 1000,
      },
      maxOffloads: opts.maxOffloadsInFlight ?? DEFAULTS.maxOffloadsInFlight,
      preSession: new ByteBudget(opts.preSessionMemoryBytes ?? DEFAULTS.preSessionMemoryMib * 2 ** 20),
      info: cloudletInfo(() => ({ sessions: this.liveSessions(), maxSessions: opts.maxSessions ?? d.maxSessions })),
    };
    this.handoffs = new Handoffs({
      ...opts.handoff,
      admit: (client, manifest) => admission.admit(client, manifest),
      start: (req) => this.startSynth(req, newRunId()),
      sessions: this.registry,
      ...(this.keeps ? { keep: (served: ServedSession) => void keepServed(served).catch(() => undefined) } : {}),
      ...this.ctx.timing,
      maxOffloads: this.ctx.maxOffloads,
      store,
    });
    this.ctx.handoffs = this.handoffs;
    this.checkBase = checkBase;
  }

  /**
   * Checks FUSE, connects to libvirt, cleans what a crashed run left, loads
   * trusted keys, verifies the bases (with verifyBases), then listens.
   */
  static async listen(opts: ServeOptions = {}): Promise<SynthServer> {
    await checkFuseDevice(opts.fuseDevice);
    const lv = await Libvirt.connect();
    let store: SegmentStore | null = null;
    const objects = opts.objects ? new ObjectStore(opts.objects) : null;
    try {
      await cleanStale(lv);
      if (opts.store) store = await SegmentStore.open(opts.store);
      const server = opts.tls
        ? tls.createServer({ cert: opts.tls.cert, key: opts.tls.key, minVersion: 'TLSv1.2' })
        : net.createServer();
      const trusted = await trustedKeys(opts.trust ?? []);
      const s = new SynthServer(server, lv, opts, trusted, store, objects);
      if (opts.verifyBases) await checkAllBases(s.checkBase);
      await s.adopt(trusted);
      if (s.keeps) s.pool.warm();
      server.on(opts.tls ? 'secureConnection' : 'connection', (socket: net.Socket) => s.accept(socket));
      if (opts.tls)
        server.on('tlsClientError', (err: Error, socket: net.Socket) => {
          publish('connectionRefused', {
            peer: `${socket.remoteAddress}:${socket.remotePort}`,
            code: 'VMS_PROTOCOL',
            message: `TLS handshake failed: ${err.message}`,
          });
          socket.destroy();
        });
      const host = opts.host ?? DEFAULTS.listenHost;
      const port = opts.port ?? DEFAULTS.port;
      await new Promise<void>((resolve, reject) => {
        server.once('error', (err: NodeJS.ErrnoException) =>
          reject(new VmsynthError('VMS_USAGE', `cannot listen on ${host}:${port}: ${err.message}`, { cause: err })),
        );
        server.listen(port, host, () => resolve());
      });
      const a = s.address();
      publish('serverListening', {
        host: a.host,
        port: a.port,
        version: VMSYNTH_VERSION,
        tls: !!opts.tls,
        auth: s.ctx.auth.required,
      });
      return s;
    } catch (err) {
      store?.close();
      objects?.close();
      await lv.close();
      throw err;
    }
  }

  private get keeps(): boolean {
    return this.opts.keepSessions ?? true;
  }

  /** Starts a session's synthesis (`adopt`: takes over one a previous server left to its keeper). */
  private async startSynth(req: SessionRequest, id: string, adopt?: SynthRecord): Promise<SynthSession> {
    const { opts, store } = this;
    // The session leases its overlay in the store from here on; a session that fails to start releases it.
    const source = store
      ? new SessionSource(store, req.overlay, id, {
          admitReceived: opts.store?.admitReceived ?? true,
          manifest: req.manifest,
        })
      : undefined;
    const fetcher = req.overlayUrl ? this.objectSource(req.overlayUrl, req.overlay, id) : undefined;
    const graceMs = opts.graceMs ?? DEFAULTS.graceS * 1000;
    try {
      return await SynthSession.start({
        ...req,
        id,
        lv: this.lv,
        threads: opts.threads,
        maxInFlightBytes: opts.maxInFlightBytes,
        fuseDevice: opts.fuseDevice,
        ...(source ? { store: source } : {}),
        ...(fetcher ? { objects: fetcher } : {}),
        lookaside: req.lookaside === true && (opts.store?.lookaside ?? true),
        ...(this.keeps && graceMs > 0
          ? { keeper: { graceMs, manifest: req.manifest, overlayUrl: req.overlayUrl, pool: this.pool } }
          : {}),
        ...(adopt ? { adopt } : {}),
      });
    } catch (err) {
      fetcher?.close();
      await source?.close();
      throw err;
    }
  }

  /** Takes over the sessions a previous server left to their keepers. */
  private async adopt(trusted: Map<string, Buffer>): Promise<void> {
    await adoptSessions({
      trusted,
      findBase: findBaseWithImages,
      start: (req, id, record) => this.startSynth(req, id, record),
      registry: this.registry,
      graceMs: this.opts.graceMs ?? DEFAULTS.graceS * 1000,
      maxOffloads: this.opts.maxOffloadsInFlight ?? DEFAULTS.maxOffloadsInFlight,
    });
  }

  /** The object source for a URL a client named, or none (not configured, or not under `sources`: said in the log). */
  private objectSource(url: string, overlay: Overlay, session: string): ObjectSource | undefined {
    const allowed = this.opts.objects?.sources ?? [];
    let reason = this.objects ? 'not-allowed' : 'not-configured';
    try {
      const loc = parseS3Url(url);
      const normal = s3Url(loc);
      if (this.objects && allowed.some((a) => normal === a || normal.startsWith(`${a}/`)))
        return new ObjectSource(this.objects, loc, overlay, session, this.opts.objects?.parallel ?? 4);
    } catch {
      reason = 'bad-url';
    }
    publish('objectStoreFallback', { session, url: url.slice(0, 200), segment: null, reason });
    return undefined;
  }

  address(): { host: string; port: number } {
    const a = this.server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  /** Sessions running, waiting for a resume, or being started; all or one client's. */
  private liveSessions(client?: string): number {
    let n = this.registry.count(client);
    for (const c of this.connections) if (c.starting && (client === undefined || c.client === client)) n++;
    return n + this.handoffs.starting(client);
  }

  /** Moves session `id`'s VM to the cloudlet at `to` (server/handoffs.ts); resolves when it runs there. */
  handoff(id: string, to: { host: string; port: number }, opts: { whole?: boolean } = {}): Promise<HandoffReport> {
    const served = this.registry.all().find((s) => s.id === id);
    if (!served)
      return Promise.reject(new VmsynthError('VMS_SESSION_GONE', `this server has no session ${id.slice(0, 40)}`));
    return this.handoffs.start(served, to, opts);
  }

  /** The sessions here, for `vmsynth handoff`'s listing. */
  sessionList(): Array<{ id: string; client: string; vmRunning: boolean }> {
    return this.registry.all().map((s) => ({ id: s.id, client: s.client, vmRunning: s.vmRunning }));
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
    return this.lv.alive();
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
    if (!this.rate.admit(socket.remoteAddress ?? '?')) {
      const limit = this.opts.connectionsPerMinute ?? DEFAULTS.connectionsPerMinute;
      c.overRateLimit(
        new VmsynthError(
          'VMS_RATE_LIMITED',
          `more than ${limit} connections in the last minute from ${socket.remoteAddress}${this.ctx.auth.required ? ' without a valid client token' : ''}`,
          { details: { limit } },
        ),
        RATE_LIMITED_HELLO_MS,
      );
    }
  }

  /**
   * Stops listening and leaves every session whose VM runs to its keeper (without keepers, or
   * for a session still starting: ends it), then closes libvirt. The next server adopts them.
   */
  release(): Promise<void> {
    return this.shutdown(new VmsynthError('VMS_SHUTTING_DOWN', 'the server is restarting'), this.keeps);
  }

  /** Stops listening, ends every session (telling its client why), and closes libvirt. Idempotent. */
  close(reason = new VmsynthError('VMS_SHUTTING_DOWN', 'the server is shutting down')): Promise<void> {
    return this.shutdown(reason, false);
  }

  private shutdown(reason: VmsynthError, leave: boolean): Promise<void> {
    this.closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
      this.handoffs.close();
      // A session left to its keeper closes its own connection; the others are told why they end.
      await Promise.all([
        ...[...this.connections].filter((c) => !leave || !c.session).map((c) => c.shutdown(reason)),
        ...this.registry.all().map((s) => (leave && s.vmRunning ? s.leave() : s.end(reason))),
      ]);
      await stopped;
      this.pool.close();
      this.store?.close();
      this.objects?.close();
      await this.lv.close();
    })();
    return this.closing;
  }
}
