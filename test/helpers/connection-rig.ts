/**
 * A Connection on a real loopback socket over a fake session and a fake
 * admission (no libvirt, no FUSE, no VM), and the client frames the
 * connection tests send it.
 */
import type { Test } from 'tap';
import net from 'node:net';
import { VmsynthError, type ErrorCode } from '../../lib/core/errors.js';
import type { Overlay } from '../../lib/overlay/reader.js';
import type { Outstanding } from '../../lib/synth/segment-sources.js';
import { encodeFrame, FrameDecoder } from '../../lib/protocol/frames.js';
import { PROTOCOL } from '../../lib/protocol/messages.js';
import type { Admitted } from '../../lib/server/admission.js';
import { Authenticator } from '../../lib/server/auth.js';
import { Connection } from '../../lib/server/connection.js';
import type { ConnectionTiming, ServerContext, SessionHandle, SessionRequest } from '../../lib/server/context.js';
import { ByteBudget } from '../../lib/server/byte-budget.js';
import { SessionRegistry } from '../../lib/server/session-registry.js';
import type { Base } from '../../lib/vm/base.js';
import { tokenSha256 } from '../../lib/core/config.js';
import { until } from './wait.js';

export type Msg = Record<string, unknown> & { type: string };

export class FakeSession implements SessionHandle {
  readonly id = 'fake0001';
  readonly domain = 'vmsynth-fake0001';
  runs = 0;
  closes = 0;
  received: number[] = [];
  offloads: string[] = [];
  /** What offload() does: answer, or fail with this code. */
  offloadFails: ErrorCode | null = null;
  constructor(readonly req: SessionRequest) {}
  run(): void {
    this.runs++;
  }
  /** The bytes of each segment received, in order. */
  data: Buffer[] = [];
  /** Segments received thin. */
  thin: number[] = [];
  receive(index: number, data: Buffer, thin?: boolean): void {
    this.received.push(index);
    if (thin) this.thin.push(index);
    this.data.push(data);
  }
  async offload(
    method: string,
    path: string,
    body: Buffer,
  ): Promise<{ status: number; headers: Record<string, string>; body: Buffer }> {
    this.offloads.push(`${method} ${path}`);
    if (this.offloadFails) throw new VmsynthError(this.offloadFails, 'the fake says no');
    return { status: 200, headers: {}, body: Buffer.concat([Buffer.from('echo:'), body]) };
  }
  /** What outstanding() answers. */
  wanted: Outstanding = { demand: [], background: [], tables: [], thin: [] };
  outstanding(): Outstanding {
    return this.wanted;
  }
  /** Digest tables received (chunk lookaside). */
  readonly tables: number[] = [];
  async receiveTable(index: number): Promise<void> {
    this.tables.push(index);
  }
  progress(): { resumedMs: number | null; appliedMs: number | null } {
    return { resumedMs: 12, appliedMs: null };
  }
  async close(): Promise<object> {
    this.closes++;
    return { fake: true };
  }
  releases = 0;
  async release(): Promise<object> {
    this.releases++;
    return { fake: true };
  }
}

export interface Rig {
  /** Sends frames in one write. */
  send(...frames: Buffer[]): void;
  /** The next message of `type` (or an error), in arrival order. */
  next(type: string): Promise<Msg>;
  /** Every message until the server closes the connection. */
  closed: Promise<Msg[]>;
  sessions: FakeSession[];
  conn: Connection;
  socket: net.Socket;
  /** Resolves when the connection reported itself gone. */
  gone: Promise<void>;
  ctx: ServerContext;
  /** The accepted message (at 'session'): its secret resumes the session. */
  accepted?: Msg;
}

export const frame = (h: Record<string, unknown>, payload?: Buffer): Buffer =>
  Buffer.concat(encodeFrame(h as { type: string }, payload));
export const hello = (extra: Record<string, unknown> = {}) =>
  frame({ type: 'hello', protocol: PROTOCOL, client: 'test', ...extra });
