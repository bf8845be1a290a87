/**
 * Messages of the vmsynth wire protocol, version vmsynth/3
 * (docs/protocol.md is the specification; this module checks it).
 *
 * parseMessage turns a frame into a typed message or a VMS_PROTOCOL error:
 * unknown types, fields of the wrong type and payloads where none belong are
 * refused before anything acts on them. Each side accepts only the types its
 * peer may send. Frame caps per conversation stage are in FRAME_CAPS.
 */
import { VmsynthError } from '../core/errors.js';
import { MAX_SEGMENT_RAW_BYTES, MAX_MANIFEST_BYTES } from '../overlay/format.js';
import { aType, type Frame } from './frames.js';

export const PROTOCOL = 'vmsynth/3';

/** Bytes of a session's resume secret. */
export const SECRET_BYTES = 32;
/** Most entries in one list field (want, hurry, ack, resumed's id lists): 8,192 indices of up to 5 bytes each fit a 64 KiB header. Longer lists go in several messages. */
export const MAX_LIST = 8192;

export const POLICIES = ['early-start', 'baseline', 'demand-only'] as const;
export type Policy = (typeof POLICIES)[number];

/** Largest frame accepted at each stage of a conversation (header room included). */
export const FRAME_CAPS = {
  /** Until the peer's hello/welcome: small control frames only. */
  greeting: 64 << 10,
  /** While a session is being opened: the overlay manifest travels as a payload. */
  session: MAX_MANIFEST_BYTES + (64 << 10),
  /** During a session: segments (compressed, at most their raw size plus zstd's overhead) and offload bodies. */
  streaming: MAX_SEGMENT_RAW_BYTES + (1 << 20),
} as const;

export type ClientMessage =
  | { type: 'hello'; protocol: string; client: string; token?: string }
  | { type: 'session'; policy: Policy; manifest: Buffer; overlayUrl?: string; lookaside?: boolean }
  | { type: 'resume'; session: string; secret: Buffer }
  /** `thin`: the segment's kept payload slots only, as a `thin` message asked (chunk lookaside). */
  | { type: 'segment'; index: number; data: Buffer; offset?: number; thin?: boolean }
  /** A segment's digest table, as a `tables` message asked. */
  | { type: 'table'; index: number; data: Buffer }
  | { type: 'offload'; id: number; method: string; path: string; body: Buffer }
  | { type: 'ack'; ids: number[] }
  /** Instead of a session: what this cloudlet offers (`vmsynth discover`); answered with `info`. */
  | { type: 'info' }
  /** Move the session's VM to the cloudlet at host:port (a handoff); `moved` follows, or an error with this id. */
  | { type: 'handoff'; id: number; host: string; port: number }
  | { type: 'ping' }
  | { type: 'finish' }
  | { type: 'error'; code: string; message: string };

export type ServerMessage =
  | { type: 'welcome'; protocol: string; server: string; keepaliveMs: number; graceMs: number; keeps?: boolean }
  | { type: 'accepted'; session: string; secret: Buffer; base: string; segments: number; policy: Policy }
  | {
      type: 'resumed';
      session: string;
      base: string;
      segments: number;
      policy: Policy;
      resumedMs?: number;
      appliedMs?: number;
      replies: number[];
      running: number[];
      /** A segment the server received part of before the drop: send it from partialBytes on. */
      partialIndex?: number;
      partialBytes?: number;
    }
  | { type: 'want'; lane: 'demand' | 'background'; segments: number[] }
  | { type: 'hurry'; segments: number[] }
  /** Chunk lookaside: send these segments' digest tables (`table`). */
  | { type: 'tables'; segments: number[] }
  /** Chunk lookaside: send segment `segment` on `lane` without the payload slots `omit` (a bitmap) sets. */
  | { type: 'thin'; segment: number; lane: 'demand' | 'background'; omit: Buffer }
  | { type: 'ready'; resumedMs: number }
  | { type: 'reply'; id: number; status: number; body: Buffer }
  | { type: 'complete'; appliedMs: number }
  /** What this cloudlet offers: its accelerator, its bases (by the images' SHA-256), its load. */
  | { type: 'info'; server: string; accel: string; bases: CloudletBase[]; sessions: number; maxSessions: number }
  /** The session's VM runs on another cloudlet now: resume `session` there with the same secret. */
  | { type: 'moved'; host: string; port: number; session: string }
  | { type: 'ping' }
  | { type: 'finished'; stats: Record<string, unknown> }
  /** targetCode: a refused handoff's (VMS_HANDOFF_REFUSED) reason, the target cloudlet's code. */
  | { type: 'error'; code: string; message: string; fatal: boolean; id?: number; targetCode?: string };

/** A base a cloudlet holds, as `info` names it (an overlay's base matches by both hashes). */
export interface CloudletBase {
  name: string;
  disk: string;
  memory: string;
}

/** Bases an `info` lists, at most (its header stays small). */
export const MAX_INFO_BASES = 100;

