/**
 * A synthesis session as the server's protocol side drives it: SynthSession
 * (synth/session.ts), or a fake in the tests. Its own module so that the
 * connection's context and the served session both import it, and neither
 * the other.
 */
import type { Outstanding } from '../synth/segment-sources.js';
import type { HttpReply } from '../vm/guest-app.js';

/** A synthesis session as a connection drives it: SynthSession, or a fake. */
export interface SessionHandle {
  readonly id: string;
  /** The libvirt domain of its VM. */
  readonly domain: string;
  /** Starts asking for segments (and, unless baseline, resumes the VM). */
  run(): void;
  /** A segment arrived (`thin`: as a `thin` message asked). */
  receive(index: number, data: Buffer, thin?: boolean): void;
  /** A segment's digest table arrived (chunk lookaside). */
  receiveTable(index: number, data: Buffer): Promise<void>;
  /** An offload request for the app in the VM. */
  offload(method: string, path: string, body: Buffer): Promise<HttpReply>;
  /** Segments asked for and not yet received, by lane, and what lookaside asked for (a resumed client is asked for them again). */
  outstanding(): Outstanding;
  /** When the VM started running and when the overlay was complete (ms into the session), if they have. */
  progress(): { resumedMs: number | null; appliedMs: number | null };
  /** Ends the session and everything it started; resolves with its stats. Idempotent. */
  close(): Promise<object>;
  /** Leaves the session to its keeper (the VM runs on) for a later server to adopt; resolves with its stats. */
  release(): Promise<object>;
}
