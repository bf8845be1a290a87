/**
 * A session's offload requests, exactly once (Slingshot's request log, Migratory TCP's replay of
 * what the peer has not acknowledged). Pure: no I/O, no timers.
 *
 * Every request is logged by its id (an unsigned integer the client picks: each new request's id is
 * above every earlier one in the session, so an id is never mistaken for a new request even after
 * its entry left the log)
 * with its method, path, the SHA-256 of its body and when it arrived. Its outcome (the app's reply,
 * or the error that ended it) is kept until the client acknowledges it, so a client that lost the
 * connection gets it again after it resumes. A request sent again with a known id is never run
 * twice: it joins the run in progress, or gets the kept outcome. The same id with another request
 * is a client bug. The log itself (without bodies) outlives acknowledgements: it can be exported,
 * and a client can replay its own copy to catch up another server.
 */
import { createHash } from 'node:crypto';
import { ERRORS, VmsynthError, type ErrorCode } from '../core/errors.js';

const asCode = (c: unknown): ErrorCode =>
  typeof c === 'string' && Object.hasOwn(ERRORS, c) ? (c as ErrorCode) : 'VMS_INTERNAL';

export interface LoggedRequest {
  id: number;
  method: string;
  path: string;
  /** SHA-256 of the body, hex. */
  bodySha256: string;
  /** Milliseconds since the session started, when the request first arrived. */
  arrivedMs: number;
  /** How it ended, once it has: the app's HTTP status, or the code of the error that ended it. */
  status?: number;
  error?: string;
  /** The client has acknowledged the outcome: it is no longer kept. */
  acked: boolean;
}

/** What a request ended with, kept until acknowledged. */
export type Outcome = { status: number; body: Buffer } | { error: VmsynthError };

/** The log as a handoff carries it to the next cloudlet (plain values: MessagePack). */
export interface LogSnapshot {
  highest: number;
  dropped: number;
  entries: LoggedRequest[];
  /** Outcomes not yet acknowledged: a reply's status and body, or an error's code and message. */
  outcomes: Array<[number, { status: number; body: Uint8Array } | { code: string; message: string }]>;
}

/** What to do with an offload message. */
export type Admit =
  | { action: 'run' }
  | { action: 'wait' }
  | { action: 'replay'; outcome: Outcome }
  | { action: 'refuse'; error: VmsynthError };

export class RequestLog {
  private readonly entries = new Map<number, LoggedRequest>();
  private readonly outcomes = new Map<number, Outcome>();
  private readonly running = new Set<number>();
  /** Entries dropped from the front of the log (the oldest acknowledged) to stay within `maxEntries`. */
  dropped = 0;
  /** The highest id logged. */
  private highest = -1;

  constructor(
    /** Requests running plus outcomes not yet acknowledged, at most. */
    private readonly maxOutstanding: number,
    /** Entries kept for export, at most (the oldest acknowledged go first). */
    private readonly maxEntries = 10_000,
  ) {}

  /** Decides what an offload message with this id does, and logs it when it is new. */
  admit(id: number, method: string, path: string, body: Buffer, arrivedMs: number): Admit {
    const bodySha256 = createHash('sha256').update(body).digest('hex');
    const known = this.entries.get(id);
    if (known) {
      if (known.method !== method || known.path !== path || known.bodySha256 !== bodySha256)
        return {
          action: 'refuse',
          error: new VmsynthError(
            'VMS_PROTOCOL',
            `request id ${id} was used for ${known.method} ${known.path.slice(0, 200)}; ids are unique in a session`,
            { details: { reason: 'id-reused', id } },
          ),
        };
      if (this.running.has(id)) return { action: 'wait' };
      const outcome = this.outcomes.get(id);
      if (outcome) return { action: 'replay', outcome };
      return {
        action: 'refuse',
        error: new VmsynthError('VMS_PROTOCOL', `request ${id} was answered and its reply acknowledged`, {
          details: { reason: 'acknowledged', id },
        }),
      };
    }
    if (id <= this.highest)
      return {
        action: 'refuse',
        error: new VmsynthError(
          'VMS_PROTOCOL',
          `request id ${id} is not above the session's highest, ${this.highest}: it was answered and acknowledged long ago, or the client's ids do not increase`,
          { details: { reason: 'id-order', id, highest: this.highest } },
        ),
      };
    if (this.running.size + this.outcomes.size >= this.maxOutstanding)
      return {
        action: 'refuse',
        error: new VmsynthError(
          'VMS_LIMIT',
          `${this.maxOutstanding} requests are running or await an acknowledgement; acknowledge replies (ack) before sending more`,
          { details: { limit: 'maxOffloadsInFlight', max: this.maxOutstanding, id } },
        ),
      };
    this.highest = id;
    this.entries.set(id, { id, method, path, bodySha256, arrivedMs, acked: false });
    this.running.add(id);
    this.trim();
    return { action: 'run' };
  }

