/**
 * Logging: subscribes to the core's diagnostics channels and writes to
 * stderr — short human lines by default, pino JSON with LOG_FORMAT=json.
 * LOG_LEVEL (debug, info, warn, error, silent) filters both.
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
  staleCleaned: 'warn',
  progress: 'info',
  cleanupFailed: 'warn',
  sessionStarted: 'info',
  sessionEnded: 'info',
  serverListening: 'info',
};

function text(name: ChannelName, m: Record<string, unknown>): string {
  switch (name) {
    case 'accel': return `accelerator: ${String(m.accel).toUpperCase()} (${String(m.reason)})`;
    case 'progress': return String(m.step);
    case 'staleCleaned': return `removed stale ${String(m.kind)} left by a crashed run: ${String(m.what)}`;
    case 'cleanupFailed': return `cleanup step failed: ${String(m.what)}: ${errText(m.error)}`;
    case 'sessionStarted': return `session ${String(m.session)} from ${String(m.peer)}: ${String(m.policy)} over base "${String(m.base)}", ${String(m.segments)} segments`;
    case 'sessionEnded': return `session ${String(m.session)} ended${m.error ? ` (${errText(m.error)})` : ''}: ${JSON.stringify(m.stats)}`;
    case 'serverListening': return `listening on ${String(m.host)}:${String(m.port)}`;
    case 'fuseReadFailed': return `FUSE read failed (${String(m.path)} at ${String(m.offset)}): ${errText(m.error)}`;
    default: return `${name} ${JSON.stringify(m)}`;
  }
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Starts logging core events to stderr; returns a function that stops it. */
export function attachLogger(opts: { level?: string; format?: string } = {}): () => void {
  const level = (LEVELS as readonly string[]).includes(opts.level ?? '') ? (opts.level as (typeof LEVELS)[number]) : 'info';
  const threshold = LEVELS.indexOf(level);
  const json = opts.format === 'json' ? pino({ level, base: { name: 'vmsynth' } }, pino.destination(2)) : null;
  const unsubscribers: (() => void)[] = [];
  for (const name of Object.keys(channels) as ChannelName[]) {
    const lvl = EVENT_LEVEL[name];
    if (LEVELS.indexOf(lvl) < threshold) continue;
    const handler = (message: unknown) => {
      const m = (message ?? {}) as Record<string, unknown>;
      if (json) json[lvl]({ event: name, ...m, ...(m.error instanceof Error ? { error: m.error.message } : {}) });
      else process.stderr.write(`vmsynth: ${text(name, m)}\n`);
    };
    channels[name].subscribe(handler);
    unsubscribers.push(() => channels[name].unsubscribe(handler));
  }
  return () => unsubscribers.forEach((u) => u());
}
