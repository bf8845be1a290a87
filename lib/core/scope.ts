/**
 * Resource scopes and cancellation.
 *
 * A Scope owns everything one operation acquired (a domain, a FUSE mount, a
 * socket, a temp directory) as a LIFO list of release steps. close() runs
 * every step even when some fail, so a failure half-way never leaks the rest.
 * Cancellation is an AbortSignal whose reason is a VmsynthError.
 *
 * A step may end state that outlives this process (a domain, a FUSE mount
 * kept by another process, a run directory): it is `lasting`. release()
 * runs every other step and leaves those, so a server can let go of a
 * session that another server will adopt.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { publish } from './diagnostics.js';
import { VmsynthError } from './errors.js';

type Release = () => unknown;

export class Scope {
  private readonly steps: { what: string; release: Release; lasting: boolean }[] = [];
  private closed = false;

  /**
   * Registers a release step; steps run in reverse order of registration.
   * `lasting`: it ends state that outlives this process, and release() skips it.
   */
  defer(what: string, release: Release, opts: { lasting?: boolean } = {}): void {
    if (this.closed) throw new VmsynthError('VMS_INTERNAL', `scope already closed; cannot defer ${what}`);
    this.steps.push({ what, release, lasting: !!opts.lasting });
  }

  /** Runs all release steps, newest first. Failures are published, never thrown. */
  close(): Promise<void> {
    return this.run(true);
  }

  /** Runs the steps that are not lasting, newest first, and forgets the lasting ones. */
  release(): Promise<void> {
    return this.run(false);
  }

  private async run(all: boolean): Promise<void> {
    this.closed = true;
    while (this.steps.length > 0) {
      const { what, release, lasting } = this.steps.pop()!;
      if (lasting && !all) continue;
      try {
        await release();
      } catch (error) {
        publish('cleanupFailed', { what, error });
      }
    }
  }
}

/** Runs fn with a fresh scope and always closes it. */
export async function withScope<T>(fn: (scope: Scope) => Promise<T>): Promise<T> {
  const scope = new Scope();
  try {
    return await fn(scope);
  } finally {
    await scope.close();
  }
}

/** Throws the signal's reason (a VmsynthError) when it has been aborted. */
export function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw abortReason(signal);
}

export function abortReason(signal: AbortSignal): VmsynthError {
  const r: unknown = signal.reason;
  return r instanceof VmsynthError ? r : new VmsynthError('VMS_INTERRUPTED', 'operation cancelled', { cause: r });
}

/** Sleeps, rejecting early with the abort reason. */
export async function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  try {
    await delay(ms, undefined, { signal });
  } catch (err) {
    if (signal?.aborted) throw abortReason(signal);
    throw err;
  }
}

/** Races a promise against an abort signal. */
export function untilAborted<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/** Lets the event loop turn (timers, I/O, a FUSE read waiting), then throws if `signal` was aborted: long CPU-bound loops call it now and then. */
export async function yieldNow(signal?: AbortSignal): Promise<void> {
  await new Promise((r) => setImmediate(r));
  throwIfAborted(signal);
}

/**
 * Times the consecutive phases of a long job: call lap(name) as each phase
 * ends; ms() gives every phase's duration and the total so far, in whole
 * milliseconds (what results report as `ms`).
 */
export class PhaseTimer<P extends string> {
  private readonly t0 = performance.now();
  private last = this.t0;
  private readonly laps = {} as Record<P, number>;

  lap(phase: P): void {
    const now = performance.now();
    this.laps[phase] = Math.round(now - this.last);
    this.last = now;
  }

  ms(): Record<P | 'total', number> {
    return { ...this.laps, total: Math.round(performance.now() - this.t0) };
  }
}