/** The header of a `session` message (its payload is the manifest); `overlayUrl` only when there is one. */
export function sessionHeader(
  policy: Policy,
  overlayUrl?: string,
  lookaside = true,
): { type: 'session'; policy: Policy; overlayUrl?: string; lookaside?: boolean } {
  return { type: 'session', policy, ...(overlayUrl ? { overlayUrl } : {}), ...(lookaside ? { lookaside } : {}) };
}

function bad(message: string, details: Record<string, unknown> = {}): VmsynthError {
  return new VmsynthError('VMS_PROTOCOL', message, { details });
}

type Check = (v: unknown) => boolean;
const str: Check = (v) => typeof v === 'string' && v.length <= 4096;
const uint: Check = (v) => Number.isSafeInteger(v) && (v as number) >= 0;
const bool: Check = (v) => typeof v === 'boolean';
const indices: Check = (v) => Array.isArray(v) && v.length > 0 && v.length <= MAX_LIST && v.every(uint);
const ids: Check = (v) => Array.isArray(v) && v.length <= MAX_LIST && v.every(uint);
const secret: Check = (v) => v instanceof Uint8Array && v.length === SECRET_BYTES;
const policy: Check = (v) => (POLICIES as readonly unknown[]).includes(v);
const hex64: Check = (v) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
const cloudletBases: Check = (v) =>
  Array.isArray(v) &&
  v.length <= MAX_INFO_BASES &&
  v.every(
    (b: Record<string, unknown>) =>
      typeof b === 'object' && b !== null && str(b.name) && hex64(b.disk) && hex64(b.memory),
  );
const port: Check = (v) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 65535;

function fields(
  f: Frame,
  spec: Record<string, Check>,
  optional: Record<string, Check> = {},
  payload: 'none' | 'allowed' | 'required' = 'none',
): Record<string, unknown> {
  const h = f.header as Record<string, unknown>;
  for (const [k, check] of Object.entries(spec))
    if (!check(h[k])) throw bad(`${aType(f.header.type)} has a missing or invalid "${k}"`);
  for (const [k, check] of Object.entries(optional))
    if (h[k] !== undefined && !check(h[k])) throw bad(`${aType(f.header.type)} has an invalid "${k}"`);
  if (payload === 'none' && f.payload.length > 0)
    throw bad(`${aType(f.header.type)} carries no payload, got ${f.payload.length} bytes`);
  if (payload === 'required' && f.payload.length === 0) throw bad(`${aType(f.header.type)} needs a payload`);
  return h;
}

/** A message from a client, checked. */
export function parseClientMessage(f: Frame): ClientMessage {
  switch (f.header.type) {
    case 'hello': {
      const h = fields(f, { protocol: str, client: str }, { token: str });
      return {
        type: 'hello',
        protocol: h.protocol as string,
        client: h.client as string,
        ...(h.token !== undefined ? { token: h.token as string } : {}),
      };
    }
    case 'session': {
      const h = fields(f, { policy }, { overlayUrl: str, lookaside: bool }, 'required');
      return {
        type: 'session',
        policy: h.policy as Policy,
        manifest: f.payload,
        ...(h.overlayUrl !== undefined ? { overlayUrl: h.overlayUrl as string } : {}),
        ...(h.lookaside !== undefined ? { lookaside: h.lookaside as boolean } : {}),
      };
    }
    case 'resume': {
      const h = fields(f, { session: str, secret });
      return { type: 'resume', session: h.session as string, secret: Buffer.from(h.secret as Uint8Array) };
    }
    case 'segment': {
      const h = fields(f, { index: uint }, { offset: uint, thin: bool }, 'required');
      return {
        type: 'segment',
        index: h.index as number,
        data: f.payload,
        ...(h.offset !== undefined ? { offset: h.offset as number } : {}),
        ...(h.thin !== undefined ? { thin: h.thin as boolean } : {}),
      };
    }
    case 'table': {
      const h = fields(f, { index: uint }, {}, 'required');
      return { type: 'table', index: h.index as number, data: f.payload };
    }
    case 'offload': {
      const h = fields(
        f,
        {
          id: uint,
          method: (v) => v === 'GET' || v === 'POST' || v === 'PUT',
          path: (v) => str(v) && (v as string).startsWith('/'),
        },
        {},
        'allowed',
      );
      return {
        type: 'offload',
        id: h.id as number,
        method: h.method as string,
        path: h.path as string,
        body: f.payload,
      };
    }
    case 'ack': {
      const h = fields(f, { ids: indices });
      return { type: 'ack', ids: h.ids as number[] };
    }
    case 'info':
      fields(f, {});
      return { type: 'info' };
    case 'handoff': {
      const h = fields(f, { id: uint, host: str, port });
      return { type: 'handoff', id: h.id as number, host: h.host as string, port: h.port as number };
    }
    case 'ping':
      fields(f, {});
      return { type: 'ping' };
    case 'finish':
      fields(f, {});
      return { type: 'finish' };
    case 'error': {
      const h = fields(f, { code: str, message: str });
      return { type: 'error', code: h.code as string, message: h.message as string };
    }
    default:
      throw bad(`unknown message type "${f.header.type}" from a client`, {
        reason: 'unknown-type',
        type: f.header.type.slice(0, 40),
      });
  }
}

