/** What a client is told about an error, where a moved session went, and long id lists cut to the protocol's limit. */
import { VmsynthError } from '../core/errors.js';
import { MAX_LIST, type ServerMessage } from '../protocol/messages.js';

/**
 * What a client is told about an error: the message, except for an internal error, whose
 * message is JavaScript's (the server's log has it with its stack).
 */
export function clientMessage(err: VmsynthError): string {
  if (err.code === 'VMS_INTERNAL') return 'an internal error of the server ended the session (its log has the details)';
  return err.message.slice(0, 4000);
}

/** A request's error as the client is told it: a refused handoff's with the target's reason (targetCode). */
export function requestError(id: number, err: VmsynthError): Extract<ServerMessage, { type: 'error' }> {
  const target = (err.details as { targetCode?: unknown } | undefined)?.targetCode;
  const targetCode = typeof target === 'string' ? { targetCode: target } : {};
  return { type: 'error', id, code: err.code, message: err.message, fatal: false, ...targetCode };
}

/** Sends `ids` in lists of at most MAX_LIST. */
export function inLists(ids: number[], send: (part: number[]) => void): void {
  for (let i = 0; i < ids.length; i += MAX_LIST) send(ids.slice(i, i + MAX_LIST));
}

/** Where a session moved, from its VMS_SESSION_MOVED error: a resume of it is answered `moved`, not an error. */
export function movedTo(err: VmsynthError): { host: string; port: number; session: string } {
  const d = err.details as { host?: unknown; port?: unknown; session?: unknown };
  return { host: String(d.host), port: Number(d.port), session: String(d.session) };
}

/** What a session that moved ends with: a resume here is told where it went (movedTo). */
export function movedError(session: string, to: { host: string; port: number; session: string }): VmsynthError {
  return new VmsynthError('VMS_SESSION_MOVED', `session ${session} moved to ${to.host}:${to.port} as ${to.session}`, {
    details: { to: `${to.host}:${to.port}`, host: to.host, port: to.port, session: to.session },
  });
}
