/**
 * What a connection needs from the server it belongs to, as interfaces: who
 * may come in (auth), whether a session may start (admission), and how one
 * is started. The server (server.ts) builds the real context over libvirt;
 * the connection tests build one over fakes. Connections import this, never
 * the server, so the two do not import each other.
 */
import type { FramedSocket } from '../protocol/framed-socket.js';
import type { Policy, ServerMessage } from '../protocol/messages.js';
import type { SynthEvents } from '../synth/session.js';
import type { Admitted } from './admission.js';
import type { Authenticator } from './auth.js';
import type { ByteBudget } from './byte-budget.js';
import type { ServedSession } from './served-session.js';
import type { SessionHandle } from './session-handle.js';
import type { SessionRegistry } from './session-registry.js';

export type { SessionHandle } from './session-handle.js';

export interface SessionRequest extends Admitted {
  policy: Policy;
  events: SynthEvents;
  /** Where the client says the server may fetch the overlay's segments (s3://...). */
  overlayUrl?: string;
  /** The client offered chunk lookaside (digest tables, thin segments). */
  lookaside?: boolean;
  /** The overlay's manifest as the client sent it (a session left to its keeper keeps it for the next server). */
  manifest: Buffer;
  /** A handoff's target: the VM resumes from the handoff's device state (SynthOptions.incoming). */
  incoming?: boolean;
}

export interface ServerContext {
  auth: Authenticator;
  /** Decides whether `client` may open a session over `manifest`: the overlay and the base it runs on, or a typed refusal. */
  admit(client: string, manifest: Buffer): Promise<Admitted>;
  /** Starts a session admitted by `admit`. */
  startSession(req: SessionRequest): Promise<SessionHandle>;
  /** A session started and was bound to its client: keep what a later server needs to adopt it. */
  keep?(served: ServedSession): void;
  /** The sessions, attached or in their grace period (a resume finds its session here). */
  sessions: SessionRegistry;
  timing: ConnectionTiming;
  /** Offload requests running plus replies not yet acknowledged, per session. */
  maxOffloads: number;
  /** Bytes all connections may buffer before their sessions start. */
  preSession: ByteBudget;
  /** What this cloudlet offers, for an `info` request (`vmsynth discover`). */
  info?(): Promise<Omit<Extract<ServerMessage, { type: 'info' }>, 'type'>>;
  /** Handoffs to and from other cloudlets (server/handoffs.ts); none: this server does none. */
  handoffs?: HandoffHooks;
}

/** What a connection asks of the server's handoffs. */
export interface HandoffHooks {
  /** A cloudlet said hello to hand a session off here: the conversation on `io` is the handoff's from now on. */
  accept(io: FramedSocket, peer: string, client: string): void;
  /** The client asked to move its session's VM to host:port: resolves when it runs there, or rejects (typed). */
  start(served: ServedSession, to: { host: string; port: number }): Promise<unknown>;
}

export interface ConnectionTiming {
  /** Time a new connection has to open or resume its session. */
  handshakeTimeoutMs: number;
  /** Each side sends a ping when it has sent nothing for this long. */
  keepaliveMs: number;
  /** A connection that sent nothing for this long, or has not read what it was sent, is dropped (its session is not). */
  idleMs: number;
  /** How long a session whose connection dropped waits for a resume; 0 ends it at the drop. */
  graceMs: number;
}
