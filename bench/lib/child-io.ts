/**
 * The benches' child processes: the JSON lines one writes, and its stop
 * (SIGTERM, then waiting for the exit) deferred on a scope.
 */
import type { ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import type { Scope } from '../../lib/core/scope.js';

/** Calls `onLine` with each JSON line `stream` carries. */
export function jsonLines(stream: Readable, onLine: (o: Record<string, unknown>) => void): void {
  let buf = '';
  stream.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      onLine(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
      buf = buf.slice(nl + 1);
    }
  });
}

/** SIGTERM, then the exit (idempotent; at once for a child that is gone). */
export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await gone;
}

/** Defers `child`'s stop on `scope`; returns it, to run sooner. */
export function stopWith(scope: Scope, what: string, child: ChildProcess): () => Promise<void> {
  const stop = () => stopChild(child);
  scope.defer(`stop ${what}`, stop);
  return stop;
}
