/**
 * Logging: subscribes to the core's diagnostics channels and writes them out.
 * JSON (pino, one object per line) or short human lines; the server logs JSON
 * to stdout (journald keeps it), other commands text to stderr. Each session
 * gets a child logger carrying its session id, domain, client and peer, so
 * every line of a session can be selected with one field. LOG_LEVEL (debug,
 * info, warn, error, silent) filters both formats.
 */
import pino from 'pino';
import { channels, type ChannelName } from './diagnostics.js';

type Level = 'debug' | 'info' | 'warn' | 'error';
const LEVELS = ['debug', 'info', 'warn', 'error', 'silent'] as const;

const EVENT_LEVEL: Record<ChannelName, Level> = {
  accel: 'info',
  domainCreated: 'debug',
  domainRunning: 'debug',
  domainDestroyed: 'debug',
  fuseMounted: 'debug',
  fuseUnmounted: 'debug',
  fuseReadFailed: 'error',
  keeperStarted: 'debug',
  sessionAdopted: 'info',
  sessionLeft: 'info',
  staleCleaned: 'warn',
  progress: 'info',
  cleanupFailed: 'warn',
  sessionStarted: 'info',
  sessionResumed: 'info',
  firstResponse: 'info',
  overlayComplete: 'info',
  segmentApplied: 'debug',
  demandFetch: 'debug',
  readUnblocked: 'debug',
  vmDied: 'error',
  connectionRefused: 'warn',
  baseChecked: 'info',
  sessionEnded: 'info',
  sessionDetached: 'info',
  offloadForwarded: 'debug',
  sessionReattached: 'info',
  handoff: 'info',
  serverListening: 'info',
  storeHit: 'debug',
  storeChunkHit: 'debug',
  storeMiss: 'debug',
  storeAdded: 'debug',
  storeEvicted: 'debug',
  storeDropped: 'warn',
  objectStoreFallback: 'warn',
  objectStoreHedge: 'info',
};

/** An event's level; a few depend on what the event says. */
function levelOf(name: ChannelName, m: Record<string, unknown>): Level {
  if (name === 'baseChecked' && m.ok === false) return 'error';
  if ((name === 'sessionEnded' || name === 'handoff') && m.error) return 'warn';
  // A read still held when its session ends is answered with an error because the VM is being torn down: expected, not a fault.
  if (name === 'fuseReadFailed' && (m.error as { code?: unknown } | undefined)?.code === 'VMS_INTERRUPTED')
    return 'debug';
  return EVENT_LEVEL[name];
}

