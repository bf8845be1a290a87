/**
 * The conversation between a synthesis server and the keeper process that
 * serves one session's images (keeper.ts): MessagePack values, each behind
 * its 4-byte big-endian length, over the unix socket in the session's run
 * directory. Both ends are the same vmsynth build, so a message is trusted
 * as far as its shape; a frame over the cap ends the conversation.
 */
import type net from 'node:net';
import type { ChunkSource } from '../fs/chunk-map.js';
import { packr } from '../core/msgpack.js';
import type { BlockedReadStats, HeldReads } from './arrivals.js';

/** The socket's name in the run directory. */
export const KEEPER_SOCKET = 'keeper.sock';
/** What the keeper is given to start: msgpack in the run directory. */
export const KEEPER_SPEC = 'keeper.spec';
/** The keeper's own log (stdout and stderr), in the run directory. */
export const KEEPER_LOG = 'keeper.log';

/** A frame's cap: the largest is a state reply, two bytes per chunk of both images plus the header. */
const MAX_FRAME = 1 << 30;

export interface KeeperSpec {
  session: string;
  /** The libvirt domain the keeper destroys when no server adopts it within graceMs. */
  domain: string;
  graceMs: number;
  mountpoint: string;
  /** Base image files, memory then disk. */
  base: [string, string];
  /** The files received chunks are applied into, memory then disk. */
  received: [string, string];
  sizes: [number, number];
  /** Per image, each chunk's source and the segment a MISSING one waits for. */
  sources: [Uint8Array, Uint8Array];
  segmentOf: [Uint8Array, Uint8Array];
}

/** Server to keeper. */
export type ToKeeper =
  | { t: 'hello' } // a server adopts the keeper: it answers `state`
  | { t: 'arrived'; image: number; source: ChunkSource; chunks: Uint8Array } // u32 LE chunk indexes
  | { t: 'redirect'; image: number; index: number; segment: number }
  | { t: 'expect'; image: number; segment: number; chunks: Uint8Array } // u32 LE chunk indexes that wait for `segment` now (a handoff's delta)
  | { t: 'applied'; segment: number }
  | { t: 'fail' } // fail every held read and every later one
  | { t: 'close' }; // unmount and exit (answers `closed`)

/** Keeper to server. */
export type FromKeeper =
  | { t: 'state'; sources: Uint8Array[]; segmentOf: Uint8Array[]; applied: number[] }
  | { t: 'demand'; segment: number }
  | { t: 'unblocked'; ms: number }
  | { t: 'reads'; held: HeldReads; blocked: BlockedReadStats }
  | { t: 'closed'; forced: boolean };

export function sendFrame(socket: net.Socket, value: ToKeeper | FromKeeper): boolean {
  const body = packr.pack(value);
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(body.length);
  return socket.write(Buffer.concat([head, body]));
}

/** Calls `onValue` with each whole frame's value as bytes arrive; throws on a frame over the cap. */
export function frameReader(onValue: (v: unknown) => void): (chunk: Buffer) => void {
  let pending: Buffer = Buffer.alloc(0);
  return (chunk) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 4) {
      const n = pending.readUInt32BE(0);
      if (n > MAX_FRAME) throw new Error(`a keeper frame of ${n} bytes is over the cap`);
      if (pending.length < 4 + n) break;
      const value = packr.unpack(pending.subarray(4, 4 + n)) as unknown;
      pending = pending.subarray(4 + n);
      onValue(value);
    }
  };
}

/** Int32Array ⇄ bytes (msgpack carries bytes; typed arrays other than Uint8Array are extensions). */
export function int32Bytes(a: Int32Array): Uint8Array {
  return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
}

export function bytesInt32(b: Uint8Array): Int32Array {
  const copy = new Uint8Array(b); // aligned
  return new Int32Array(copy.buffer, 0, copy.byteLength >> 2);
}

/** A list of chunk indexes ⇄ bytes (u32 each, the host's byte order: both ends are this machine). */
export function u32Bytes(list: readonly number[]): Uint8Array {
  return new Uint8Array(Uint32Array.from(list).buffer);
}

export function bytesU32(b: Uint8Array): Uint32Array {
  const copy = new Uint8Array(b); // aligned
  return new Uint32Array(copy.buffer, 0, copy.byteLength >> 2);
}
