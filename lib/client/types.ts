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

export interface SynthesizeOptions {
  /** "HOST:PORT", "HOST" (port 8021) or { host, port }. */
  server: string | { host: string; port: number };
  /** Overlay directory (overlay.manifest + overlay.segments). */
  overlay: string;
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
  offload(request: OffloadRequest): Promise<{ status: number; body: Buffer }>;
}

export type ClientEvent =
  | { type: 'timeline'; step: keyof Timeline; ms: number }
  | { type: 'accepted'; session: string; base: string }
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
  bytesSent: number;
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
  /** The server's own account of the session (its clock starts at the manifest). */
  serverStats: Record<string, unknown>;
}
