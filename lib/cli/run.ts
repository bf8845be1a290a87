/**
 * How every vmsynth command runs: logging attached, Ctrl-C and SIGTERM turned
 * into a clean cancellation (a second signal ends the process by that signal), errors printed
 * with their code and hint, `--json` results as the last stdout line, and the
 * exit status taken from the error catalogue.
 */
import type { LoggerOptions } from '../core/log.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';

export interface CommandContext {
  signal: AbortSignal;
  json: boolean;
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
}

/**
 * Runs one command; `action` returns what `--json` prints (or undefined for
 * nothing). `log` replaces the default logging (text to stderr, LOG_LEVEL and
 * LOG_FORMAT from the environment); a function is called first thing, and
 * what it throws is reported like any error of the command.
 */
export async function runCommand(
  json: boolean,
  action: (ctx: CommandContext) => Promise<unknown>,
  opts: { log?: () => LoggerOptions } = {},
): Promise<void> {
  let detach = () => undefined as void;
  const controller = new AbortController();
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      process.stderr.write(`vmsynth: ${sig}: cleaning up (send it again to exit at once)\n`);
      controller.abort(new VmsynthError('VMS_INTERRUPTED', `interrupted by ${sig}`));
    } else {
      dieBy(sig);
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const { attachLogger } = await import('../core/log.js');
    detach = attachLogger(opts.log ? opts.log() : { level: process.env.LOG_LEVEL, format: process.env.LOG_FORMAT });
    const result = await action({ signal: controller.signal, json });
    if (json && result !== undefined) printJson(result);
  } catch (err) {
    const e = asVmsynthError(err);
    process.stderr.write(`vmsynth: error ${e.code}: ${e.message}\n  what to do: ${e.hint}\n`);
    if (e.code === 'VMS_INTERNAL' && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    if (json) printJson({ error: e.toJSON() });
    process.exitCode = e.exitCode;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    detach();
  }
}

/**
 * Ends the process at once, by `sig` with its default action. Not
 * process.exit(): that joins libuv's thread pool, and a pool thread may be
 * inside a libvirt call (a domain destroy) waiting for QEMU, which waits for
 * a FUSE answer from this very process's main thread: a deadlock that made a
 * second SIGTERM hang. Dying by the signal lets the kernel abort the FUSE
 * connections; what is left (domain, mount, files) is the next start's
 * janitor's to clean.
 */
export function dieBy(sig: NodeJS.Signals): never {
  process.removeAllListeners(sig);
  process.kill(process.pid, sig);
  // The default action ends the process before the wait is over; if a handler
  // somewhere kept the signal, SIGKILL.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
}

/** Parses a positive integer option, as a usage error when it is not one. */
export function positiveInt(name: string): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n <= 0)
      throw new VmsynthError('VMS_USAGE', `${name} must be a positive integer, got "${value}"`);
    return n;
  };
}

export function nonNegativeInt(name: string): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 0)
      throw new VmsynthError('VMS_USAGE', `${name} must be a whole number >= 0, got "${value}"`);
    return n;
  };
}
