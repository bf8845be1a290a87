/**
 * One client connection on the synthesis server: the vmsynth protocol's
 * conversation (hello, then a new session or the resume of one, then
 * segments, offload requests, acknowledgements and pings) and its timers.
 *
 * A connection attaches to a ServedSession (served-session.ts), which
 * outlives it: when the connection drops, goes silent past the idle limit,
 * or stops reading what it is sent, the session waits out its grace period
 * for a resume. A protocol error, `finish`, or the client's own `error` end
 * the session. Frames are cut under the cap of the stage the conversation
 * is in when each frame is cut.
 */
import type net from 'node:net';
import { publish } from '../core/diagnostics.js';
import { collectSoon } from '../core/gc.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { FramedSocket } from '../protocol/framed-socket.js';
import { aType, type Frame, type OutgoingHeader } from '../protocol/frames.js';
import { HANDOFF_PROTOCOL } from '../protocol/handoff-messages.js';
import { FRAME_CAPS, parseClientMessage, PROTOCOL, type ClientMessage } from '../protocol/messages.js';
import type { ServerContext } from './context.js';
import { clientMessage, movedTo } from './client-message.js';
import { liveness } from './liveness.js';
import { ServedSession, type Attachment } from './served-session.js';

type Stage = 'greeting' | 'open' | 'starting' | 'attached' | 'ending';

/** Pre-session bytes whose release is worth a garbage collection. */
const BIG_RELEASE = 64 << 20;

export class Connection implements Attachment {
  private readonly io: FramedSocket;
  private stage: Stage = 'greeting';
  private served: ServedSession | null = null;
  private opening: Promise<void> = Promise.resolve();
  private closed = false;
  /** Sends nothing more (the client gave up, or another connection resumed its session). */
  private silent = false;
  readonly peer: string;
  /** The authenticated client's name (set by hello). */
  client: string | null = null;
  /** The error the connection ended with (null while open, or after a clean finish). */
  endedWith: VmsynthError | null = null;
  private handshakeTimer: NodeJS.Timeout | null = null;
  private liveness: NodeJS.Timeout | null = null;
  private overRate: VmsynthError | null = null;

  constructor(
    socket: net.Socket,
    private readonly ctx: ServerContext,
    private readonly onGone: () => void,
  ) {
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.setKeepAlive(true, 10_000);
    this.io = new FramedSocket(socket, FRAME_CAPS.greeting, {
      frame: (f) => this.onFrame(f),
      invalid: (err) => this.fail(err),
      closed: (err) =>
        this.dropped(
          new VmsynthError('VMS_PEER_GONE', `the client ${this.peer} disconnected${err ? ` (${err.message})` : ''}`, {
            details: { reason: 'closed' },
          }),
        ),
    });
    // Until its session starts, every frame is reserved from the server-wide budget before it is buffered.
    this.io.setFrameCheck((bytes) => ctx.preSession.reserve(this, bytes));
    this.armHandshake(ctx.timing.handshakeTimeoutMs);
  }

