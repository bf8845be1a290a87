/**
 * The mobile side of a vmsynth session: open() hands a server an overlay, the
 * session answers its segment requests from the local overlay files, offload()
 * sends requests to the app in the VM, and finish() ends it. The session
 * outlives its connection: after a drop it reconnects with backoff within the
 * grace period and resumes with its secret; the server says what it still
 * wants and which replies are coming, and requests it never got are sent
 * again under the same id (the server runs each id once). Segment requests
 * come on two lanes (lanes.ts). Only the socket and the overlay file reads
 * are Node's; the protocol logic is plain TypeScript.
 */
import { promises as fsp } from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { VmsynthError } from '../core/errors.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { MANIFEST_FILE, SEGMENTS_FILE } from '../overlay/format.js';
import { Overlay } from '../overlay/reader.js';
import { FramedSocket } from '../protocol/framed-socket.js';
import { FRAME_CAPS, parseServerMessage, PROTOCOL, sessionHeader } from '../protocol/messages.js';
import type { Policy, ServerMessage } from '../protocol/messages.js';
import { reconnectWithin } from './reconnect.js';
import { connect, parseServer, serverError } from './connect.js';
import { SendLanes } from './lanes.js';
import { Offloads } from './offloads.js';
import type { ClientEvent, LoggedOffload, OffloadReply, OffloadRequest, Reconnect } from './types.js';
import type { SessionOptions, SessionState as State } from './types.js';

/** How long one reconnect attempt may take to connect (the first gets 10 s). */
const RECONNECT_CONNECT_MS = 2000;

export class ClientSession {
  /** The server the session is on (a handoff moves it). */
  server: { host: string; port: number };
  id = '';
  base = '';
  segments = 0;
  private secret: Buffer | null = null;
  private io: FramedSocket | null = null;
  /** The connection is attached to the session (accepted or resumed): segments and requests may go. */
  private live = false;
  private state: State = 'connecting';
  private keepaliveMs = 10_000;
  private graceMs = 0;
  private keeps = false; // the server keeps sessions across its restarts (welcome's `keeps`)
  private readonly offloads = new Offloads();
  private readonly t0: number;
  private liveness: ReturnType<typeof setInterval> | null = null;
  private droppedAt: number | null = null;
  private lastDrop = '';
  readonly reconnects: Reconnect[] = [];
  readonly lanes: SendLanes;
  private opened!: { resolve(): void; reject(e: Error): void };
  private finished: { resolve(stats: Record<string, unknown>): void; reject(e: Error): void } | null = null;
  private failure: Error | null = null;
  /** resolves with the server's resumedMs when the VM runs, and with appliedMs when the overlay is complete. */
  readonly ready: Promise<number>;
  readonly complete: Promise<number>;
  /** Rejects with the error the session fails with (never resolves). */
  readonly failed: Promise<never>;
  private failedReject!: (e: Error) => void;
  private readyResolve!: (ms: number) => void;
  private completeResolve!: (ms: number) => void;

  private constructor(
    private readonly opts: SessionOptions,
    readonly overlay: Overlay,
    private readonly manifest: Buffer,
    segmentsFile: fsp.FileHandle,
  ) {
    this.t0 = opts.startedAt ?? performance.now();
    this.server = parseServer(opts.server);
    this.ready = new Promise((r) => (this.readyResolve = r));
    this.complete = new Promise((r) => (this.completeResolve = r));
    this.failed = new Promise<never>((_, reject) => (this.failedReject = reject));
    this.failed.catch(() => undefined);
    this.lanes = new SendLanes({
      overlay,
      file: segmentsFile,
      io: () => (this.live ? this.io : null),
      maxBytesPerSecond: opts.maxBytesPerSecond,
      tamper: opts.tamper,
      hold: opts.holdBackground,
      event: (e) => this.emit(e),
      fail: (e) => this.fail(e),
      at: () => this.ms(),
    });
  }

