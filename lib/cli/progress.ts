/**
 * Progress of long CLI work on the terminal, drawn by cli-progress (which
 * replaced three hand-written `\r` lines): one bar on stderr, with the
 * amount done and its total (bytes shown as KiB/MiB), a percentage, an ETA,
 * and a free-form note. It draws only when enabled (stderr is a terminal and
 * --json is off); otherwise every call is a no-op, so stdout stays for the
 * result and logs stay clean. Lines logged while the bar shows go above it.
 */
import cliProgress from 'cli-progress';
import { bytes } from './format.js';

export interface Progress {
  /** `done` of the total; `note` replaces the text after the numbers. */
  update(done: number, note?: string): void;
  /** A line above the bar (a reconnect, a warning). */
  log(line: string): void;
  /** Removes nothing: leaves the last state of the bar on its line, and ends it. */
  stop(): void;
}

export interface ProgressOptions {
  label: string;
  total: number;
  /** How amounts read: bytes (KiB/MiB) or a plain count. */
  unit: 'bytes' | 'count';
  /** Default: stderr is a terminal. Pass false for --json. */
  enabled?: boolean;
  /** Default process.stderr (tests pass a fake terminal). */
  stream?: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
}

const OFF: Progress = { update: () => undefined, log: () => undefined, stop: () => undefined };

export function progressBar(o: ProgressOptions): Progress {
  const stream = o.stream ?? process.stderr;
  if (!(o.enabled ?? true) || !stream.isTTY) return OFF;
  const amount = (n: number) => (o.unit === 'bytes' ? bytes(n) : String(n));
  const bars = new cliProgress.MultiBar(
    {
      stream,
      format: `${o.label} [{bar}] {percentage}% | {amount} | ETA {eta_formatted}{note}`,
      barsize: 24,
      hideCursor: true,
      clearOnComplete: false,
      stopOnComplete: false,
      etaBuffer: 20,
      fps: 10,
      // Draw only when something changed (no redraws while idle).
      forceRedraw: false,
      noTTYOutput: false,
    },
    cliProgress.Presets.legacy,
  );
  const total = Math.max(1, o.total);
  const payload = (done: number, note: string) => ({
    amount: `${amount(done)} of ${amount(o.total)}`,
    note: note ? ` | ${note}` : '',
  });
  const bar = bars.create(total, 0, payload(0, ''));
  let note = '';
  let stopped = false;
  return {
    update(done, n) {
      if (stopped) return;
      if (n !== undefined) note = n;
      bar.update(Math.min(done, total), payload(done, note));
    },
    log(line) {
      if (!stopped) bars.log(`${line}\n`);
    },
    stop() {
      if (stopped) return;
      stopped = true;
      bars.stop();
    },
  };
}
