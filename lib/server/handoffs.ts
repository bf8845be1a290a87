/**
 * A server's handoffs (HandoffHooks): conversations of cloudlets handing a
 * session off here (handoff-in.ts), and sessions moved away from here
 * (handoff-out.ts), one at a time per session; what the ops endpoint and
 * the client's `handoff` message start; and their end at shutdown.
 */
import os from 'node:os';
import { VmsynthError } from '../core/errors.js';
import type { FramedSocket } from '../protocol/framed-socket.js';
import type { SegmentStore } from '../store/segment-store.js';
import { SynthSession } from '../synth/session.js';
import type { HandoffHooks } from './context.js';
import { HandoffIn, type HandoffInHost } from './handoff-in.js';
import { handOff, type HandoffReport, type HandoffTuning } from './handoff-out.js';
import type { ServedSession } from './served-session.js';

export interface HandoffsOptions extends HandoffInHost {
  /** This cloudlet's name in a target's logs (default: the host name). */
  name?: string;
  /** The token targets want of a client (their clients' token), if they authenticate. */
  token?: string;
  store: SegmentStore | null;
  tuning?: Partial<HandoffTuning>;
}

export class Handoffs implements HandoffHooks {
  private readonly incoming = new Set<HandoffIn>();
  private readonly outgoing = new Map<string, Promise<HandoffReport>>();

  private readonly inHost: HandoffInHost;

  constructor(private readonly o: HandoffsOptions) {
    this.inHost = { ...o, storedManifest: (id) => o.store?.manifest(id) ?? null };
  }

  accept(io: FramedSocket, peer: string, client: string): void {
    const h = new HandoffIn(io, peer, client, this.inHost, (x) => this.incoming.delete(x));
    this.incoming.add(h);
  }

  start(
    served: ServedSession,
    to: { host: string; port: number },
    opts: { whole?: boolean } = {},
  ): Promise<HandoffReport> {
    const synth = served.synthesis;
    if (!(synth instanceof SynthSession) || served.ended)
      return Promise.reject(new VmsynthError('VMS_HANDOFF', `session ${served.id} has no VM here to hand off`));
    if (this.outgoing.has(served.id))
      return Promise.reject(
        new VmsynthError('VMS_HANDOFF', `session ${served.id} is being handed off already`, {
          details: { step: 'offer' },
        }),
      );
    const store = this.o.store;
    const segments = synth.launch;
    const p = handOff({
      served,
      synth,
      to,
      name: this.o.name ?? os.hostname(),
      ...(this.o.token ? { token: this.o.token } : {}),
      storedSegment: async (index) => {
        const info = segments.segmentInfo(index);
        return store && info ? store.read(info.sha256) : null;
      },
      keepaliveMs: this.o.keepaliveMs,
      ...(opts.whole ? { whole: true } : {}),
      ...(this.o.tuning ? { tuning: this.o.tuning } : {}),
    }).finally(() => this.outgoing.delete(served.id));
    this.outgoing.set(served.id, p);
    return p;
  }

  /** Handoffs to here whose session is starting (admitted or being admitted, not yet a session): they count against the limits. */
  starting(client?: string): number {
    let n = 0;
    for (const h of this.incoming) if (h.starting && (client === undefined || h.client === client)) n++;
    return n;
  }

  /** Server shutdown: handoffs to here that are not complete end their sessions. */
  close(): void {
    for (const h of this.incoming) h.close();
  }
}
