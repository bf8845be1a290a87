/**
 * A session as the server serves it, across connections (Migratory TCP's
 * session that outlives its connection). It owns the synthesis session
 * (SessionHandle), the client's request log with the replies not yet
 * acknowledged, and the grace period: a session whose connection dropped
 * keeps its VM, images, received segments and held guest reads until a
 * connection resumes it with the secret, or the grace period ends it.
 *
 * Connections attach to it; events of the synthesis (want, hurry, ready,
 * complete) go to the attached connection, and are dropped while none is:
 * a resume re-announces what is still wanted and the session's state. Every
 * way the session ends goes through end(), once: the client is told a
 * fatal error before the teardown, and `finished` with the stats after it.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import type { OutgoingHeader } from '../protocol/frames.js';
import { MAX_LIST, SECRET_BYTES, type Policy } from '../protocol/messages.js';
import type { SynthEvents } from '../synth/session.js';
import type { SessionHandle } from './session-handle.js';
import { clientMessage, inLists, movedError, requestError } from './client-message.js';
import { OffloadHold } from './offload-hold.js';
import { PartialSegment } from './partial-segment.js';
import { RequestLog, type Outcome } from './request-log.js';

/** The connection side of an attached session. */
export interface Attachment {
  /** Queues one frame to the client. */
  send(header: OutgoingHeader, payload?: Uint8Array): void;
  /** The session is over (or another connection resumed it): close the connection after what is queued. */
  close(): void;
  /** Where the client is, for logs. */
  readonly peer: string;
}

export interface ServedOptions {
  client: string;
  policy: Policy;
  base: string;
  segments: number;
  /** How long a session without a connection lives; 0 ends it when its connection drops. */
  graceMs: number;
  /** Offload requests running plus replies not yet acknowledged, at most. */
  maxOffloads: number;
  /** Called once the session has ended and its teardown is done. */
  onEnded(s: ServedSession, error: VmsynthError | null): void;
  /** Adopting a session a previous server left, or one handed off here: the SHA-256 of its secret (no new secret is made). */
  secretSha256?: Buffer;
  /** The overlay's manifest as the client sent it, and the URL it named (a handoff offers them to the next cloudlet). */
  manifest?: Buffer;
  overlayUrl?: string;
}

/** What a server that adopts the session needs to let its client resume it (kept in the run directory). */
export interface ServedRecord {
  client: string;
  policy: Policy;
  base: string;
  segments: number;
  /** Hex. */
  secretSha256: string;
}

export class ServedSession {
  private handle: SessionHandle | null = null;
  private attachment: Attachment | null = null;
  private readonly secretSha256: Buffer;
  private graceTimer: NodeJS.Timeout | null = null;
  private ending: Promise<object> | null = null;
  private closing = false;
  private readonly t0 = performance.now();
  readonly log: RequestLog;
  /** The secret, for the accepted message (the server keeps only its hash after that). */
  private secret: Buffer | null;
  /** Connections that resumed this session, and the time it spent without one. */
  resumes = 0;
  detachedMs = 0;
  private detachedAt: number | null = null;
  endedWith: VmsynthError | null = null;
  /** The received part of a segment whose frame a drop cut short: a resume asks only for the rest. */
  readonly partial = new PartialSegment();
  private lastPeer = '';
  /** While a handoff stops the VM, new offload requests wait here. */
  private readonly hold = new OffloadHold();

  constructor(private readonly opts: ServedOptions) {
    this.secret = opts.secretSha256 ? null : randomBytes(SECRET_BYTES);
    this.secretSha256 = opts.secretSha256 ?? createHash('sha256').update(this.secret!).digest();
    this.log = new RequestLog(opts.maxOffloads);
  }

  get client(): string {
    return this.opts.client;
  }

  get id(): string {
    return this.handle?.id ?? '';
  }

  get ended(): boolean {
    return this.ending !== null;
  }

  /** The synthesis session's events, routed to whichever connection is attached. */
  readonly events: SynthEvents = {
    want: (lane, segments) => inLists(segments, (part) => this.send({ type: 'want', lane, segments: part })),
    hurry: (segments) => inLists(segments, (part) => this.send({ type: 'hurry', segments: part })),
    tables: (segments) => inLists(segments, (part) => this.send({ type: 'tables', segments: part })),
    thin: (lane, segment, omit) => this.send({ type: 'thin', segment, lane }, omit),
    ready: (resumedMs) => this.send({ type: 'ready', resumedMs }),
    complete: (appliedMs) => this.send({ type: 'complete', appliedMs }),
    failed: (err) => void this.end(err),
  };

  private send(header: OutgoingHeader, payload?: Uint8Array): void {
    // Once the session ends, nothing more goes out but its fatal error or `finished` (an apply that
    // completes during the teardown sent `complete` after the error).
    if (!this.closing) this.attachment?.send(header, payload);
  }

  /** The synthesis session started for it; `attachment` heard nothing yet. Returns the accepted message's secret. */
  bind(handle: SessionHandle, attachment: Attachment): Buffer {
    this.handle = handle;
    this.attachment = attachment;
    this.lastPeer = attachment.peer;
    const secret = this.secret!;
    this.secret = null;
    return secret;
  }

