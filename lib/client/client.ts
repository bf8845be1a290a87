/**
 * The mobile side of the vmsynth protocol: hand a synthesis server an overlay, answer
 * its segment requests from the local overlay files, send the first offload
 * request as soon as the VM is ready, and keep a timeline of it all.
 *
 * Segment requests come on two lanes; a demand request is served before
 * any background segment not yet started (segments are never interleaved).
 * At most one segment sits in the socket's user-space buffer at a time, so a
 * demand request waits behind at most one segment plus what the kernel
 * buffers. Usable from any Node program: `synthesize()` is the whole API.
 */
import net from 'node:net';
import tls from 'node:tls';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { DEFAULTS } from '../core/defaults.js';
import { ERRORS, VmsynthError, type ErrorCode } from '../core/errors.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { MANIFEST_FILE, SEGMENTS_FILE } from '../overlay/format.js';
import { Overlay } from '../overlay/reader.js';
import { FramedSocket } from '../protocol/framed-socket.js';
import { FRAME_CAPS, parseServerMessage, PROTOCOL, type Policy, type ServerMessage } from '../protocol/messages.js';

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
  | { type: 'segment'; index: number; lane: 'demand' | 'background'; sent: number; total: number; bytesSent: number; overlayBytes: number };

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

export function parseServer(spec: SynthesizeOptions['server']): { host: string; port: number } {
  if (typeof spec !== 'string') return spec;
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(spec.trim());
  const port = m?.[2] ? Number(m[2]) : DEFAULTS.port;
  if (!m || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new VmsynthError('VMS_USAGE', `--server must be HOST:PORT, got "${spec}"`, { details: { flag: '--server', value: spec } });
  }
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

function serverError(code: string, message: string): VmsynthError {
  const known = Object.hasOwn(ERRORS, code) ? (code as ErrorCode) : 'VMS_PROTOCOL';
  return new VmsynthError(known, `the server: ${message}`, { details: { serverCode: code } });
}

/** Runs one synthesis session against a server; resolves after the server confirmed the teardown. */
export async function synthesize(opts: SynthesizeOptions): Promise<SynthesizeResult> {
  const t0 = performance.now();
  const at = () => Math.round(performance.now() - t0);
  const { host, port } = parseServer(opts.server);
  const dir = path.resolve(opts.overlay);
  // The client checks the signature against the key the manifest carries; the server checks trust.
  const overlay = await Overlay.open(dir, { trusted: null });
  const manifest = await fsp.readFile(path.join(dir, MANIFEST_FILE));
  const segments = await fsp.open(path.join(dir, SEGMENTS_FILE), 'r');
  const segs = overlay.body.segments;
  const policy = opts.policy ?? 'early-start';
  const waitComplete = opts.waitComplete ?? policy !== 'demand-only';
  const request = opts.request ?? { method: 'GET', path: '/run' };
  const timeline: Timeline = { connected: null, accepted: null, resumed: null, firstResponse: null, overlayComplete: null, finished: null };
  const mark = (step: keyof Timeline) => {
    timeline[step] ??= at();
    opts.onEvent?.({ type: 'timeline', step, ms: timeline[step] });
  };

  const socket = await connect(host, port, opts.signal, opts.tls);
  mark('connected');

  return new Promise<SynthesizeResult>((resolve, reject) => {
    let session = '';
    let baseName = '';
    let firstResponse: SynthesizeResult['firstResponse'] | null = null;
    let bytesSent = 0;
    let segmentsSent = 0;
    let before = { bytes: 0, segments: 0 };
    let demandRequests = 0;
    let hurried = 0;
    const sends: SegmentSend[] = [];
    const demand: number[] = [];
    const background: number[] = [];
    const attempts = new Map<number, number>();
    let sending = false;
    let paceUntil = 0;
    let done = false;
    let finishing = false;

    const finish = (err: Error | null, result?: SynthesizeResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      void segments.close();
      for (const r of replies.values()) r.reject(err ?? new VmsynthError('VMS_PEER_GONE', 'the session ended'));
      replies.clear();
      if (err) {
        if (io.open) io.send({ type: 'error', code: err instanceof VmsynthError ? err.code : 'VMS_INTERNAL', message: err.message.slice(0, 4000) });
        io.end(500);
        reject(err);
      } else {
        io.end(500);
        resolve(result!);
      }
    };
    const onAbort = () => finish(new VmsynthError('VMS_INTERRUPTED', 'synthesis cancelled'));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const timeoutMs = opts.timeoutMs ?? 600_000;
    const timer = setTimeout(() => finish(new VmsynthError('VMS_GUEST_TIMEOUT', `the session did not finish within ${timeoutMs} ms`)), timeoutMs);

    const io = new FramedSocket(socket, FRAME_CAPS.greeting, {
      frame: (f) => {
        let m: ServerMessage;
        try {
          m = parseServerMessage(f);
        } catch (err) {
          finish(err as Error);
          return;
        }
        onMessage(m);
      },
      invalid: (err) => finish(err),
      closed: (err) => finish(new VmsynthError('VMS_PEER_GONE', `the server closed the connection${err ? ` (${err.message})` : ''}${finishing ? ' before confirming the teardown' : ''}`)),
    });

    const replies = new Map<number, { resolve: (r: { status: number; body: Buffer }) => void; reject: (e: Error) => void }>();
    let nextId = 2;
    const running: RunningSession = {
      get session() { return session; },
      offload: (req) => new Promise((resolve, reject) => {
        if (done) return reject(new VmsynthError('VMS_PEER_GONE', 'the session has ended'));
        const id = nextId++;
        replies.set(id, { resolve, reject });
        io.send({ type: 'offload', id, method: req.method, path: req.path }, req.body);
      }),
    };
    const maybeFinish = () => {
      if (finishing || !firstResponse || (waitComplete && timeline.overlayComplete === null)) return;
      finishing = true;
      const hook = opts.whileRunning ? opts.whileRunning(running) : Promise.resolve();
      hook.then(() => {
        if (!done) io.send({ type: 'finish' });
      }, (err: unknown) => finish(err as Error));
    };

    const pump = async () => {
      if (sending) return;
      sending = true;
      try {
        while (!done) {
          if (opts.maxBytesPerSecond) {
            const wait = paceUntil - performance.now();
            if (wait > 0) await new Promise((r) => setTimeout(r, wait));
            if (done) break;
          }
          const lane = demand.length ? 'demand' : 'background';
          if (lane === 'background' && !firstResponse && opts.holdBackgroundAfterBytes !== undefined && bytesSent >= opts.holdBackgroundAfterBytes) break;
          const index = demand.length ? demand.shift() : background.shift();
          if (index === undefined) break;
          const s = segs[index]!;
          let data: Buffer = Buffer.allocUnsafe(s.bytes);
          const { bytesRead } = await segments.read(data, 0, s.bytes, s.offset);
          if (bytesRead !== s.bytes) throw new VmsynthError('VMS_OVERLAY_CORRUPT', `${SEGMENTS_FILE} ends inside segment ${index}`);
          const attempt = (attempts.get(index) ?? 0) + 1;
          attempts.set(index, attempt);
          if (opts.tamper) data = opts.tamper(index, data, attempt);
          if (done) break;
          io.send({ type: 'segment', index }, data);
          sends.push({ ms: at(), index, lane, bytes: s.bytes });
          bytesSent += s.bytes;
          segmentsSent++;
          if (opts.maxBytesPerSecond) paceUntil = Math.max(paceUntil, performance.now()) + (s.bytes / opts.maxBytesPerSecond) * 1000;
          opts.onEvent?.({ type: 'segment', index, lane, sent: segmentsSent, total: segs.length, bytesSent, overlayBytes: overlay.segmentsBytes });
          await io.drained();
        }
      } catch (err) {
        finish(err as Error);
      } finally {
        sending = false;
      }
    };

    /** Removes segment `i` from the background lane; false when it was not waiting there. */
    const takeFromBackground = (i: number): boolean => {
      const k = background.indexOf(i);
      if (k < 0) return false;
      background.splice(k, 1);
      return true;
    };

    const onMessage = (m: ServerMessage) => {
      switch (m.type) {
        case 'welcome':
          io.setMaxFrameBytes(FRAME_CAPS.session);
          io.send({ type: 'session', policy }, manifest);
          return;
        case 'accepted':
          session = m.session;
          baseName = m.base;
          io.setMaxFrameBytes(FRAME_CAPS.streaming);
          opts.onEvent?.({ type: 'accepted', session, base: baseName });
          mark('accepted');
          return;
        case 'want': {
          const bad = m.segments.find((i) => i >= segs.length);
          if (bad !== undefined) return finish(new VmsynthError('VMS_PROTOCOL', `the server asked for segment ${bad}; the overlay has ${segs.length}`));
          if (m.lane === 'demand') {
            demandRequests += m.segments.length;
            demand.push(...m.segments);
            // A demand request jumps the queue: drop it from the background lane if it is there.
            for (const i of m.segments) takeFromBackground(i);
          } else {
            background.push(...m.segments);
          }
          void pump();
          return;
        }
        case 'hurry':
          // Segments asked for in the background that a blocked guest read needs: those not yet sent go next.
          // One already sent (or being sent) is not sent again.
          for (const i of m.segments) {
            if (!takeFromBackground(i)) continue;
            demand.push(i);
            hurried++;
          }
          void pump();
          return;
        case 'ready':
          mark('resumed');
          io.send({ type: 'offload', id: 1, method: request.method, path: request.path }, request.body);
          return;
        case 'reply':
          if (m.id !== 1) {
            replies.get(m.id)?.resolve({ status: m.status, body: m.body });
            replies.delete(m.id);
            return;
          }
          if (firstResponse) return;
          mark('firstResponse');
          before = { bytes: bytesSent, segments: segmentsSent };
          firstResponse = { status: m.status, body: m.body.toString('utf8') };
          if (opts.holdBackgroundAfterBytes !== undefined) void pump();
          maybeFinish();
          return;
        case 'complete':
          mark('overlayComplete');
          maybeFinish();
          return;
        case 'finished':
          mark('finished');
          return finish(null, {
            server: `${host}:${port}`, session, base: baseName, policy, timeline,
            firstResponse: firstResponse!,
            overlayBytes: overlay.segmentsBytes, segments: segs.length, segmentsSent, bytesSent,
            bytesSentBeforeFirstResponse: before.bytes, segmentsSentBeforeFirstResponse: before.segments,
            demandRequests, hurried, sends, serverStats: m.stats,
          });
        case 'error':
          if (m.fatal || !firstResponse) return finish(serverError(m.code, m.message));
          return;
      }
    };

    io.send({ type: 'hello', protocol: PROTOCOL, client: `vmsynth ${VMSYNTH_VERSION}`, ...(opts.token !== undefined ? { token: opts.token } : {}) });
  });
}

function connect(host: string, port: number, signal?: AbortSignal, secure?: SynthesizeOptions['tls']): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const t = secure ? (secure === true ? {} : secure) : null;
    const socket = t
      ? tls.connect({ host, port, timeout: 10_000, ...(t.ca ? { ca: t.ca } : {}), servername: t.servername ?? (net.isIP(host) ? undefined : host) })
      : net.connect({ host, port, timeout: 10_000 });
    // details.reason: the Node error code (ECONNREFUSED, DEPTH_ZERO_SELF_SIGNED_CERT, ...), 'timeout' or 'cancelled'.
    const fail = (why: string, reason?: string) => {
      socket.destroy();
      const details = { host, port, tls: t !== null, ...(reason ? { reason } : {}) };
      reject(new VmsynthError('VMS_CONNECT', `cannot connect to ${host}:${port}${t ? ' over TLS' : ''}: ${why}`, { details }));
    };
    socket.once(t ? 'secureConnect' : 'connect', () => {
      socket.setTimeout(0);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('timeout', () => fail('no answer within 10 s', 'timeout'));
    socket.once('error', (err: NodeJS.ErrnoException) => fail(err.message, typeof err.code === 'string' ? err.code : undefined));
    signal?.addEventListener('abort', () => fail('cancelled', 'cancelled'), { once: true });
  });
}