  /** Opens a session: resolves once the server accepted the overlay (the VM may not run yet). */
  static async open(opts: SessionOptions): Promise<ClientSession> {
    const dir = path.resolve(opts.overlay);
    // The client checks the signature against the key the manifest carries; the server checks trust.
    const overlay = await Overlay.open(dir, { trusted: null });
    const manifest = await fsp.readFile(path.join(dir, MANIFEST_FILE));
    const file = await fsp.open(path.join(dir, SEGMENTS_FILE), 'r');
    const s = new ClientSession(opts, overlay, manifest, file);
    const opened = new Promise<void>((resolve, reject) => (s.opened = { resolve, reject }));
    opened.catch(() => undefined); // (a failed connect rejects it with no one waiting on it yet)
    try {
      await s.connectOnce(false);
      await opened;
    } catch (err) {
      s.fail(err as Error);
      throw err;
    }
    return s;
  }

  /** Milliseconds since the session object was made. */
  ms(): number {
    return Math.round(performance.now() - this.t0);
  }

  get policy(): Policy {
    return this.opts.policy ?? 'early-start';
  }

  private emit(e: ClientEvent): void {
    this.opts.onEvent?.(e);
  }

  private async connectOnce(resume: boolean): Promise<void> {
    const { host, port } = this.server;
    const socket: net.Socket = await connect(
      host,
      port,
      this.opts.signal,
      this.opts.tls,
      resume ? RECONNECT_CONNECT_MS : undefined,
    );
    if (this.state === 'done') {
      socket.destroy();
      return;
    }
    const io = new FramedSocket(socket, FRAME_CAPS.greeting, {
      frame: (f) => {
        if (this.io !== io) return;
        let m: ServerMessage;
        try {
          m = parseServerMessage(f);
        } catch (err) {
          this.fail(err as Error);
          return;
        }
        this.onMessage(m, resume);
      },
      invalid: (err) => {
        if (this.io === io) this.fail(err);
      },
      closed: (err) => {
        if (this.io === io) this.dropped(`the server closed the connection${err ? ` (${err.message})` : ''}`);
      },
    });
    this.io = io;
    io.send({
      type: 'hello',
      protocol: PROTOCOL,
      client: `vmsynth ${VMSYNTH_VERSION}`,
      ...(this.opts.token !== undefined ? { token: this.opts.token } : {}),
    });
    this.emit({ type: 'timeline', step: 'connected', ms: this.ms() });
    // A server that says nothing after a connect (a reconnect into a broken path, say) is dropped too.
    if (resume) this.watch();
  }