  /** The synthesis session (a handoff reaches its VM through it). */
  get synthesis(): SessionHandle | null {
    return this.handle;
  }

  /** What a handoff offers the next cloudlet: the session as its client opened it. */
  get offer(): ServedOptions & { secretSha256: Buffer } {
    return { ...this.opts, secretSha256: this.secretSha256 };
  }

  /** A handoff is about to stop the VM: new requests wait; resolves once those running are answered (OffloadHold). */
  quiesce(ms: number): Promise<void> {
    return this.hold.start(
      () => this.log.runningIds().length,
      ms,
      () => this.ended,
    );
  }

  /** The client asked (request `id`) to move the VM to `to`: `moved` comes on success, an error with `id` otherwise. */
  handoff(
    id: number,
    start: (to: { host: string; port: number }) => Promise<unknown> | undefined,
    to: { host: string; port: number },
  ): void {
    const started = start(to) ?? Promise.reject(new VmsynthError('VMS_HANDOFF', 'this server does no handoffs'));
    started.catch((err: unknown) => this.sendOutcome(id, { error: asVmsynthError(err) }));
  }

  /** The handoff failed: the requests that waited run now, here. */
  unquiesce(): void {
    this.hold.release();
  }

  /**
   * The VM runs on the next cloudlet now: the client is told where (`moved`), and the session
   * ends here; requests that waited are the client's to send again there (it has no reply).
   */
  async moved(to: { host: string; port: number; session: string }): Promise<void> {
    const a = this.attachment;
    this.attachment = null;
    a?.send({ type: 'moved', ...to });
    a?.close();
    await this.end(movedError(this.id, to));
  }

  /** A session handed off to this cloudlet: its VM is not here yet, and no grace period runs until handedOver(). */
  incoming(handle: SessionHandle): void {
    this.handle = handle;
    this.secret = null;
  }

  /** The handoff is complete: the session waits for its client's resume, for its grace period. */
  handedOver(): void {
    if (!this.attachment && !this.ended)
      this.startGrace(
        'handed off here',
        new VmsynthError('VMS_PEER_GONE', 'the session was handed off to this cloudlet'),
      );
  }

  /** Whether the session's VM runs (only such a session can be left to its keeper). */
  get vmRunning(): boolean {
    return !!this.handle && this.handle.progress().resumedMs !== null;
  }

  /** What a later server needs to adopt the session (ServedRecord). */
  record(): ServedRecord {
    const { client, policy, base, segments } = this.opts;
    return { client, policy, base, segments, secretSha256: this.secretSha256.toString('hex') };
  }

  /** A session a previous server left to its keeper, taken over: it waits for its client to resume it. */
  adopt(handle: SessionHandle): void {
    this.handle = handle;
    this.startGrace('the server restarted', new VmsynthError('VMS_PEER_GONE', 'the server restarted'));
  }

  /**
   * The server stops and leaves the session to its keeper: the connection closes without a word
   * (the client reconnects, and resumes with the next server), and nothing is torn down.
   */
  async leave(): Promise<void> {
    if (this.ending) return;
    this.closing = true;
    this.stopGrace();
    this.attachment?.close();
    this.attachment = null;
    this.ending = this.handle!.release();
    await this.ending;
    publish('sessionLeft', { session: this.id, peer: this.lastPeer, client: this.opts.client });
  }

  /** Whether `secret` is this session's. */
  secretMatches(secret: Buffer): boolean {
    return timingSafeEqual(createHash('sha256').update(secret).digest(), this.secretSha256);
  }

  /**
   * A connection resumed the session: it replaces the attached one (which is closed without a
   * word: a roaming client's old connection may not know it is dead yet), hears where the
   * session is, what is still wanted, and the replies it has not acknowledged.
   */
  resume(attachment: Attachment): void {
    const h = this.handle!;
    const old = this.attachment;
    this.attachment = attachment;
    this.lastPeer = attachment.peer;
    old?.close();
    this.stopGrace();
    this.resumes++;
    const progress = h.progress();
    const replayed = this.log.unacked();
    const wanted = h.outstanding();
    this.partial.keepOnly([...wanted.demand, ...wanted.background, ...wanted.thin.map((t) => t.index)]);
    const part = this.partial.held;
    attachment.send({
      type: 'resumed',
      session: h.id,
      base: this.opts.base,
      segments: this.opts.segments,
      policy: this.opts.policy,
      ...(progress.resumedMs !== null ? { resumedMs: progress.resumedMs } : {}),
      ...(progress.appliedMs !== null ? { appliedMs: progress.appliedMs } : {}),
      replies: replayed.map(([id]) => id).slice(0, MAX_LIST),
      running: this.log.runningIds().slice(0, MAX_LIST),
      ...(part ? { partialIndex: part.index, partialBytes: part.bytes } : {}),
    });
    this.events.want('demand', wanted.demand);
    this.events.want('background', wanted.background);
    this.events.tables(wanted.tables);
    for (const t of wanted.thin) this.events.thin(t.lane, t.index, t.omit);
    for (const [id, outcome] of replayed) this.sendOutcome(id, outcome);
    publish('sessionReattached', { session: h.id, peer: attachment.peer, resumes: this.resumes });
  }