function text(name: ChannelName, m: Record<string, unknown>): string {
  switch (name) {
    case 'accel':
      return `accelerator: ${String(m.accel).toUpperCase()} (${String(m.reason)})`;
    case 'progress':
      return String(m.step);
    case 'staleCleaned':
      return `removed stale ${String(m.kind)} left by a crashed run: ${String(m.what)}`;
    case 'cleanupFailed':
      return `cleanup step failed: ${String(m.what)}: ${errText(m.error)}`;
    case 'sessionStarted':
      return `session ${String(m.session)} from ${String(m.peer)} (client ${String(m.client)}): ${String(m.policy)} over base "${String(m.base)}", ${String(m.segments)} segments`;
    case 'sessionResumed':
      return `session ${String(m.session)}: VM ${String(m.domain)} running after ${String(m.ms)} ms`;
    case 'firstResponse':
      return `session ${String(m.session)}: first response after ${String(m.ms)} ms`;
    case 'overlayComplete':
      return `session ${String(m.session)}: overlay complete after ${String(m.ms)} ms`;
    case 'vmDied':
      return `session ${String(m.session)}: the VM died: ${errText(m.error)}`;
    case 'connectionRefused':
      return `connection from ${String(m.peer)} refused: ${String(m.code)}: ${String(m.message)}`;
    case 'baseChecked':
      return m.ok
        ? `base "${String(m.base)}" verified (${String(m.ms)} ms)`
        : `base "${String(m.base)}" failed verification: ${errText(m.error)}`;
    case 'sessionDetached':
      return `session ${String(m.session)}: the connection from ${String(m.peer)} dropped (${errText(m.error)}); waiting ${String(m.graceMs)} ms for a resume`;
    case 'handoff':
      return `handoff ${m.role === 'source' ? 'to' : 'from'} ${String(m.peer)}, session ${String(m.session)}: ${String(m.step)}${typeof m.ms === 'number' ? ` (${m.ms} ms)` : ''}${typeof m.detail === 'string' ? `: ${m.detail}` : ''}${m.error ? `: ${errText(m.error)}` : ''}`;
    case 'sessionReattached':
      return `session ${String(m.session)}: resumed by ${String(m.peer)} (resume ${String(m.resumes)})`;
    case 'sessionEnded':
      return `session ${String(m.session)} ended${m.error ? ` (${errText(m.error)})` : ''}: ${JSON.stringify(m.stats)}`;
    case 'serverListening':
      return `listening on ${String(m.host)}:${String(m.port)}${m.tls ? ' (TLS)' : ''}${m.auth ? ', clients authenticate' : ''}`;
    case 'objectStoreHedge':
      return `session ${String(m.session)}: a guest read waited ${String(m.afterMs)} ms on the object store for segment ${String(m.segment)}; asking the client too`;
    case 'fuseReadFailed':
      return `FUSE read failed (${String(m.path)} at ${String(m.offset)}): ${errText(m.error)}`;
    default:
      return `${name} ${JSON.stringify(m)}`;
  }
}

function errText(e: unknown): string {
  if (e instanceof Error) return 'code' in e ? `${String(e.code)}: ${e.message}` : e.message;
  if (e && typeof e === 'object' && 'message' in e) return String(e.message);
  return String(e);
}

/** An error as a JSON field: code and message, not a stack. */
function errField(e: unknown): unknown {
  if (e instanceof Error) return { ...('code' in e ? { code: e.code } : {}), message: e.message };
  return e;
}

export interface LoggerOptions {
  level?: string;
  /** json or text (default text). */
  format?: string;
  /** Where lines go (default stderr). */
  to?: 'stdout' | 'stderr';
}

/** Starts logging core events; returns a function that stops it. */
export function attachLogger(opts: LoggerOptions = {}): () => void {
  const level = (LEVELS as readonly string[]).includes(opts.level ?? '')
    ? (opts.level as (typeof LEVELS)[number])
    : 'info';
  const threshold = LEVELS.indexOf(level);
  const fd = opts.to === 'stdout' ? 1 : 2;
  const root =
    opts.format === 'json'
      ? pino({ level, base: { name: 'vmsynth', pid: process.pid } }, pino.destination({ fd, sync: true }))
      : null;
  const sessions = new Map<string, pino.Logger>();
  const unsubscribers: (() => void)[] = [];
  for (const name of Object.keys(channels) as ChannelName[]) {
    const handler = (message: unknown) => {
      const m = (message ?? {}) as Record<string, unknown>;
      const lvl = levelOf(name, m);
      if (LEVELS.indexOf(lvl) < threshold) return;
      const id = typeof m.session === 'string' ? m.session : null;
      if (root) {
        if (name === 'sessionStarted' && id)
          sessions.set(id, root.child({ session: id, domain: m.domain, client: m.client, peer: m.peer }));
        const log = (id && sessions.get(id)) || root;
        const { session: _s, domain: _d, client: _c, peer: _p, ...rest } = m;
        const fields = log === root ? m : rest;
        log[lvl]({ event: name, ...fields, ...('error' in m ? { error: errField(m.error) } : {}) }, text(name, m));
        if (name === 'sessionEnded' && id) sessions.delete(id);
      } else {
        (fd === 1 ? process.stdout : process.stderr).write(`vmsynth: ${text(name, m)}\n`);
      }
    };
    channels[name].subscribe(handler);
    unsubscribers.push(() => channels[name].unsubscribe(handler));
  }
  return () => unsubscribers.forEach((u) => u());
}
