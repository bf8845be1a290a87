/**
 * One client connection on the synthesis server: the vmsynth protocol's conversation
 * (hello, session, segments, offload requests, finish) and the session it
 * opens. Every way a connection ends — finish, a fatal error, the client
 * vanishing, server shutdown — goes through end(), which closes the session
 * (VM, mount, files) exactly once and then the socket.
 */
import type net from 'node:net';
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { FramedSocket } from '../protocol/framed-socket.js';
import type { Frame } from '../protocol/frames.js';
import { FRAME_CAPS, parseClientMessage, PROTOCOL, type ClientMessage } from '../protocol/messages.js';
import type { ServerContext, SessionHandle } from './context.js';

type Stage = 'greeting' | 'open' | 'starting' | 'session' | 'ending';

export class Connection {
  private readonly io: FramedSocket;
  private stage: Stage = 'greeting';
  private session: SessionHandle | null = null;
  private ending: Promise<void> | null = null;
  private opening: Promise<void> = Promise.resolve();
  private readonly peer: string;
  /** The authenticated client's name (set by hello). */
  client: string | null = null;
  /** The error the connection ended with (null while open, or after a clean finish). */
  endedWith: VmsynthError | null = null;
  private handshakeTimer: NodeJS.Timeout | null;

  constructor(
    socket: net.Socket,
    private readonly ctx: ServerContext,
    private readonly onGone: () => void,
  ) {
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.setKeepAlive(true, 10_000);
    this.io = new FramedSocket(socket, FRAME_CAPS.greeting, {
      frame: (f) => this.onFrame(f),
      invalid: (err) => void this.end(err),
      closed: (err) =>
        void this.end(
          new VmsynthError('VMS_PEER_GONE', `the client ${this.peer} disconnected${err ? ` (${err.message})` : ''}`),
          false,
        ),
    });
    const ms = ctx.handshakeTimeoutMs;
    this.handshakeTimer = setTimeout(
      () =>
        void this.end(
          new VmsynthError('VMS_PROTOCOL', `no session was opened within ${ms} ms`, {
            details: { reason: 'handshake-timeout', ms },
          }),
        ),
      ms,
    );
  }

  get hasSession(): boolean {
    return this.stage === 'starting' || this.stage === 'session';
  }

  private onFrame(f: Frame): void {
    let m: ClientMessage;
    try {
      m = parseClientMessage(f);
    } catch (err) {
      void this.end(asVmsynthError(err, 'VMS_PROTOCOL'));
      return;
    }
    try {
      this.handle(m);
    } catch (err) {
      void this.end(asVmsynthError(err));
    }
  }

  private expect(stage: Stage, m: ClientMessage): void {
    if (this.stage !== stage) {
      throw new VmsynthError(
        'VMS_PROTOCOL',
        `a ${m.type} message is not allowed now (the conversation is at "${this.stage}")`,
        { details: { reason: 'stage', type: m.type, stage: this.stage } },
      );
    }
  }

  private handle(m: ClientMessage): void {
    switch (m.type) {
      case 'hello': {
        this.expect('greeting', m);
        if (m.protocol !== PROTOCOL) {
          const client = m.protocol.slice(0, 40);
          throw new VmsynthError(
            'VMS_PROTOCOL',
            `this server speaks ${PROTOCOL}, the client ${client}: use a client and server of the same vmsynth release`,
            { details: { reason: 'version', server: PROTOCOL, client } },
          );
        }
        this.client = this.ctx.auth.authenticate(m.token);
        this.stage = 'open';
        this.io.setMaxFrameBytes(FRAME_CAPS.session);
        this.io.send({ type: 'welcome', protocol: PROTOCOL, server: `vmsynth ${VMSYNTH_VERSION}` });
        return;
      }
      case 'session':
        this.expect('open', m);
        this.stage = 'starting';
        this.opening = this.openSession(m).catch((err: unknown) => void this.end(asVmsynthError(err)));
        return;
      case 'segment':
        this.expect('session', m);
        this.session!.receive(m.index, m.data);
        return;
      case 'offload': {
        this.expect('session', m);
        const s = this.session!;
        s.offload(m.method, m.path, m.body).then(
          (r) => this.io.send({ type: 'reply', id: m.id, status: r.status }, r.body),
          (err: unknown) => {
            const e = asVmsynthError(err);
            // A dead VM ends the session; an app that answers slowly does not.
            if (e.code === 'VMS_GUEST_TIMEOUT')
              this.io.send({ type: 'error', code: e.code, message: e.message, fatal: false });
            else void this.end(e);
          },
        );
        return;
      }
      case 'finish':
        void this.end(null);
        return;
      case 'error':
        void this.end(new VmsynthError('VMS_PEER_GONE', `the client gave up: ${m.code}: ${m.message}`), false);
        return;
    }
  }

  private async openSession(m: Extract<ClientMessage, { type: 'session' }>): Promise<void> {
    const { overlay, base } = await this.ctx.admit(this.client!, m.manifest);
    const session = await this.ctx.startSession({
      overlay,
      base,
      policy: m.policy,
      events: {
        want: (lane, segments) => this.io.send({ type: 'want', lane, segments }),
        hurry: (segments) => this.io.send({ type: 'hurry', segments }),
        ready: (resumedMs) => this.io.send({ type: 'ready', resumedMs }),
        complete: (appliedMs) => this.io.send({ type: 'complete', appliedMs }),
        failed: (err) => void this.end(err),
      },
    });
    if (this.stage !== 'starting') {
      await session.close(); // the connection ended while the session was being set up
      return;
    }
    this.session = session;
    this.stage = 'session';
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.io.setMaxFrameBytes(FRAME_CAPS.streaming);
    publish('sessionStarted', {
      session: session.id,
      domain: session.domain,
      peer: this.peer,
      client: this.client,
      policy: m.policy,
      base: base.name,
      segments: overlay.body.segments.length,
      overlayBytes: overlay.segmentsBytes,
    });
    this.io.send({
      type: 'accepted',
      session: session.id,
      base: base.name,
      segments: overlay.body.segments.length,
      policy: m.policy,
    });
    session.run();
  }

  /**
   * Ends the connection once: closes the session, then tells the client how
   * it ended (finished with stats, or the error) when it can still hear.
   * `error` null is a clean finish.
   */
  end(error: VmsynthError | null, tell = true): Promise<void> {
    this.ending ??= (async () => {
      const was = this.stage;
      this.stage = 'ending';
      this.endedWith = error;
      if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
      if (error) this.io.stopReading();
      await this.opening; // a session being set up is closed by openSession itself
      const stats = this.session ? await this.session.close() : null;
      if (this.session || was === 'session')
        publish('sessionEnded', {
          session: this.session?.id,
          peer: this.peer,
          client: this.client,
          stats,
          ...(error ? { error } : {}),
        });
      else if (error && error.code !== 'VMS_PEER_GONE')
        publish('connectionRefused', {
          peer: this.peer,
          client: this.client,
          code: error.code,
          message: error.message,
        });
      if (tell && this.io.open) {
        if (error)
          this.io.send({ type: 'error', code: error.code, message: error.message.slice(0, 4000), fatal: true });
        else this.io.send({ type: 'finished', stats: stats ?? {} });
      }
      this.io.end();
      this.onGone();
    })();
    return this.ending;
  }

  /** Server shutdown: the session ends with `reason`. */
  shutdown(reason: VmsynthError): Promise<void> {
    return this.end(reason);
  }
}