  /** The attached connection is gone (dropped, silent, or stalled): the grace period starts. */
  detach(attachment: Attachment, why: VmsynthError): void {
    if (this.attachment !== attachment || this.ended) return;
    this.attachment = null;
    if (this.opts.graceMs <= 0) {
      void this.end(why);
      return;
    }
    this.startGrace(attachment.peer, why);
  }

  private startGrace(peer: string, why: VmsynthError): void {
    this.detachedAt = performance.now();
    publish('sessionDetached', { session: this.id, peer, graceMs: this.opts.graceMs, error: why });
    this.graceTimer = setTimeout(() => {
      void this.end(
        new VmsynthError(
          'VMS_PEER_GONE',
          `no client resumed session ${this.id} within its grace period of ${this.opts.graceMs} ms (${why.message})`,
          { details: { reason: 'grace-expired', graceMs: this.opts.graceMs } },
        ),
      );
    }, this.opts.graceMs);
  }

  private stopGrace(): void {
    if (this.graceTimer) clearTimeout(this.graceTimer);
    this.graceTimer = null;
    if (this.detachedAt !== null) this.detachedMs += performance.now() - this.detachedAt;
    this.detachedAt = null;
  }

  /**
   * A segment, or (with `offset`) the rest of the one whose first `offset` bytes arrived before a
   * drop: the session gets it whole.
   */
  receive(index: number, data: Buffer, offset?: number, thin = false): void {
    data = this.partial.complete(index, data, offset);
    this.handle!.receive(index, data, thin);
  }

  /** A segment's digest table (chunk lookaside). */
  receiveTable(index: number, data: Buffer): void {
    void this.handle!.receiveTable(index, data);
  }

  /** The connection dropped while segment `index` was arriving: keeps what arrived, for the resume (PartialSegment). */
  keepPartial(index: number, payload: Buffer, offset?: number): void {
    if (!this.ended) this.partial.keep(index, payload, offset);
  }

  /** An offload request: run once, whatever number of times it arrives. */
  offload(id: number, method: string, path: string, body: Buffer): void {
    if (!this.log.knows(id) && this.hold.hold(() => this.offload(id, method, path, body))) return;
    const verdict = this.log.admit(id, method, path, body, Math.round(performance.now() - this.t0));
    switch (verdict.action) {
      case 'wait':
        return; // its outcome goes to whichever connection is attached when it ends
      case 'replay':
        this.sendOutcome(id, verdict.outcome);
        return;
      case 'refuse':
        this.sendOutcome(id, { error: verdict.error });
        return;
      case 'run':
        publish('offloadForwarded', { session: this.id, id, method, path: path.slice(0, 200) });
        this.handle!.offload(method, path, body).then(
          (r) => this.settle(id, { status: r.status, body: r.body }),
          (err: unknown) => {
            const e = asVmsynthError(err);
            this.settle(id, { error: e });
            // A dead VM ends the session; an app that answers slowly does not.
            if (e.code !== 'VMS_GUEST_TIMEOUT') void this.end(e);
          },
        );
    }
  }

  private settle(id: number, outcome: Outcome): void {
    if (this.ended) return;
    this.log.settle(id, outcome);
    this.sendOutcome(id, outcome);
  }

  private sendOutcome(id: number, outcome: Outcome): void {
    if ('status' in outcome) this.send({ type: 'reply', id, status: outcome.status }, outcome.body);
    else this.send(requestError(id, outcome.error));
  }

  ack(ids: number[]): void {
    this.log.ack(ids);
  }

  /**
   * Ends the session once: a fatal error is told to the attached client first, then the
   * synthesis is torn down, then a clean finish is answered with the stats. Resolves with them.
   */
  end(error: VmsynthError | null): Promise<object> {
    this.ending ??= (async () => {
      this.closing = true;
      this.endedWith = error;
      this.stopGrace();
      const a = this.attachment;
      if (error && a) a.send({ type: 'error', code: error.code, message: clientMessage(error), fatal: true });
      const stats = this.handle ? await this.handle.close() : {};
      const all = {
        ...stats,
        resumes: this.resumes,
        detachedMs: Math.round(this.detachedMs),
        requests: this.log.size,
        segmentBytesDiscarded: this.partial.discardedBytes,
      };
      this.partial.clear();
      // The attached connection may have changed during the teardown (a resume of an ending session is refused).
      const now = this.attachment;
      if (!error && now) now.send({ type: 'finished', stats: all });
      now?.close();
      if (a && a !== now) a.close();
      this.attachment = null;
      this.opts.onEnded(this, error);
      publish('sessionEnded', {
        session: this.id,
        peer: this.lastPeer,
        client: this.opts.client,
        stats: all,
        ...(error ? { error } : {}),
      });
      return all;
    })();
    return this.ending;
  }
}