export const sessionMsg = () => frame({ type: 'session', policy: 'early-start' }, Buffer.from('manifest bytes'));
export const segment = (index: number) => frame({ type: 'segment', index }, Buffer.from([1, 2, 3]));
export const offload = (id: number) => frame({ type: 'offload', id, method: 'POST', path: '/run' }, Buffer.from('x'));
export const finish = () => frame({ type: 'finish' });
export const ping = () => frame({ type: 'ping' });
export const ack = () => frame({ type: 'ack', ids: [1] });
export const resume = (session = 'fake0001', secret: Buffer = Buffer.alloc(32)) =>
  frame({ type: 'resume', session, secret });
export const clientError = () => frame({ type: 'error', code: 'VMS_INTERRUPTED', message: 'bye' });

export const admitted = {
  overlay: { body: { segments: [{}, {}, {}] }, segmentsBytes: 300 } as unknown as Overlay,
  base: { name: 'fakebase' } as unknown as Base,
};

export interface RigOptions {
  admit?: (client: string, manifest: Buffer) => Promise<Admitted>;
  start?: (req: SessionRequest) => Promise<SessionHandle>;
  tokens?: string[];
  handshakeTimeoutMs?: number;
  timing?: Partial<ConnectionTiming>;
  /** The registry of another rig: a resume on this rig finds that rig's sessions. */
  sessions?: SessionRegistry;
  preSession?: ByteBudget;
}

export async function rig(t: Test, o: RigOptions = {}): Promise<Rig> {
  const sessions: FakeSession[] = [];
  const ctx: ServerContext = {
    auth: new Authenticator((o.tokens ?? []).map((tok, i) => ({ name: `c${i}`, tokenSha256: tokenSha256(tok) }))),
    admit: o.admit ?? (async () => admitted),
    startSession:
      o.start ??
      (async (req) => {
        const s = new FakeSession(req);
        sessions.push(s);
        return s;
      }),
    sessions: o.sessions ?? new SessionRegistry(60_000),
    timing: {
      handshakeTimeoutMs: o.handshakeTimeoutMs ?? 10_000,
      keepaliveMs: 10_000,
      idleMs: 30_000,
      graceMs: 0,
      ...o.timing,
    },
    maxOffloads: 4,
    preSession: o.preSession ?? new ByteBudget(1 << 30),
  };
  let conn!: Connection;
  let goneResolve!: () => void;
  const gone = new Promise<void>((r) => (goneResolve = r));
  const server = net.createServer((socket) => {
    conn = new Connection(socket, ctx, goneResolve);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const socket = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise<void>((r) => socket.once('connect', r));
  t.teardown(() => socket.destroy());
  await until(() => conn !== undefined, 'the connection');
  const msgs: Msg[] = [];
  const waiters: (() => void)[] = [];
  const decoder = new FrameDecoder();
  socket.on('data', (d: Buffer) => {
    for (const f of decoder.push(d)) msgs.push(f.payload.length ? { ...f.header, payload: f.payload } : f.header);
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise<Msg[]>((r) => socket.on('close', () => r(msgs)));
  let read = 0;
  const next = async (type: string): Promise<Msg> => {
    for (;;) {
      while (read < msgs.length) {
        const m = msgs[read++]!;
        if (m.type === type || m.type === 'error') return m;
      }
      const more = new Promise<void>((r) => waiters.push(r));
      const end = await Promise.race([more.then(() => false), closed.then(() => true)]);
      if (end && read >= msgs.length) throw new Error(`the connection closed before a ${type} message`);
    }
  };
  return { send: (...frames) => socket.write(Buffer.concat(frames)), next, closed, sessions, conn, gone, socket, ctx };
}

/** Drives a rig to `stage`: greeting (nothing sent), open (after welcome) or session (after accepted). */
export async function at(t: Test, stage: 'greeting' | 'open' | 'session', o: RigOptions = {}): Promise<Rig> {
  const r = await rig(t, o);
  if (stage === 'greeting') return r;
  r.send(hello());
  t.match(await r.next('welcome'), { type: 'welcome', protocol: PROTOCOL });
  if (stage === 'open') return r;
  r.send(sessionMsg());
  r.accepted = await r.next('accepted');
  t.match(r.accepted, {
    type: 'accepted',
    session: 'fake0001',
    base: 'fakebase',
    segments: 3,
    policy: 'early-start',
  });
  return r;
}

export const fatal = (code: string) => ({ type: 'error', code, fatal: true });
