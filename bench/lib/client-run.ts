/**
 * Running the real client for a bench: one `vmsynth synth --json` (the built
 * CLI, dist/lib/cli/entry.cjs) inside a network namespace, its last stdout
 * line parsed as the SynthesizeResult or the error.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { SynthesizeResult } from '../../lib/client/client.js';
import { ERRORS, VmsynthError, type ErrorCode } from '../../lib/core/errors.js';
import { abortReason } from '../../lib/core/scope.js';
import type { Policy } from '../../lib/protocol/messages.js';

const MIB = 1 << 20;
const CLI = fileURLToPath(new URL('../../lib/cli/entry.cjs', import.meta.url));

/** The first offload request: `synth --path`, `--method` and `--request` (a file holding the body). */
export interface ClientRequest {
  path: string;
  /** The overlay's copy in an object store (`synth --overlay-url`). */
  overlayUrl?: string;
  /** GET, POST or PUT; left out, the CLI's default (GET, or POST with a body). */
  method?: string;
  bodyFile?: string;
}

/** `code` if it is one of ours, else VMS_INTERNAL. */
export function knownCode(code: unknown): ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERRORS, code) ? (code as ErrorCode) : 'VMS_INTERNAL';
}

/**
 * One `ip netns exec <netns> node entry.cjs synth ... --json` against
 * `server` ("host:port"); its last stdout line is the result (or the error,
 * rejected as a VmsynthError with its code and `client (<label>): ` before
 * the message).
 */
export function runClient(
  netns: string,
  server: string,
  overlay: string,
  policy: Policy,
  request: ClientRequest,
  timeoutS: number,
  signal: AbortSignal,
  label: string,
): Promise<SynthesizeResult> {
  const args = [
    'netns',
    'exec',
    netns,
    process.execPath,
    CLI,
    'synth',
    '--server',
    server,
    '--overlay',
    overlay,
    '--policy',
    policy,
    '--path',
    request.path,
    ...(request.method ? ['--method', request.method] : []),
    ...(request.bodyFile ? ['--request', request.bodyFile] : []),
    ...(request.overlayUrl ? ['--overlay-url', request.overlayUrl] : []),
    '--timeout',
    String(timeoutS),
    '--json',
  ];
  return new Promise((resolve, reject) => {
    execFile(
      'ip',
      args,
      { signal, maxBuffer: 16 * MIB, env: { ...process.env, LOG_LEVEL: 'warn' } },
      (err, stdout, stderr) => {
        if (signal.aborted) return reject(abortReason(signal));
        let last: { error?: { code?: string; message?: string } } & Partial<SynthesizeResult> = {};
        try {
          last = JSON.parse(stdout.trim().split('\n').at(-1) ?? '') as typeof last;
        } catch {
          // no JSON: the client died before printing; stderr says why
        }
        if (!err && !last.error && last.timeline) return resolve(last as SynthesizeResult);
        const why =
          last.error?.message ?? (stderr.trim().split('\n').slice(-5).join('\n') || err?.message || 'no result');
        reject(new VmsynthError(knownCode(last.error?.code), `client (${label}): ${why}`));
      },
    );
  });
}