  private onMessage(m: ServerMessage, resume: boolean): void {
    const io = this.io!;
    switch (m.type) {
      case 'welcome':
        this.keepaliveMs = m.keepaliveMs;
        this.graceMs = m.graceMs;
        this.keeps = m.keeps === true;
        io.setMaxFrameBytes(FRAME_CAPS.session);
        if (resume) io.send({ type: 'resume', session: this.id, secret: this.secret! });
        else io.send(sessionHeader(this.policy, this.opts.overlayUrl, this.opts.lookaside !== false), this.manifest);
        return;
      case 'accepted':
        this.id = m.session;
        this.secret = m.secret;
        this.base = m.base;
        this.segments = m.segments;
        this.attached();
        this.emit({ type: 'accepted', session: m.session, base: m.base });
        this.opened.resolve();
        return;
      case 'resumed': {
        const lost = this.droppedAt === null ? 0 : Math.round(performance.now() - this.droppedAt);
        this.reconnects.push({ atMs: this.ms() - lost, lostMs: lost, reason: this.lastDrop });
        this.droppedAt = null;
        this.attached();
        this.emit({ type: 'reconnected', count: this.reconnects.length, lostMs: lost, reason: this.lastDrop });
        if (m.partialIndex !== undefined && m.partialBytes !== undefined)
          this.lanes.resumeSegment(m.partialIndex, m.partialBytes);
        if (m.resumedMs !== undefined) this.readyResolve(m.resumedMs);
        if (m.appliedMs !== undefined) this.completeResolve(m.appliedMs);
        // Requests the server never got go again, under their ids; the others' replies are on their way.
        const known = new Set([...m.replies, ...m.running]);
        for (const [id, req] of this.offloads.waiting()) if (!known.has(id)) this.sendOffload(id, req);
        this.offloads.resumed();
        if (this.state === 'finishing') io.send({ type: 'finish' });
        return;
      }
      case 'want':
      case 'tables':
      case 'thin': {
        const asked = m.type === 'thin' ? [m.segment] : m.segments;
        if (asked.some((i) => i >= this.overlay.body.segments.length))
          return this.fail(
            new VmsynthError('VMS_PROTOCOL', `the server asked for a segment the overlay does not have`),
          );
        if (m.type === 'want') this.lanes.want(m.lane, m.segments);
        else if (m.type === 'tables') this.lanes.tables(m.segments);
        else this.lanes.thin(m.segment, m.lane, m.omit);
        return;
      }
      case 'hurry':
        this.lanes.hurry(m.segments);
        return;
      case 'ready':
        this.readyResolve(m.resumedMs);
        this.emit({ type: 'timeline', step: 'resumed', ms: this.ms() });
        return;
      case 'reply':
        io.send({ type: 'ack', ids: [m.id] });
        this.offloads.settle(m.id, null, { status: m.status, body: m.body });
        return;
      case 'complete':
        this.completeResolve(m.appliedMs);
        this.emit({ type: 'timeline', step: 'overlayComplete', ms: this.ms() });
        return;
      case 'moved': // the VM runs on another cloudlet now: resume it there
        this.server = { host: m.host, port: m.port };
        this.id = m.session;
        this.emit({ type: 'moved', to: `${m.host}:${m.port}`, session: m.session });
        this.dropped(`the session moved to ${m.host}:${m.port}`);
        return;
      case 'ping':
        return;
      case 'finished':
        this.state = 'done';
        this.stop();
        this.finished?.resolve(m.stats);
        return;
      case 'error':
        if (m.id !== undefined && !m.fatal) {
          if (this.offloads.refused(m.id, serverError(m.code, m.message, m.targetCode))) return; // the handoff failed: we stay
          io.send({ type: 'ack', ids: [m.id] });
          this.offloads.settle(m.id, serverError(m.code, m.message), null);
          return;
        }
        if (resume && this.state === 'finishing' && m.code === 'VMS_SESSION_GONE') {
          // Dropped after `finish` went out, before `finished` came back: over, as asked; stats lost.
          this.state = 'done';
          this.stop();
          this.finished?.resolve({ statsLost: true });
          return;
        }
        this.fail(serverError(m.code, m.message));
        return;
    }
  }

  /** A connection carries the session now: segments flow, keepalives start. */
  private attached(): void {
    this.state = this.state === 'finishing' ? 'finishing' : 'open';
    this.live = true;
    this.io!.setMaxFrameBytes(FRAME_CAPS.streaming);
    this.watch(); // at the keepalive the server asked for
    this.lanes.restart();
  }

  /** (Re)starts the liveness check of the current connection. */
  private watch(): void {
    if (this.liveness) clearInterval(this.liveness);
    const tick = Math.max(10, Math.min(1000, this.keepaliveMs / 2));
    this.liveness = setInterval(() => this.checkLiveness(), tick);
  }

  /** Pings a quiet server; drops a connection that heard nothing for three keepalives (the server pings every one). */
  private checkLiveness(): void {
    const io = this.io;
    if (!io?.open) return;
    const now = performance.now();
    if (now - io.lastIn > 3 * this.keepaliveMs) {
      this.dropped(`heard nothing from the server for ${Math.round(now - io.lastIn)} ms`);
      return;
    }
    // (Only once attached: before `welcome`, a ping is not allowed.)
    if (this.live && now - io.lastOut >= this.keepaliveMs) io.send({ type: 'ping' });
  }