  /** Request `id` ended with `outcome`: kept until acknowledged. */
  settle(id: number, outcome: Outcome): void {
    const e = this.entries.get(id);
    if (!e || !this.running.delete(id)) return;
    if ('status' in outcome) e.status = outcome.status;
    else e.error = outcome.error.code;
    this.outcomes.set(id, outcome);
  }

  /** The client has these outcomes: they are no longer kept. Returns how many were dropped. */
  ack(ids: readonly number[]): number {
    let n = 0;
    for (const id of ids) {
      if (!this.outcomes.delete(id)) continue;
      this.entries.get(id)!.acked = true;
      n++;
    }
    this.trim();
    return n;
  }

  /** Whether request `id` was logged (it runs, ran, or was answered). */
  knows(id: number): boolean {
    return this.entries.has(id) || id <= this.highest;
  }

  /**
   * The log for the next cloudlet; no request may be running (the handoff drained them). Only the
   * entries whose outcome is not acknowledged move (with `highest`, that is all exactly-once needs:
   * an older id is refused there as it is here); the acknowledged ones stay behind, as they would
   * cost ~120 bytes each on the link (a 1,300-request session: 150 KB).
   */
  snapshot(): LogSnapshot {
    if (this.running.size > 0)
      throw new VmsynthError('VMS_INTERNAL', `${this.running.size} requests still run: the log cannot move`);
    return {
      highest: this.highest,
      dropped: this.dropped + [...this.entries.values()].filter((e) => e.acked).length,
      entries: this.export().filter((e) => !e.acked),
      outcomes: [...this.outcomes].map(([id, o]) => [
        id,
        'status' in o ? { status: o.status, body: o.body } : { code: o.error.code, message: o.error.message },
      ]),
    };
  }

  /** Takes over the log of a session handed off from another cloudlet (checked: it came over the network). */
  restore(s: LogSnapshot): void {
    const ok =
      Number.isSafeInteger(s.highest) &&
      Array.isArray(s.entries) &&
      Array.isArray(s.outcomes) &&
      s.entries.every((e) => Number.isSafeInteger(e.id) && e.id <= s.highest) &&
      s.outcomes.every(([id]) => Number.isSafeInteger(id) && id <= s.highest);
    if (!ok) throw new VmsynthError('VMS_PROTOCOL', 'the request log a handoff carried is malformed');
    this.highest = s.highest;
    this.dropped = Number(s.dropped) || 0;
    for (const e of s.entries) this.entries.set(e.id, { ...e });
    for (const [id, o] of s.outcomes) {
      const outcome: Outcome =
        'status' in o
          ? { status: o.status, body: Buffer.from(o.body) }
          : { error: new VmsynthError(asCode(o.code), String(o.message)) };
      this.outcomes.set(id, outcome);
    }
  }

  /** Ids still running in the app. */
  runningIds(): number[] {
    return [...this.running];
  }

  /** Ids whose outcome is kept, not yet acknowledged, oldest first. */
  unacked(): Array<[number, Outcome]> {
    return [...this.outcomes];
  }

  /** The log, oldest first, without bodies. */
  export(): LoggedRequest[] {
    return [...this.entries.values()].map((e) => ({ ...e }));
  }

  get size(): number {
    return this.entries.size;
  }

  private trim(): void {
    if (this.entries.size <= this.maxEntries) return;
    for (const [id, e] of this.entries) {
      if (this.entries.size <= this.maxEntries) break;
      if (!e.acked) continue;
      this.entries.delete(id);
      this.dropped++;
    }
  }
}
