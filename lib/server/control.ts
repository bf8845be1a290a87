/**
 * The server's control socket: a unix socket in its run directory (mode
 * 0600: root, or whoever runs the server) through which `vmsynth handoff`
 * asks a running `vmsynth serve` on the same host to move a session. JSON
 * lines: one request, then progress lines, then the answer; the socket then
 * closes.
 *
 *   → {"cmd":"handoff","session":ID,"to":"HOST:PORT","whole":false}
 *   ← {"step":"..."} ...   ← {"ok":true,"report":{...}} | {"ok":false,"code":"VMS_...","message":"..."}
 *   → {"cmd":"sessions"}   ← {"ok":true,"sessions":[{"id":...,"client":...,"vmRunning":...}]}
 */
import { promises as fsp } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parseServer } from '../client/connect.js';
import { channels } from '../core/diagnostics.js';
import { asVmsynthError, VmsynthError } from '../core/errors.js';
import { CONTROL_SOCKET } from '../vm/janitor.js';
import type { SynthServer } from './server.js';

export class ControlSocket {
  private constructor(
    private readonly server: net.Server,
    readonly path: string,
  ) {}

  static async listen(synth: SynthServer, dir: string): Promise<ControlSocket> {
    const file = path.join(dir, CONTROL_SOCKET);
    await fsp.mkdir(dir, { recursive: true });
    await fsp.rm(file, { force: true });
    const server = net.createServer((socket) => serve(synth, socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(new VmsynthError('VMS_CONFIG', `cannot listen on the control socket ${file}: ${err.message}`)),
      );
      server.listen(file, () => resolve());
    });
    await fsp.chmod(file, 0o600);
    return new ControlSocket(server, file);
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await fsp.rm(this.path, { force: true });
  }
}

function serve(synth: SynthServer, socket: net.Socket): void {
  let buf = '';
  const say = (o: unknown) => socket.write(`${JSON.stringify(o)}\n`);
  const fail = (err: unknown) => {
    const e = asVmsynthError(err);
    say({ ok: false, code: e.code, message: e.message, details: e.details });
    socket.end();
  };
  socket.on('error', () => undefined);
  socket.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    const nl = buf.indexOf('\n');
    if (nl < 0) {
      if (buf.length > 64 << 10) fail(new VmsynthError('VMS_USAGE', 'a control request is one JSON line'));
      return;
    }
    socket.removeAllListeners('data');
    let req: { cmd?: unknown; session?: unknown; to?: unknown; whole?: unknown };
    try {
      req = JSON.parse(buf.slice(0, nl)) as typeof req;
    } catch {
      return fail(new VmsynthError('VMS_USAGE', 'a control request is one JSON line'));
    }
    if (req.cmd === 'sessions') {
      say({ ok: true, sessions: synth.sessionList() });
      return void socket.end();
    }
    if (req.cmd !== 'handoff' || typeof req.session !== 'string' || typeof req.to !== 'string')
      return fail(
        new VmsynthError(
          'VMS_USAGE',
          'the control socket knows {"cmd":"handoff","session":ID,"to":"HOST:PORT"} and {"cmd":"sessions"}',
        ),
      );
    const session = req.session;
    const progress = (m: unknown) => {
      const x = m as { session?: string; step?: string; ms?: number; detail?: string };
      if (x.session === session)
        say({ step: x.step, ...(x.ms !== undefined ? { ms: x.ms } : {}), ...(x.detail ? { detail: x.detail } : {}) });
    };
    channels.handoff.subscribe(progress);
    let to: { host: string; port: number };
    try {
      to = parseServer(req.to);
    } catch (err) {
      channels.handoff.unsubscribe(progress);
      return fail(err);
    }
    synth
      .handoff(session, to, { whole: req.whole === true })
      .then((report) => {
        say({ ok: true, report });
        socket.end();
      }, fail)
      .finally(() => channels.handoff.unsubscribe(progress));
  });
}
