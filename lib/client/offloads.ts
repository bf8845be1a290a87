/**
 * A client session's offload requests: the ids it gives them (increasing, as
 * the server's request log wants), the ones waiting for a reply, and the log
 * of every request with how it ended (Slingshot's request log). Plain
 * TypeScript: the session decides when a request goes on the wire.
 */
import { VmsynthError } from '../core/errors.js';
import type { LoggedOffload, OffloadReply, OffloadRequest, PendingOffload } from './types.js';

export class Offloads {
  private nextId = 1;
  private readonly pending = new Map<number, PendingOffload>();
  private readonly log: LoggedOffload[] = [];
  /** A handoff asked for: settled when the session resumed on the next cloudlet, or refused. */
  private moving: { id: number; resolve(): void; reject(e: Error): void } | null = null;

  /** A handoff, one at a time: `send` puts its request on the wire with an id; resolves once `resumedElsewhere`. */
  handoff(send: (id: number) => void): Promise<void> {
    if (this.moving) return Promise.reject(new VmsynthError('VMS_HANDOFF', 'a handoff is under way already'));
    const id = this.newId();
    return new Promise<void>((resolve, reject) => {
      this.moving = { id, resolve, reject };
      send(id);
    });
  }

  /** The session resumed (after a move, on the next cloudlet). */
  resumed(): void {
    this.moving?.resolve();
    this.moving = null;
  }

  /** An error for request `id`: when it is the handoff's, it is refused (the session goes on here). */
  refused(id: number, err: Error): boolean {
    if (id !== this.moving?.id) return false;
    this.moving.reject(err);
    this.moving = null;
    return true;
  }

  /** A new id, for a request or for a handoff (they share the increasing ids). */
  newId(): number {
    return this.nextId++;
  }

  /** Logs a new request and resolves with its reply; `send` puts it on the wire (now, or at the resume). */
  add(req: OffloadRequest, atMs: number, send: (id: number) => void): Promise<OffloadReply> {
    const id = this.newId();
    const entry: LoggedOffload = { id, ...req, atMs };
    this.log.push(entry);
    return new Promise<OffloadReply>((resolve, reject) => {
      this.pending.set(id, { req, resolve, reject });
      send(id);
    }).then(
      (r) => ((entry.status = r.status), r),
      (err: unknown) => {
        entry.error = err instanceof VmsynthError ? err.code : 'VMS_INTERNAL';
        throw err;
      },
    );
  }

  /** Requests waiting for a reply, by id. */
  waiting(): Array<[number, OffloadRequest]> {
    return [...this.pending].map(([id, p]) => [id, p.req]);
  }

  /** Settles request `id` (a reply replayed after a resume, already had, is ignored). Returns whether it was waiting. */
  settle(id: number, err: Error | null, reply: OffloadReply | null): boolean {
    const p = this.pending.get(id);
    if (!p) return false;
    this.pending.delete(id);
    if (err) p.reject(err);
    else p.resolve(reply!);
    return true;
  }

  /** The session failed: every waiting request fails with it. */
  failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.refused(this.moving?.id ?? -1, err);
  }

  /** Every request sent, in order, with its body and how it ended. */
  requests(): LoggedOffload[] {
    return this.log.map((e) => ({ ...e }));
  }
}
