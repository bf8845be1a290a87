/** Running host tools asynchronously (never sync: a sync child that reads our own FUSE mount would deadlock). */
import { execFile } from 'node:child_process';
import { VmsynthError, type ErrorCode } from './errors.js';

export interface ExecResult {
  stdout: string;
  stderr: string;
}

export function exec(
  cmd: string,
  args: string[],
  opts: { cwd?: string; code?: ErrorCode; timeoutMs?: number } = {},
): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { cwd: opts.cwd, maxBuffer: 64 * 1024 * 1024, timeout: opts.timeoutMs ?? 0 },
      (err, stdout, stderr) => {
        if (err) {
          const detail = (stderr || err.message).trim().split('\n').slice(-5).join('\n');
          reject(
            new VmsynthError(opts.code ?? 'VMS_INTERNAL', `${cmd} ${args.join(' ')} failed: ${detail}`, { cause: err }),
          );
        } else {
          resolve({ stdout, stderr });
        }
      },
    );
  });
}
