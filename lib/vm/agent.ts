/**
 * The customization agent inside the test guest (offload-app --agent, guest
 * port 8022): copy a file in, run a script. Reached over a host port that is
 * forwarded only while `vmsynth overlay create` customizes a VM.
 */
import { VmsynthError } from '../core/errors.js';
import { guestRequest } from './guest-app.js';

export const AGENT_GUEST_PORT = 8022;

/** Writes `data` to `guestPath` in the guest. */
export async function agentPut(
  port: number,
  guestPath: string,
  data: Buffer,
  mode = 0o644,
  timeoutMs = 60_000,
  signal?: AbortSignal,
): Promise<void> {
  const r = await guestRequest(
    port,
    'PUT',
    `/file?path=${encodeURIComponent(guestPath)}&mode=${mode.toString(8)}`,
    timeoutMs,
    data,
    signal,
  );
  if (r.status !== 200)
    throw new VmsynthError(
      'VMS_CUSTOMIZE_FAILED',
      `copying ${guestPath} into the guest failed: ${r.body.toString('utf8').slice(0, 300)}`,
    );
}

export interface ExecResult {
  status: number;
  output: string;
}

/** Runs a shell script in the guest; returns its exit status and output (last 64 KiB). An abort stops the wait, not the script. */
export async function agentExec(
  port: number,
  script: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<ExecResult> {
  const r = await guestRequest(port, 'POST', '/exec', timeoutMs, Buffer.from(script), signal);
  const text = r.body.toString('utf8');
  const nl = text.indexOf('\n');
  let status: number;
  try {
    status = (JSON.parse(text.slice(0, nl)) as { status: number }).status;
  } catch {
    throw new VmsynthError('VMS_CUSTOMIZE_FAILED', `the guest agent answered HTTP ${r.status}: ${text.slice(0, 300)}`);
  }
  return { status, output: text.slice(nl + 1) };
}
