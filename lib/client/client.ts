/**
 * synthesize(): one synthesis from start to teardown, over a ClientSession
 * (session.ts): open the session, send the first offload request at once
 * (the server holds it until the VM runs, which saves a round trip), wait for
 * its reply and (unless demand-only) the whole overlay, run the caller's
 * whileRunning hook, finish, and report a timeline of it all. Drops are
 * survived as the session survives them, and counted.
 */
import { VmsynthError } from '../core/errors.js';
import { parseServer } from './connect.js';
import { ClientSession } from './session.js';
import type {
  ClientEvent,
  LoggedOffload,
  OffloadReply,
  SynthesizeOptions,
  SynthesizeResult,
  Timeline,
} from './types.js';

export { parseServer } from './connect.js';
export { ClientSession } from './session.js';
export type * from './types.js';

/** Runs one synthesis session against a server; resolves after the server confirmed the teardown. */
export async function synthesize(opts: SynthesizeOptions): Promise<SynthesizeResult> {
  const t0 = performance.now();
  const at = () => Math.round(performance.now() - t0);
  const { host, port } = parseServer(opts.server);
  const policy = opts.policy ?? 'early-start';
  const waitComplete = opts.waitComplete ?? policy !== 'demand-only';
  const request = opts.request ?? { method: 'GET', path: '/run' };
  const timeline: Timeline = {
    connected: null,
    accepted: null,
    resumed: null,
    firstResponse: null,
    overlayComplete: null,
    finished: null,
  };
  const mark = (step: keyof Timeline) => {
    if (timeline[step] !== null) return;
    timeline[step] = at();
    opts.onEvent?.({ type: 'timeline', step, ms: timeline[step] });
  };
  let firstResponse = false;
  let session: ClientSession | null = null;
  const onEvent = (e: ClientEvent) => {
    if (e.type === 'timeline') mark(e.step);
    else opts.onEvent?.(e);
  };
  const timeoutMs = opts.timeoutMs ?? 600_000;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new VmsynthError('VMS_GUEST_TIMEOUT', `the session did not finish within ${timeoutMs} ms`);
      session?.fail(err);
      reject(err);
    }, timeoutMs);
  });
  // The session failing (the server's fatal error, a lost connection) ends the synthesis at once,
  // whatever it waits for then (the whileRunning hook included).
  let sessionFailed!: (e: unknown) => void;
  const failed = new Promise<never>((_, reject) => (sessionFailed = reject));
  failed.catch(() => undefined);
  const onAbort = () => session?.fail(new VmsynthError('VMS_INTERRUPTED', 'synthesis cancelled'));
  opts.signal?.addEventListener('abort', onAbort, { once: true });

  const run = async (): Promise<SynthesizeResult> => {
    const s = await ClientSession.open({
      server: opts.server,
      overlay: opts.overlay,
      ...(opts.overlayUrl ? { overlayUrl: opts.overlayUrl } : {}),
      lookaside: opts.lookaside,
      policy,
      token: opts.token,
      tls: opts.tls,
      reconnect: opts.reconnect,
      signal: opts.signal,
      onEvent,
      maxBytesPerSecond: opts.maxBytesPerSecond,
      tamper: opts.tamper,
      startedAt: t0,
      holdBackground:
        opts.holdBackgroundAfterBytes === undefined
          ? undefined
          : (bytes) => !firstResponse && bytes >= opts.holdBackgroundAfterBytes!,
    });
    session = s;
    s.failed.catch(sessionFailed);
    if (opts.signal?.aborted) onAbort();
    mark('accepted');
    const reply = await s.offload(request);
    mark('firstResponse');
    firstResponse = true;
    const before = { ...s.sent };
    s.lanes.restart(); // a held background lane goes on
    if (waitComplete) await s.complete;
    if (opts.whileRunning) await opts.whileRunning({ session: s.id, offload: (req) => s.offload(req) });
    const stats = await s.finish();
    mark('finished');
    return {
      server: `${host}:${port}`,
      session: s.id,
      base: s.base,
      policy,
      timeline,
      firstResponse: { status: reply.status, body: reply.body.toString('utf8') },
      overlayBytes: s.overlay.segmentsBytes,
      segments: s.overlay.body.segments.length,
      segmentsSent: s.sent.segments,
      bytesSent: s.sent.bytes,
      lookaside: {
        tables: s.lanes.tablesSent,
        tableBytes: s.lanes.tableBytes,
        payloadBytesOmitted: s.lanes.bytesOmitted,
      },
      bytesSentBeforeFirstResponse: before.bytes,
      segmentsSentBeforeFirstResponse: before.segments,
      demandRequests: s.lanes.demandRequests,
      hurried: s.lanes.hurried,
      sends: s.lanes.sends,
      reconnects: s.reconnects,
      serverStats: stats,
    };
  };
  try {
    return await Promise.race([run(), timedOut, failed]);
  } catch (err) {
    (session as ClientSession | null)?.fail(err as Error);
    throw err;
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * Sends the requests of a log (`ClientSession.requests()` of another session, say) on `session`,
 * in order, each after the reply to the one before: catches a new session up (Slingshot's replay).
 */
export async function replay(session: ClientSession, log: readonly LoggedOffload[]): Promise<OffloadReply[]> {
  const out: OffloadReply[] = [];
  for (const e of log)
    out.push(await session.offload({ method: e.method, path: e.path, ...(e.body ? { body: e.body } : {}) }));
  return out;
}
