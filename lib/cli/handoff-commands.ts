/**
 * `vmsynth handoff`: asks the `vmsynth serve` running on this host (its
 * control socket, server/control.ts, in the run directory) to move a
 * session's VM to another cloudlet, printing each step as it goes, and the
 * report (bytes, passes, how long the VM was stopped) at the end.
 */
import net from 'node:net';
import path from 'node:path';
import type { Command } from 'commander';
import { VmsynthError, type ErrorCode } from '../core/errors.js';
import { runDir } from '../core/paths.js';
import type { HandoffReport } from '../server/handoff-out.js';
import { bytes, table } from './format.js';
import { runCommand } from './run.js';

/** Sends one request to the control socket; calls `line` for each progress line; resolves with the answer. */
function ask(request: unknown, line: (o: Record<string, unknown>) => void): Promise<Record<string, unknown>> {
  const file = path.join(runDir(), 'control.sock');
  return new Promise((resolve, reject) => {
    const socket = net.connect(file);
    let buf = '';
    let answered = false;
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('error', (err: NodeJS.ErrnoException) =>
      reject(
        new VmsynthError(
          'VMS_CONNECT',
          `no vmsynth serve answers on ${file} (${err.code ?? err.message}): start one, or set VMSYNTH_RUN_DIR to its run directory`,
          { details: { socket: file, reason: err.code ?? 'error' } },
        ),
      ),
    );
    socket.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const o = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        if ('ok' in o) {
          answered = true;
          if (o.ok) resolve(o);
          else
            reject(
              new VmsynthError(o.code as ErrorCode, String(o.message), {
                details: (o.details as Record<string, unknown> | undefined) ?? {},
              }),
            );
        } else line(o);
      }
    });
    socket.on('close', () => {
      if (!answered) reject(new VmsynthError('VMS_PEER_GONE', `vmsynth serve closed ${file} without an answer`));
    });
  });
}

export function registerHandoffCommands(program: Command): void {
  program
    .command('handoff')
    .description(
      "Move a running session's VM to another cloudlet (live handoff: only what it changed since synthesis crosses, and it stops for the last pass only). Asks the vmsynth serve on this host; its client is told, and resumes there.",
    )
    .option('--session <id>', 'the session to move (--list shows them)')
    .option('--to <host:port>', "the target cloudlet's vmsynth serve address")
    .option(
      '--whole',
      'the safe mode: the target resumes only once it holds every chunk, so the VM never depends on this cloudlet after the stop (a longer stop)',
    )
    .option('--list', 'list the sessions of the server on this host')
    .option('--json', 'print the report (or the list) as JSON')
    .action(async (o: { session?: string; to?: string; whole?: boolean; list?: boolean; json?: boolean }) =>
      runCommand(!!o.json, async ({ json }) => {
        if (o.list) {
          const r = await ask({ cmd: 'sessions' }, () => undefined);
          const list = r.sessions as Array<{ id: string; client: string; vmRunning: boolean }>;
          if (!json)
            for (const s of list) console.log(`${s.id}  client ${s.client}${s.vmRunning ? '' : '  (VM not running)'}`);
          return { sessions: list };
        }
        if (!o.session || !o.to)
          throw new VmsynthError('VMS_USAGE', 'vmsynth handoff needs --session ID and --to HOST:PORT (or --list)', {
            details: { flag: o.session ? '--to' : '--session' },
          });
        const r = await ask({ cmd: 'handoff', session: o.session, to: o.to, whole: !!o.whole }, (p) => {
          if (!json)
            console.error(
              `vmsynth: handoff: ${String(p.step)}${typeof p.ms === 'number' ? ` (${p.ms} ms)` : ''}${typeof p.detail === 'string' ? `: ${p.detail}` : ''}`,
            );
        });
        const report = r.report as HandoffReport;
        if (!json)
          console.log(
            table([
              ['moved to', `${report.to} as session ${report.session}`],
              ['pre-copy passes', report.passes.map((p) => bytes(p.bytes)).join(', ') || 'none'],
              ['last pass', `${bytes(report.final.bytes)} + device state ${bytes(report.final.deviceStateBytes)}`],
              ['overlay segments sent', String(report.overlaySegmentsSent)],
              ['bytes sent', bytes(report.bytesSent)],
              ['stopped (stop to running there)', `${report.stoppedMs} ms`],
              ['total', `${report.totalMs} ms`],
            ]),
          );
        return report;
      }),
    );
}
