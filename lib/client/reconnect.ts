/**
 * Reconnecting after a drop: attempts with backoff until the session's grace
 * period ends, and the typed reason to give up. Plain TypeScript (timers
 * only), so a port of the client can copy it as is.
 */
import { VmsynthError } from '../core/errors.js';

/** How long retries come every 100 ms before they back off. */
export const FAST_MS = 10_000;

export type BackoffOutcome = { ok: true } | { ok: false; last: string; error?: unknown };

/**
 * Calls `attempt` until it resolves, until `deadline` (performance.now() time) has passed, or until
 * `fatal(error)` says a failure is final; resolves with the last failure's message when it gives up.
 * For the first FAST_MS it tries again every 100 ms: a phone's network usually comes back within
 * seconds, and what a drop costs is its length plus the wait for the next try. Then it waits twice
 * as long after each failure, up to 2 s.
 */
export async function withBackoff(
  deadline: number,
  attempt: () => Promise<void>,
  fatal: (error: unknown) => boolean,
  first = 'no attempt made',
): Promise<BackoffOutcome> {
  const start = performance.now();
  let wait = 100;
  let last = first;
  while (performance.now() < deadline) {
    try {
      await attempt();
      return { ok: true };
    } catch (error) {
      last = (error as Error).message;
      if (fatal(error)) return { ok: false, last, error };
    }
    await new Promise((r) => setTimeout(r, Math.min(wait, Math.max(0, deadline - performance.now()))));
    if (performance.now() - start > FAST_MS) wait = Math.min(wait * 2, 2000);
  }
  return { ok: false, last };
}

/** A server that refuses new connections this long after a drop is taken to have stopped. */
export const REFUSED_MS = 10_000;

export interface ReconnectOptions {
  /** performance.now() time by which the session must be resumed (the drop plus the grace period). */
  deadline: number;
  graceMs: number;
  /** Connects and sends the resume; rejects when it cannot connect. */
  attempt: () => Promise<void>;
  lastDrop: string;
  server: { host: string; port: number };
  session: string;
  /** Refusals for this long mean the server is gone (default REFUSED_MS). */
  refusedMs?: number;
  /** The server keeps sessions across its restarts (welcome's `keeps`): refusals are waited out to the deadline. */
  keeps?: boolean;
}

/**
 * Tries to reconnect until the deadline; resolves with null once a connection is made (the resume
 * then goes on over it), or with the error to end the session with. A server that refuses
 * connections for REFUSED_MS is not running: it stopped or crashed, and its VMs with it (a
 * restarted one would answer, and say the session is gone) — unless it keeps sessions across
 * restarts (`keeps`): then its VM runs on and a restarted server adopts the session, so refusals
 * are waited out to the deadline. A network that is down fails otherwise (unreachable, or no
 * answer), and is waited for up to the grace period.
 */
export async function reconnectWithin(o: ReconnectOptions): Promise<VmsynthError | null> {
  let refusedSince: number | null = null;
  let refusedFor = 0;
  const cancelled = (err: unknown) => err instanceof VmsynthError && err.details.reason === 'cancelled';
  const outcome = await withBackoff(
    o.deadline,
    o.attempt,
    (err) => {
      if (cancelled(err)) return true;
      if (!(err instanceof VmsynthError && err.details.reason === 'ECONNREFUSED')) {
        refusedSince = null;
        return false;
      }
      refusedSince ??= performance.now();
      refusedFor = performance.now() - refusedSince;
      return !o.keeps && refusedFor >= (o.refusedMs ?? REFUSED_MS);
    },
    o.lastDrop,
  );
  if (outcome.ok) return null;
  if (cancelled(outcome.error)) return outcome.error as VmsynthError;
  const { host, port } = o.server;
  if (outcome.error || (o.keeps && refusedFor > 0 && refusedSince !== null))
    return new VmsynthError(
      'VMS_PEER_GONE',
      `lost the connection to the server ${host}:${port}, which has refused new ones for ${Math.round(refusedFor / 1000)} s since: it stopped or crashed, and session ${o.session} with it${o.keeps ? ' (no server took the session back within its grace period)' : ''}`,
      { details: { reason: 'server-gone', refusedMs: Math.round(refusedFor) } },
    );
  return new VmsynthError(
    'VMS_PEER_GONE',
    `lost the connection to the server and could not resume session ${o.session} within its grace period of ${o.graceMs} ms (last: ${outcome.last})`,
    { details: { reason: 'resume-failed', graceMs: o.graceMs } },
  );
}