  /** The conversation must be attached to a session within `ms`, or it fails with `err` (a handshake timeout by default). */
  private armHandshake(ms: number, err?: VmsynthError): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = setTimeout(
      () =>
        this.fail(
          err ??
            new VmsynthError('VMS_PROTOCOL', `no session was opened or resumed within ${ms} ms`, {
              details: { reason: 'handshake-timeout', ms },
            }),
        ),
      ms,
    );
  }

  /**
   * The connection's address is over its rate: it gets in only by authenticating, and must say
   * hello within `helloWithinMs` (a flood of them does not hold sockets for the handshake timeout).
   */
  overRateLimit(err: VmsynthError, helloWithinMs: number): void {
    this.overRate = err;
    if (this.stage === 'greeting') this.armHandshake(helloWithinMs, err);
  }

  /** A session is being started for this connection (admission counts it). */
  get starting(): boolean {
    return this.stage === 'starting';
  }

  /** The session this connection is attached to, if any. */
  get session(): ServedSession | null {
    return this.served;
  }

  private onFrame(f: Frame): void {
    let m: ClientMessage;
    try {
      m = parseClientMessage(f);
    } catch (err) {
      this.fail(asVmsynthError(err, 'VMS_PROTOCOL'));
      return;
    }
    try {
      this.handle(m);
    } catch (err) {
      this.fail(asVmsynthError(err));
    }
  }

  private expect(stage: Stage, m: ClientMessage): void {
    if (this.stage !== stage) {
      throw new VmsynthError(
        'VMS_PROTOCOL',
        `${aType(m.type)} is not allowed now (the conversation is at "${this.stage}")`,
        {
          details: { reason: 'stage', type: m.type, stage: this.stage },
        },
      );
    }
  }

  private handle(m: ClientMessage): void {
    if (this.stage === 'ending') return;
    switch (m.type) {
      case 'hello':
        this.expect('greeting', m);
        this.hello(m);
        return;
      case 'session':
        this.expect('open', m);
        this.stage = 'starting';
        this.opening = this.openSession(m).catch((err: unknown) => this.fail(asVmsynthError(err)));
        return;
      case 'resume':
        this.expect('open', m);
        this.attach(this.ctx.sessions.find(m.session, m.secret, this.client!), true);
        return;
      case 'info':
        this.expect('open', m);
        void this.ctx.info?.().then(
          (i) => this.send({ type: 'info', ...i }),
          (err: unknown) => this.fail(asVmsynthError(err)),
        );
        return;
      case 'handoff':
        this.expect('attached', m);
        this.served!.handoff(m.id, (to) => this.ctx.handoffs?.start(this.served!, to), m);
        return;
      case 'segment':
        this.expect('attached', m);
        this.served!.receive(m.index, m.data, m.offset, m.thin === true);
        return;
      case 'table':
        this.expect('attached', m);
        this.served!.receiveTable(m.index, m.data);
        return;
      case 'offload':
        this.expect('attached', m);
        this.served!.offload(m.id, m.method, m.path, m.body);
        return;
      case 'ack':
        this.expect('attached', m);
        this.served!.ack(m.ids);
        return;
      case 'ping':
        if (this.stage === 'greeting') this.expect('open', m);
        return; // bytes arrived: the connection is alive (FramedSocket.lastIn)
      case 'finish':
        if (this.stage === 'greeting') this.expect('open', m);
        this.finish();
        return;
      case 'error': {
        // The client gave up: end without a word to it.
        this.silent = true;
        const why = new VmsynthError('VMS_PEER_GONE', `the client gave up: ${m.code}: ${m.message}`, {
          details: { reason: 'client-error', clientCode: m.code.slice(0, 40) },
        });
        if (this.served) void this.served.end(why);
        else this.closeWith(why);
        return;
      }
    }
  }

  private hello(m: Extract<ClientMessage, { type: 'hello' }>): void {
    const handoffs = this.ctx.handoffs;
    if (m.protocol === HANDOFF_PROTOCOL && handoffs) {
      // A cloudlet hands a session off here: the handoff's conversation takes the socket over.
      this.client = this.ctx.auth.authenticate(m.token);
      this.stage = 'ending';
      this.closeWith(null, false);
      handoffs.accept(this.io, this.peer, this.client);
      return;
    }
    if (m.protocol !== PROTOCOL) {
      const client = m.protocol.slice(0, 40);
      throw new VmsynthError(
        'VMS_PROTOCOL',
        `this server speaks ${PROTOCOL}, the client ${client}: use a client and server of the same vmsynth release`,
        { details: { reason: 'version', server: PROTOCOL, client } },
      );
    }
    // Over its address's rate, only a client with a valid token gets in: anonymous traffic from
    // one address (everyone behind a NAT) must not lock out the authenticated clients behind it.
    try {
      this.client = this.ctx.auth.authenticate(m.token);
    } catch (err) {
      throw this.overRate ?? err;
    }
    if (this.overRate && !this.ctx.auth.required) throw this.overRate;
    this.stage = 'open';
    if (this.overRate) this.armHandshake(this.ctx.timing.handshakeTimeoutMs); // authenticated: the usual limit again
    this.io.setMaxFrameBytes(FRAME_CAPS.session);
    const { keepaliveMs, graceMs } = this.ctx.timing;
    const keeps = this.ctx.keep !== undefined ? { keeps: true } : {};
    this.io.send({
      type: 'welcome',
      protocol: PROTOCOL,
      server: `vmsynth ${VMSYNTH_VERSION}`,
      keepaliveMs,
      graceMs,
      ...keeps,
    });
  }

  private async openSession(m: Extract<ClientMessage, { type: 'session' }>): Promise<void> {
    const { overlay, base } = await this.ctx.admit(this.client!, m.manifest);
    const served = new ServedSession({
      client: this.client!,
      policy: m.policy,
      base: base.name,
      segments: overlay.body.segments.length,
      graceMs: this.ctx.timing.graceMs,
      maxOffloads: this.ctx.maxOffloads,
      onEnded: (s, error) => this.ctx.sessions.remove(s, error),
      manifest: m.manifest,
      ...(m.overlayUrl !== undefined ? { overlayUrl: m.overlayUrl } : {}),
    });
    const handle = await this.ctx.startSession({
      overlay,
      base,
      policy: m.policy,
      events: served.events,
      ...(m.overlayUrl !== undefined ? { overlayUrl: m.overlayUrl } : {}),
      lookaside: m.lookaside === true,
      manifest: m.manifest,
    });
    if (this.stage !== 'starting') {
      await handle.close(); // the connection ended while the session was being set up
      return;
    }
    const secret = served.bind(handle, this);
    this.ctx.sessions.add(served);
    this.ctx.keep?.(served);
    publish('sessionStarted', {
      session: handle.id,
      domain: handle.domain,
      peer: this.peer,
      client: this.client,
      policy: m.policy,
      base: base.name,
      segments: overlay.body.segments.length,
      overlayBytes: overlay.segmentsBytes,
    });
    this.attach(served, false);
    this.io.send({
      type: 'accepted',
      session: handle.id,
      secret,
      base: base.name,
      segments: overlay.body.segments.length,
      policy: m.policy,
    });
    handle.run();
  }

  /** The conversation is attached to `served`, new or resumed: segments flow, and the idle limits apply. */
  private attach(served: ServedSession, resumed: boolean): void {
    this.served = served;
    this.stage = 'attached';
    this.io.setFrameCheck(null);
    this.ctx.preSession.release(this);
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.io.setMaxFrameBytes(FRAME_CAPS.streaming);
    if (resumed) served.resume(this);
    const { keepaliveMs, idleMs } = this.ctx.timing;
    const tick = Math.max(10, Math.min(1000, keepaliveMs / 2, idleMs / 4));
    this.liveness = setInterval(() => this.checkLiveness(), tick);
    this.liveness.unref();
  }

  /** Pings a quiet client; drops one that sent nothing, or read nothing, for the idle limit. */
  private checkLiveness(): void {
    const v = liveness(this.io, this.peer, this.ctx.timing);
    if (v === 'ping') this.io.send({ type: 'ping' });
    else if (v) this.dropped(v.drop);
  }

  private finish(): void {
    if (this.served) {
      void this.served.end(null); // it answers `finished` with the stats, then closes this connection
      return;
    }
    const was = this.stage;
    this.stage = 'ending';
    // A session being opened is closed by openSession when it sees the stage; answer after that.
    void this.opening.then(() => {
      if (was === 'starting' && this.served) return;
      this.io.send({ type: 'finished', stats: {} });
      this.closeWith(null);
    });
  }

  /** A fatal error of this connection: the client is told, and the session (if any) ends with it. */
  private fail(err: VmsynthError): void {
    if (this.closed) return;
    this.io.stopReading();
    if (this.served) {
      void this.served.end(err); // tells the client before the teardown, then closes this connection
      return;
    }
    if (err.code !== 'VMS_PEER_GONE')
      publish('connectionRefused', { peer: this.peer, client: this.client, code: err.code, message: err.message });
    if (err.code === 'VMS_SESSION_MOVED') this.send({ type: 'moved', ...movedTo(err) });
    else this.send({ type: 'error', code: err.code, message: clientMessage(err), fatal: true });
    this.stage = 'ending';
    this.closeWith(err);
  }

  /** The connection is gone, silent or stalled: an attached session waits for a resume; it closes. */
  private dropped(why: VmsynthError): void {
    if (this.closed) return;
    const served = this.served;
    this.silent = true;
    this.stage = 'ending';
    // A segment cut short by the drop: what arrived of it is kept for the resume.
    const p = this.io.takePartial();
    const index = p?.header.index;
    const offset = p?.header.offset;
    if (served && p?.header.type === 'segment' && Number.isSafeInteger(index) && (index as number) >= 0)
      served.keepPartial(index as number, p.payload, Number.isSafeInteger(offset) ? (offset as number) : undefined);
    this.closeWith(why);
    this.io.destroy();
    served?.detach(this, why);
  }

  /** Attachment: queues a frame, unless the client no longer hears. */
  send(header: OutgoingHeader, payload?: Uint8Array): void {
    if (!this.silent) this.io.send(header, payload);
  }

  /** Attachment: the session ended, or another connection took it over. */
  close(): void {
    if (this.served && !this.served.ended) this.silent = true; // taken over: not a word more
    this.closeWith(this.served?.endedWith ?? null);
  }

  /** Closes the connection (`end`: and its socket; not when a handoff took the socket over). */
  private closeWith(err: VmsynthError | null, end = true): void {
    if (this.closed) return;
    this.closed = true;
    this.endedWith = err;
    // A large frame it was still receiving goes back to the system now, not at some later collection.
    if (this.ctx.preSession.release(this) >= BIG_RELEASE) collectSoon();
    this.stage = 'ending';
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    if (this.liveness) clearInterval(this.liveness);
    if (end) this.io.end();
    this.onGone();
  }

  /** Server shutdown: the session ends with `reason`, which the client is told. */
  async shutdown(reason: VmsynthError): Promise<void> {
    if (this.served) {
      await this.served.end(reason);
      return;
    }
    this.fail(reason);
    await this.opening;
  }
}