  /** The connection is gone: reconnect and resume within the grace period, or fail. */
  private dropped(why: string): void {
    if (this.state === 'done') return;
    this.live = false;
    this.io?.destroy();
    this.io = null;
    if (this.liveness) clearInterval(this.liveness);
    this.liveness = null;
    this.lanes.clear();
    if (!this.secret || this.opts.reconnect === false || this.graceMs <= 0) {
      this.fail(
        new VmsynthError('VMS_PEER_GONE', `lost the connection to the server: ${why}`, {
          details: { reason: 'connection-lost' },
        }),
      );
      return;
    }
    this.lastDrop = why;
    this.droppedAt ??= performance.now();
    this.emit({ type: 'dropped', reason: why });
    void this.reconnect();
  }

  private async reconnect(): Promise<void> {
    const failure = await reconnectWithin({
      deadline: this.droppedAt! + this.graceMs,
      graceMs: this.graceMs,
      // `resumed`, or an error, then comes on the new connection.
      attempt: () => (this.state === 'done' ? Promise.resolve() : this.connectOnce(true)),
      lastDrop: this.lastDrop,
      server: this.server,
      session: this.id,
      keeps: this.keeps,
    });
    if (failure && this.state !== 'done') this.fail(failure);
  }

  /** Sends a request to the app in the VM; resolves with its reply. May be called before the VM runs. */
  offload(req: OffloadRequest): Promise<OffloadReply> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.state === 'done') return Promise.reject(new VmsynthError('VMS_PEER_GONE', 'the session has ended'));
    return this.offloads.add(req, this.ms(), (id) => this.sendOffload(id, req));
  }

  /**
   * Asks the server to move this session's VM to the cloudlet at `to` (HOST:PORT, a handoff).
   * Resolves once the VM runs there and this session has resumed it; requests go on meanwhile
   * (those the move held are sent again there, and run once).
   */
  handoff(to: string): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (!this.live) return Promise.reject(new VmsynthError('VMS_HANDOFF', 'a handoff needs a connected session'));
    const { host, port } = parseServer(to);
    return this.offloads.handoff((id) => this.io?.send({ type: 'handoff', id, host, port }));
  }

  /** Every request this session sent, in order, with its body and how it ended (Slingshot's request log). */
  requests(): LoggedOffload[] {
    return this.offloads.requests();
  }

  private sendOffload(id: number, req: OffloadRequest): void {
    if (!this.live) return; // sent after the resume
    this.io?.send({ type: 'offload', id, method: req.method, path: req.path }, req.body);
  }

  /** Ends the session: the server tears the VM down and answers with its stats. */
  finish(): Promise<Record<string, unknown>> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.finished = { resolve, reject };
      this.state = 'finishing';
      if (this.live) this.io?.send({ type: 'finish' }); // else sent after the resume
    });
  }

  /** Gives up: tells the server why (when it can still hear) and closes. */
  fail(err: Error): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.failure = err;
    if (this.io?.open)
      this.io.send({
        type: 'error',
        code: err instanceof VmsynthError ? err.code : 'VMS_INTERNAL',
        message: err.message.slice(0, 4000),
      });
    this.stop();
    this.opened?.reject(err);
    this.failedReject(err);
    this.finished?.reject(err);
    this.offloads.failAll(err);
  }

  private stop(): void {
    if (this.liveness) clearInterval(this.liveness);
    this.liveness = null;
    this.lanes.close();
    this.io?.end(500);
  }

  /** What went on the wire, for results and benchmarks. */
  get sent(): { bytes: number; segments: number } {
    return { bytes: this.lanes.bytesSent, segments: this.lanes.segmentsSent };
  }
}
