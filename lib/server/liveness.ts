/** Whether a client connection is alive: what a quiet one is sent, and when one is dropped. Pure. */
import { VmsynthError } from '../core/errors.js';
import type { FramedSocket } from '../protocol/framed-socket.js';

/**
 * A connection that sent nothing, or read nothing of what it was sent, for `idleMs` is
 * dropped (the error says which); one this side has sent nothing to for `keepaliveMs` gets a ping.
 */
export function liveness(
  io: Pick<FramedSocket, 'lastIn' | 'lastOut' | 'stalledMs'>,
  peer: string,
  t: { keepaliveMs: number; idleMs: number },
): { drop: VmsynthError } | 'ping' | null {
  const now = performance.now();
  const silentMs = now - io.lastIn;
  const stalledMs = io.stalledMs();
  if (silentMs > t.idleMs || stalledMs > t.idleMs) {
    const reason = silentMs > t.idleMs ? 'idle' : 'not-reading';
    const what =
      reason === 'idle'
        ? `sent nothing for ${Math.round(silentMs)} ms`
        : `read nothing for ${Math.round(stalledMs)} ms`;
    return {
      drop: new VmsynthError('VMS_PEER_GONE', `the client ${peer} ${what} (the limit is ${t.idleMs} ms)`, {
        details: { reason, idleMs: t.idleMs },
      }),
    };
  }
  return now - io.lastOut >= t.keepaliveMs ? 'ping' : null;
}
