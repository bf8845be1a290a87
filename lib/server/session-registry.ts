/**
 * The server's sessions by id, attached to a connection or waiting out their
 * grace period, and what became of sessions that ended (for a while), so a
 * client that comes back too late is told why its session is gone. A resume
 * is let in only with the session's secret, by the client that opened it.
 */
import { VmsynthError } from '../core/errors.js';
import type { ServedSession } from './served-session.js';

interface Gone {
  at: number;
  error: VmsynthError | null;
}

export class SessionRegistry {
  private readonly live = new Map<string, ServedSession>();
  private readonly gone = new Map<string, Gone>();

  constructor(
    /** How long an ended session's fate is remembered. */
    private readonly rememberMs: number,
    private readonly maxRemembered = 10_000,
  ) {}

  add(s: ServedSession): void {
    this.live.set(s.id, s);
  }

  /** The session ended: it is remembered as gone, with the error it ended with. */
  remove(s: ServedSession, error: VmsynthError | null): void {
    if (this.live.get(s.id) !== s) return;
    this.live.delete(s.id);
    this.gone.set(s.id, { at: performance.now(), error });
    this.prune();
  }

  private prune(): void {
    const now = performance.now();
    for (const [id, g] of this.gone) {
      if (now - g.at <= this.rememberMs && this.gone.size <= this.maxRemembered) break;
      this.gone.delete(id);
    }
  }

  /** The session `client` may resume with `secret`, or the typed reason it may not. */
  find(id: string, secret: Buffer, client: string): ServedSession {
    this.prune();
    const s = this.live.get(id);
    if (!s || s.ended) {
      // (A session still tearing down is told as one that ended, with its error.)
      const g: Gone | undefined = this.gone.get(id) ?? (s ? { at: 0, error: s.endedWith } : undefined);
      if (g?.error?.code === 'VMS_SESSION_MOVED') throw g.error; // handed off: the client is told where
      const why = g ? (g.error ? `it ended: ${g.error.code}: ${g.error.message}` : 'it was finished') : null;
      throw new VmsynthError(
        'VMS_SESSION_GONE',
        `session ${id.slice(0, 40)} cannot be resumed: ${why ?? 'this server does not know it (it restarted, or the session ended long ago)'}`,
        {
          details: {
            reason: s ? 'ending' : g ? 'ended' : 'unknown',
            session: id.slice(0, 40),
            ...(g?.error ? { error: g.error.code } : {}),
          },
        },
      );
    }
    if (!s.secretMatches(secret) || s.client !== client)
      throw new VmsynthError('VMS_AUTH', `the secret or client does not match session ${id}`, {
        details: { reason: 'resume-secret', session: id },
      });
    return s;
  }

  /** Sessions now (attached or in their grace period), all or one client's. */
  count(client?: string): number {
    if (client === undefined) return this.live.size;
    let n = 0;
    for (const s of this.live.values()) if (s.client === client) n++;
    return n;
  }

  all(): ServedSession[] {
    return [...this.live.values()];
  }
}
