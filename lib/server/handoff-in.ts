/**
 * The target's side of a handoff (vmsynth-handoff/1): a cloudlet offers a
 * running session; this server admits its overlay as it would a client's
 * (the base must be here, the overlay's key trusted, room for one more
 * session), starts an incoming synthesis session (SynthOptions.incoming:
 * the overlay from the store, the object store, or the source, applied
 * whole), starts the VM's domain waiting for incoming state (the offer
 * names the VM's generation), then takes the delta passes
 * (synth/handoff-intake.ts), the request log and the device state, and
 * resumes the VM: the stop costs the device state's load, not the domain's start. The session is a
 * ServedSession like any other: its client resumes it here with its secret.
 *
 * If the source goes away before every chunk is here, the VM cannot finish:
 * the session ends (VMS_HANDOFF), and nothing of it is left.
 */
import { publish } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import type { FramedSocket } from '../protocol/framed-socket.js';
import {
  decodeFinal,
  decodeTables,
  HANDOFF_PROTOCOL,
  parseSourceMessage,
  type SourceMessage,
} from '../protocol/handoff-messages.js';
import { POLICIES, type Policy } from '../protocol/messages.js';
import { HandoffIntake } from '../synth/handoff-intake.js';
import type { SynthSession } from '../synth/session.js';
import type { Admitted } from './admission.js';
import type { SessionRequest } from './context.js';
import { PeerLink } from './peer-link.js';
import type { LogSnapshot } from './request-log.js';
import { ServedSession } from './served-session.js';
import type { SessionRegistry } from './session-registry.js';

/** What the target's side needs of its server. */
export interface HandoffInHost {
  admit(client: string, manifest: Buffer): Promise<Admitted>;
  /** Starts a synthesis session (incoming: the handoff resumes its VM). */
  start(req: SessionRequest & { incoming: true }): Promise<SynthSession>;
  sessions: SessionRegistry;
  /** A session handed off here is complete: keep what a later server needs to adopt it. */
  keep?(served: ServedSession): void;
  /** The manifest this cloudlet's store keeps for an overlay id, if any. */
  storedManifest?(overlayId: Buffer): Buffer | null;
  graceMs: number;
  keepaliveMs: number;
  maxOffloads: number;
}

export class HandoffIn {
  private readonly link: PeerLink<SourceMessage>;
  private served: ServedSession | null = null;
  private synth: SynthSession | null = null;
  private intake: HandoffIntake | null = null;
  private complete = false;
  /** From the offer until its session is registered (or refused): counted as a session starting. */
  starting = false;
  private readonly t0 = performance.now();

  constructor(
    io: FramedSocket,
    private readonly peer: string,
    readonly client: string,
    private readonly host: HandoffInHost,
    private readonly gone: (h: HandoffIn) => void,
  ) {
    this.link = new PeerLink<SourceMessage>(io, {
      parse: parseSourceMessage,
      message: (m) => this.onMessage(m),
      ended: (err) => this.ended(err),
      keepaliveMs: host.keepaliveMs,
      peer: `the source cloudlet ${peer}`,
    });
    void this.link.send({ type: 'welcome', protocol: HANDOFF_PROTOCOL, server: `vmsynth ${VMSYNTH_VERSION}` });
  }

  private onMessage(m: SourceMessage): void {
    switch (m.type) {
      case 'offer':
        if (this.served || this.starting) throw new VmsynthError('VMS_PROTOCOL', 'a second offer on one handoff');
        this.starting = true;
        void this.offer(m)
          .catch((err: unknown) => this.link.end(asVmsynthError(err)))
          .finally(() => (this.starting = false));
        return;
      case 'segment':
        this.need(this.served).receive(m.index, m.data);
        return;
      case 'pass': {
        const pass = m.pass;
        this.need(this.intake)
          .pass(decodeTables(m.tables))
          .then(
            () => this.link.send({ type: 'applied', pass }),
            (err: unknown) => this.link.end(asVmsynthError(err)),
          );
        return;
      }
      case 'dsegment':
        this.need(this.intake).segment(m.index, m.data);
        return;
      case 'final': {
        const state = decodeFinal(m.state);
        this.need(this.served).log.restore(state.log as LogSnapshot);
        this.need(this.intake)
          .final(state.tables, state.deviceState, state.genid, m.whole === true)
          .catch((err: unknown) => this.link.end(asVmsynthError(err)));
        return;
      }
      case 'ping':
      case 'error':
        return; // (the link handles both)
    }
  }