/** A message from a server, checked. */
export function parseServerMessage(f: Frame): ServerMessage {
  switch (f.header.type) {
    case 'welcome': {
      const h = fields(f, { protocol: str, server: str, keepaliveMs: uint, graceMs: uint }, { keeps: bool });
      return {
        type: 'welcome',
        protocol: h.protocol as string,
        server: h.server as string,
        keepaliveMs: h.keepaliveMs as number,
        graceMs: h.graceMs as number,
        ...(h.keeps === true ? { keeps: true } : {}),
      };
    }
    case 'accepted': {
      const h = fields(f, { session: str, secret, base: str, segments: uint, policy });
      return {
        type: 'accepted',
        session: h.session as string,
        secret: Buffer.from(h.secret as Uint8Array),
        base: h.base as string,
        segments: h.segments as number,
        policy: h.policy as Policy,
      };
    }
    case 'resumed': {
      const h = fields(
        f,
        { session: str, base: str, segments: uint, policy, replies: ids, running: ids },
        { resumedMs: uint, appliedMs: uint, partialIndex: uint, partialBytes: uint },
      );
      return {
        type: 'resumed',
        session: h.session as string,
        base: h.base as string,
        segments: h.segments as number,
        policy: h.policy as Policy,
        ...(h.resumedMs !== undefined ? { resumedMs: h.resumedMs as number } : {}),
        ...(h.appliedMs !== undefined ? { appliedMs: h.appliedMs as number } : {}),
        replies: h.replies as number[],
        running: h.running as number[],
        ...(h.partialIndex !== undefined ? { partialIndex: h.partialIndex as number } : {}),
        ...(h.partialBytes !== undefined ? { partialBytes: h.partialBytes as number } : {}),
      };
    }
    case 'want': {
      const h = fields(f, { lane: (v) => v === 'demand' || v === 'background', segments: indices });
      return { type: 'want', lane: h.lane as 'demand' | 'background', segments: h.segments as number[] };
    }
    case 'hurry': {
      const h = fields(f, { segments: indices });
      return { type: 'hurry', segments: h.segments as number[] };
    }
    case 'tables': {
      const h = fields(f, { segments: indices });
      return { type: 'tables', segments: h.segments as number[] };
    }
    case 'thin': {
      const h = fields(f, { segment: uint, lane: (v) => v === 'demand' || v === 'background' }, {}, 'required');
      return {
        type: 'thin',
        segment: h.segment as number,
        lane: h.lane as 'demand' | 'background',
        omit: f.payload,
      };
    }
    case 'ready': {
      const h = fields(f, { resumedMs: uint });
      return { type: 'ready', resumedMs: h.resumedMs as number };
    }
    case 'reply': {
      const h = fields(f, { id: uint, status: uint }, {}, 'allowed');
      return { type: 'reply', id: h.id as number, status: h.status as number, body: f.payload };
    }
    case 'complete': {
      const h = fields(f, { appliedMs: uint });
      return { type: 'complete', appliedMs: h.appliedMs as number };
    }
    case 'info': {
      const h = fields(f, { server: str, accel: str, bases: cloudletBases, sessions: uint, maxSessions: uint });
      return {
        type: 'info',
        server: h.server as string,
        accel: h.accel as string,
        bases: h.bases as CloudletBase[],
        sessions: h.sessions as number,
        maxSessions: h.maxSessions as number,
      };
    }
    case 'moved': {
      const h = fields(f, { host: str, port, session: str });
      return { type: 'moved', host: h.host as string, port: h.port as number, session: h.session as string };
    }
    case 'ping':
      fields(f, {});
      return { type: 'ping' };
    case 'finished': {
      // A map: bytes (a Buffer is an object too) were let through (found by fuzzing against docs/protocol.md).
      const h = fields(f, {
        stats: (v) => typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array),
      });
      return { type: 'finished', stats: h.stats as Record<string, unknown> };
    }
    case 'error': {
      const h = fields(f, { code: str, message: str, fatal: bool }, { id: uint, targetCode: str });
      return {
        type: 'error',
        code: h.code as string,
        message: h.message as string,
        fatal: h.fatal as boolean,
        ...(h.id !== undefined ? { id: h.id as number } : {}),
        ...(h.targetCode !== undefined ? { targetCode: h.targetCode as string } : {}),
      };
    }
    default:
      throw bad(`unknown message type "${f.header.type}" from a server`, {
        reason: 'unknown-type',
        type: f.header.type.slice(0, 40),
      });
  }
}
