/**
 * The helper `guest-netns.ts` starts in QEMU's network namespace (with
 * `nsenter --net`), for a vmsynth process that runs in another one: it
 * connects to 127.0.0.1:PORT there (QEMU's host forwards) and hands the
 * connected socket back over Node's IPC channel (the descriptor is passed:
 * no byte is relayed), and picks free ports there for new forwards. It exits
 * when its parent does.
 *
 *   ← {id, op: 'dial', port}   → {id, ok: true} + socket | {id, ok: false, error}
 *   ← {id, op: 'port'}         → {id, ok: true, port}
 */
import net from 'node:net';
import { freePort } from '../core/net.js';

interface Ask {
  id: number;
  op: 'dial' | 'port';
  port?: number;
}

const send = (m: unknown, handle?: net.Socket) => process.send?.(m, handle);

process.on('message', (m: Ask) => {
  if (m.op === 'port') {
    void freePort().then(
      (port) => send({ id: m.id, ok: true, port }),
      (err: Error) => send({ id: m.id, ok: false, error: err.message }),
    );
    return;
  }
  const s = net.connect(m.port ?? 0, '127.0.0.1');
  s.once('connect', () => send({ id: m.id, ok: true }, s));
  s.once('error', (err: NodeJS.ErrnoException) => send({ id: m.id, ok: false, error: err.code ?? err.message }));
});
process.on('disconnect', () => process.exit(0));
send({ ready: true });
