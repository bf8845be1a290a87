/**
 * What a connection needs from the server it belongs to, as interfaces: who
 * may come in (auth), whether a session may start (admission), and how one
 * is started. The server (server.ts) builds the real context over libvirt;
 * the connection tests build one over fakes. Connections import this, never
 * the server, so the two do not import each other.
 */
import type { HttpReply } from '../vm/guest-app.js';
import type { Policy } from '../protocol/messages.js';
import type { SynthEvents } from '../synth/session.js';
import type { Admitted } from './admission.js';
import type { Authenticator } from './auth.js';

/** A synthesis session as a connection drives it: SynthSession, or a fake. */
export interface SessionHandle {
  readonly id: string;
  /** The libvirt domain of its VM. */
  readonly domain: string;
  /** Starts asking for segments (and, unless baseline, resumes the VM). */
  run(): void;
  /** A segment arrived. */
  receive(index: number, data: Buffer): void;
  /** An offload request for the app in the VM. */
  offload(method: string, path: string, body: Buffer): Promise<HttpReply>;
  /** Ends the session and everything it started; resolves with its stats. Idempotent. */
  close(): Promise<object>;
}

export interface SessionRequest extends Admitted {
  policy: Policy;
  events: SynthEvents;
}

export interface ServerContext {
  auth: Authenticator;
  /** Decides whether `client` may open a session over `manifest`: the overlay and the base it runs on, or a typed refusal. */
  admit(client: string, manifest: Buffer): Promise<Admitted>;
  /** Starts a session admitted by `admit`. */
  startSession(req: SessionRequest): Promise<SessionHandle>;
  /** Time a new connection has to open its session. */
  handshakeTimeoutMs: number;
}