  private need<T>(x: T | null): T {
    if (x === null) throw new VmsynthError('VMS_PROTOCOL', 'a handoff message before the offer was accepted');
    return x;
  }

  private async offer(m: Extract<SourceMessage, { type: 'offer' }>): Promise<void> {
    if (!(POLICIES as readonly string[]).includes(m.policy))
      throw new VmsynthError('VMS_PROTOCOL', `unknown policy "${m.policy.slice(0, 40)}" in a handoff offer`);
    // Offered by id: the manifest this store keeps for it, or ask for it (the next offer brings it).
    const manifest = m.manifest.length > 0 ? m.manifest : m.overlayId && this.host.storedManifest?.(m.overlayId);
    if (!manifest) return void (await this.link.send({ type: 'manifest' }));
    const { overlay, base } = await this.host.admit(this.client, manifest);
    const served = new ServedSession({
      client: m.client,
      policy: m.policy as Policy,
      base: base.name,
      segments: overlay.body.segments.length,
      graceMs: this.host.graceMs,
      maxOffloads: this.host.maxOffloads,
      onEnded: (s, error) => this.host.sessions.remove(s, error),
      secretSha256: m.secretSha256,
      manifest,
      ...(m.overlayUrl ? { overlayUrl: m.overlayUrl } : {}),
    });
    const synth = await this.host.start({
      overlay,
      base,
      policy: 'baseline',
      incoming: true,
      manifest,
      ...(m.overlayUrl ? { overlayUrl: m.overlayUrl } : {}),
      events: {
        ...served.events,
        // Whatever the store and the object store lack comes from the source, in order.
        want: (_lane, segments) => void this.link.send({ type: 'want', segments }),
        hurry: () => undefined,
        ready: (ms) => void this.link.send({ type: 'resumed', ms }),
        complete: (appliedMs) => void this.link.send({ type: 'complete', appliedMs }),
        failed: (err) => this.link.end(err),
        deltaDemand: (segment) => {
          if (this.intake?.demand(segment)) void this.link.send({ type: 'dwant', segments: [segment] });
        },
      },
    });
    if (!this.link.open) {
      await synth.close();
      return;
    }
    this.served = served;
    this.synth = synth;
    served.incoming(synth);
    this.starting = false;
    this.host.sessions.add(served);
    this.intake = new HandoffIntake(
      synth,
      (err) => this.link.end(err),
      () => this.done(),
    );
    publish('handoff', {
      session: synth.id,
      role: 'target',
      peer: this.peer,
      step: 'accepted',
      detail: `session ${m.session} there`,
    });
    await this.link.send({ type: 'accepted', session: synth.id });
    synth.run();
    // The mount, the keeper's start and (when the source named its VM generation) the domain's
    // start stay out of the stop.
    if (m.genid !== undefined) synth.vm.startAhead(m.genid ?? undefined);
    else synth.vm.mountEarly();
  }

  /** Every chunk is here: the source may let go, and the session waits for its client. */
  private done(): void {
    this.complete = true;
    const served = this.served!;
    served.handedOver();
    this.host.keep?.(served);
    const ms = Math.round(performance.now() - this.t0);
    publish('handoff', { session: served.id, role: 'target', peer: this.peer, step: 'every chunk is here', ms });
    void this.link.send({ type: 'done' });
  }

  private ended(err: VmsynthError | null): void {
    this.gone(this);
    if (this.complete || !this.served) {
      if (!this.served && this.synth) void this.synth.close();
      return;
    }
    const why = new VmsynthError(
      'VMS_HANDOFF',
      `the handoff from ${this.peer} did not complete: ${err?.message ?? 'the source closed the conversation'}`,
      { details: { step: 'target', ...(err ? { cause: err.code } : {}) } },
    );
    publish('handoff', { session: this.served.id, role: 'target', peer: this.peer, step: 'failed', error: why });
    void this.served.end(why);
  }

  /** Server shutdown: an incomplete handoff ends its session. */
  close(): void {
    this.link.end(new VmsynthError('VMS_SHUTTING_DOWN', 'the target cloudlet is shutting down'));
  }
}
