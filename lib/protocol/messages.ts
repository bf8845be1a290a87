/**
 * Messages of the vmsynth wire protocol, version vmsynth/2
 * (docs/protocol.md is the specification; this module checks it).
 *
 * parseMessage turns a frame into a typed message or a VMS_PROTOCOL error:
 * unknown types, fields of the wrong type and payloads where none belong are
 * refused before anything acts on them. Each side accepts only the types its
 * peer may send. Frame caps per conversation stage are in FRAME_CAPS.
 */
import { VmsynthError } from '../core/errors.js';
import { MAX_SEGMENT_RAW_BYTES, MAX_MANIFEST_BYTES } from '../overlay/format.js';
import type { Frame } from './frames.js';

export const PROTOCOL = 'vmsynth/2';

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
  | { type: 'session'; policy: Policy; manifest: Buffer }
  | { type: 'segment'; index: number; data: Buffer }
  | { type: 'offload'; id: number; method: string; path: string; body: Buffer }
  | { type: 'finish' }
  | { type: 'error'; code: string; message: string };

export type ServerMessage =
  | { type: 'welcome'; protocol: string; server: string }
  | { type: 'accepted'; session: string; base: string; segments: number; policy: Policy }
  | { type: 'want'; lane: 'demand' | 'background'; segments: number[] }
  | { type: 'hurry'; segments: number[] }
  | { type: 'ready'; resumedMs: number }
  | { type: 'reply'; id: number; status: number; body: Buffer }
  | { type: 'complete'; appliedMs: number }
  | { type: 'finished'; stats: Record<string, unknown> }
  | { type: 'error'; code: string; message: string; fatal: boolean };

function bad(message: string, details: Record<string, unknown> = {}): VmsynthError {
  return new VmsynthError('VMS_PROTOCOL', message, { details });
}

type Check = (v: unknown) => boolean;
const str: Check = (v) => typeof v === 'string' && v.length <= 4096;
const uint: Check = (v) => Number.isSafeInteger(v) && (v as number) >= 0;
const bool: Check = (v) => typeof v === 'boolean';
const indices: Check = (v) => Array.isArray(v) && v.length > 0 && v.length <= 65536 && v.every(uint);

function fields(
  f: Frame,
  spec: Record<string, Check>,
  optional: Record<string, Check> = {},
  payload: 'none' | 'allowed' | 'required' = 'none',
): Record<string, unknown> {
  const h = f.header as Record<string, unknown>;
  for (const [k, check] of Object.entries(spec))
    if (!check(h[k])) throw bad(`a ${f.header.type} message has a missing or invalid "${k}"`);
  for (const [k, check] of Object.entries(optional))
    if (h[k] !== undefined && !check(h[k])) throw bad(`a ${f.header.type} message has an invalid "${k}"`);
  if (payload === 'none' && f.payload.length > 0)
    throw bad(`a ${f.header.type} message carries no payload, got ${f.payload.length} bytes`);
  if (payload === 'required' && f.payload.length === 0) throw bad(`a ${f.header.type} message needs a payload`);
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
      const h = fields(f, { policy: (v) => (POLICIES as readonly unknown[]).includes(v) }, {}, 'required');
      return { type: 'session', policy: h.policy as Policy, manifest: f.payload };
    }
    case 'segment': {
      const h = fields(f, { index: uint }, {}, 'required');
      return { type: 'segment', index: h.index as number, data: f.payload };
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
      const h = fields(f, { protocol: str, server: str });
      return { type: 'welcome', protocol: h.protocol as string, server: h.server as string };
    }
    case 'accepted': {
      const h = fields(f, {
        session: str,
        base: str,
        segments: uint,
        policy: (v) => (POLICIES as readonly unknown[]).includes(v),
      });
      return {
        type: 'accepted',
        session: h.session as string,
        base: h.base as string,
        segments: h.segments as number,
        policy: h.policy as Policy,
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
    case 'finished': {
      // A map: bytes (a Buffer is an object too) were let through (found by fuzzing against docs/protocol.md).
      const h = fields(f, {
        stats: (v) => typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array),
      });
      return { type: 'finished', stats: h.stats as Record<string, unknown> };
    }
    case 'error': {
      const h = fields(f, { code: str, message: str, fatal: bool });
      return { type: 'error', code: h.code as string, message: h.message as string, fatal: h.fatal as boolean };
    }
    default:
      throw bad(`unknown message type "${f.header.type}" from a server`, {
        reason: 'unknown-type',
        type: f.header.type.slice(0, 40),
      });
  }
}
