/**
 * What the client library takes and gives: synthesize()'s options, the
 * events it reports, the session handle a caller runs requests through, and
 * the result with its timeline.
 */
import type { Policy } from '../protocol/messages.js';

export interface OffloadRequest {
  method: 'GET' | 'POST' | 'PUT';
  /** Starts with "/". */
  path: string;
  body?: Buffer;
}

/** One request of a session's log: what was sent, when (ms on the session's clock), and how it ended. */
export interface LoggedOffload extends OffloadRequest {
  id: number;
  atMs: number;
  status?: number;
  /** The code of the error it ended with. */
  error?: string;
}

export interface OffloadReply {
  status: number;
  body: Buffer;
}

/** One drop the session survived: when it came (ms on the session's clock), how long the session had no connection, and why. */
export interface Reconnect {
  atMs: number;
  lostMs: number;
  reason: string;
}

/** What ClientSession.open() takes. */
export interface SessionOptions {
  /** "HOST:PORT", "HOST" (port 8021) or { host, port }. */
  server: string | { host: string; port: number };
  /** Overlay directory (overlay.manifest + overlay.segments). */
  overlay: string;
  /** Where the server may fetch the overlay's segments itself (s3://bucket/prefix, from `vmsynth overlay push`); the client sends what it cannot. */
  overlayUrl?: string;
  /** Offer chunk lookaside: the server may ask for digest tables and thin segments (default true). */
  lookaside?: boolean;
  policy?: Policy;
  token?: string;
  /** TCP or TLS, as SynthesizeOptions.tls. */
  tls?: boolean | { ca?: Buffer | string; servername?: string };
  /** Reconnect and resume after a drop, within the server's grace period (default true). */
  reconnect?: boolean;
  signal?: AbortSignal;
  onEvent?: (e: ClientEvent) => void;
  maxBytesPerSecond?: number;
  tamper?: (index: number, data: Buffer, attempt: number) => Buffer;
  /** Holds the background lane while it returns true (given the segment bytes sent so far). */
  holdBackground?: (bytesSent: number) => boolean;
  /** The origin of the session's clock (performance.now()); default: when open() is called. */
  startedAt?: number;
}

export interface SynthesizeOptions {
  /** "HOST:PORT", "HOST" (port 8021) or { host, port }. */
  server: string | { host: string; port: number };
  /** Overlay directory (overlay.manifest + overlay.segments). */
  overlay: string;
  /** Where the server may fetch the overlay's segments itself (s3://bucket/prefix, from `vmsynth overlay push`); the client sends what it cannot. */
  overlayUrl?: string;
  /** Offer chunk lookaside (default true): SessionOptions.lookaside. */
  lookaside?: boolean;
  policy?: Policy;
  /** The first offload request (default GET /run). */
  request?: OffloadRequest;
  token?: string;
  /**
   * Speak TLS: true checks the server's certificate against the system's CAs,
   * { ca } against these PEM certificates (a cloudlet's own CA or a
   * self-signed certificate); servername overrides the name checked.
   */
  tls?: boolean | { ca?: Buffer | string; servername?: string };
  /** Finish only after every segment was sent (default: yes, except demand-only). */
  waitComplete?: boolean;
  /** Overall limit (default 10 min). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Progress: called on every timeline event and after every segment sent. */
  onEvent?: (e: ClientEvent) => void;
  /**
   * Paces segment sending to this many bytes per second, to emulate a slower
   * link than the real one (tests on loopback; the benchmark shapes a real
   * link with tc instead). Default: unpaced.
   */
  maxBytesPerSecond?: number;
  /**
   * Called once the first response is in (and, with waitComplete, the whole
   * overlay): the VM stays up until it resolves. More offload requests can
   * be sent through `ctx.offload`.
   */
  whileRunning?: (ctx: RunningSession) => Promise<void>;
  /** Fault injection for tests: may replace a segment's bytes before they are sent (attempt counts from 1). */
  tamper?: (index: number, data: Buffer, attempt: number) => Buffer;
  /** Reconnect and resume after a drop, within the server's grace period (default true). */
  reconnect?: boolean;
  /**
   * Fault injection for tests: a background stream that stalls. Once this many
   * bytes were sent, background segments wait for the first response; demand
   * requests are still served. With it, "answered before the overlay arrived"
   * holds however slow the host is, and the guest's reads past this point can
   * only be served on demand.
   */
  holdBackgroundAfterBytes?: number;
}

export interface RunningSession {
  /** The server's session id. */
  session: string;
  offload(request: OffloadRequest): Promise<OffloadReply>;
}

export type ClientEvent =
  | { type: 'timeline'; step: keyof Timeline; ms: number }
  | { type: 'accepted'; session: string; base: string }
  | { type: 'dropped'; reason: string }
  | { type: 'reconnected'; count: number; lostMs: number; reason: string }
  /** The server moved the session's VM to another cloudlet (a handoff); the session resumes there. */
  | { type: 'moved'; to: string; session: string }
  | {
      type: 'segment';
      index: number;
      lane: 'demand' | 'background';
      sent: number;
      total: number;
      bytesSent: number;
      overlayBytes: number;
    };

export interface SegmentSend {
  ms: number;
  index: number;
  lane: 'demand' | 'background';
  bytes: number;
}

/** Milliseconds since synthesize() was called, on the client's clock. */
export interface Timeline {
  connected: number | null;
  accepted: number | null;
  resumed: number | null;
  firstResponse: number | null;
  overlayComplete: number | null;
  finished: number | null;
}

export interface SynthesizeResult {
  server: string;
  session: string;
  base: string;
  policy: Policy;
  timeline: Timeline;
  firstResponse: { status: number; body: string };
  overlayBytes: number;
  segments: number;
  segmentsSent: number;
  /** Segment bytes sent (thin ones as sent), digest tables included. */
  bytesSent: number;
  /** Chunk lookaside: digest tables sent (their bytes are in bytesSent), and payload bytes thin segments left out (before compression). */
  lookaside: { tables: number; tableBytes: number; payloadBytesOmitted: number };
  /**
   * Segment bytes handed to the socket before the first response arrived: on
   * a slow link up to a segment more than had reached the server (whose own
   * count is serverStats.bytesReceivedBeforeFirstResponse).
   */
  bytesSentBeforeFirstResponse: number;
  segmentsSentBeforeFirstResponse: number;
  demandRequests: number;
  /** Segments asked for in the background that a blocked guest read needed before they were sent: they went next (`hurry`). */
  hurried: number;
  /** Every segment sent, in order: when it was handed to the socket (client clock), and on which lane. */
  sends: SegmentSend[];
  /** The drops the session survived. */
  reconnects: Reconnect[];
  /** The server's own account of the session (its clock starts at the manifest). */
  serverStats: Record<string, unknown>;
}

/** An offload request sent and not yet answered, with what settles it. */
export interface PendingOffload {
  req: OffloadRequest;
  resolve(r: OffloadReply): void;
  reject(e: Error): void;
}

/** Where a client session is: connecting (or reconnecting), open, finishing, done. */
export type SessionState = 'connecting' | 'open' | 'finishing' | 'done';
