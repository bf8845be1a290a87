/**
 * The handoff conversation between two cloudlets, vmsynth-handoff/1
 * (docs/protocol.md, "Handoff"): cloudlet A, where a session's VM runs,
 * connects to cloudlet B's listener as a client would, says hello with this
 * protocol, and moves the VM:
 *
 *   A: hello (as a client's, with this protocol)  B: welcome
 *   A: offer (the overlay's id, or its manifest; the session's client, policy, secret hash;
 *            the VM's generation ID, with which B starts its domain ahead)
 *   B: manifest (it keeps no manifest with that id: A offers again, with it)
 *   B: accepted (its session id) | error
 *   B: want (overlay segments its store and the object store lack)  A: segment
 *   B: complete (the overlay is applied)
 *   A: pass (a pre-copy pass's delta segment tables)  A: dsegment ×n
 *   B: applied (that pass is applied)
 *   A: final (the last pass's tables, the device state, the request log)
 *   B: resumed (the VM runs on B)  ... B: dwant (a guest read waits)  A: dsegment
 *   B: done (B holds every chunk: A may let go)
 *
 * Either side may send `error` and close. This module checks the messages
 * (VMS_PROTOCOL for anything else) and encodes the payloads that are not
 * plain bytes: a pass's segment tables and the final state.
 */
import { VmsynthError } from '../core/errors.js';
import { HASH_BYTES, type SegmentInfo } from '../overlay/format.js';
import { packr, plainValueEnd, unpackOne } from '../core/msgpack.js';
import { aType, type Frame } from './frames.js';

export const HANDOFF_PROTOCOL = 'vmsynth-handoff/1';

/** From the source cloudlet (A). */
export type SourceMessage =
  | {
      type: 'offer';
      session: string;
      client: string;
      policy: string;
      secretSha256: Buffer;
      overlayUrl?: string;
      /** The overlay's id in a store (SHA-256 of its manifest body): B may hold its manifest. */
      overlayId?: Buffer;
      /** The manifest as the client sent it; empty when the offer names the overlay by id alone. */
      manifest: Buffer;
      /**
       * The VM's generation ID (null: its machine has none). B starts its domain with it as
       * soon as it accepts, waiting for the device state (absent: B starts it after the stop).
       */
      genid?: string | null;
    }
  | { type: 'segment'; index: number; data: Buffer }
  | { type: 'pass'; pass: number; tables: Buffer }
  | { type: 'dsegment'; index: number; data: Buffer }
  /** `whole`: resume only once every chunk of the last pass is applied (the safe mode). */
  | { type: 'final'; pass: number; state: Buffer; whole?: boolean }
  | { type: 'ping' }
  | { type: 'error'; code: string; message: string };

/** From the target cloudlet (B). */
export type TargetMessage =
  | { type: 'welcome'; protocol: string; server: string }
  | { type: 'accepted'; session: string }
  /** B keeps no manifest with the offer's overlay id: offer again with it. */
  | { type: 'manifest' }
  | { type: 'want'; segments: number[] }
  | { type: 'complete'; appliedMs: number }
  | { type: 'applied'; pass: number }
  | { type: 'resumed'; ms: number }
  | { type: 'dwant'; segments: number[] }
  | { type: 'done' }
  | { type: 'ping' }
  | { type: 'error'; code: string; message: string; fatal?: boolean };

/** What the final message carries (MessagePack payload). */
export interface FinalState {
  /** QEMU's device state without RAM (xen-save-devices-state). */
  deviceState: Uint8Array;
  /** The VM generation ID it runs with (the same VM goes on). */
  genid: string | null;
  /** The last pass's segment tables. */
  tables: DeltaTable[];
  /** The session's request log (server/request-log.ts RequestLog.snapshot). */
  log: unknown;
}

/** A delta segment's entry: a SegmentInfo without its place in a file. */
export type DeltaTable = { index: number } & Omit<SegmentInfo, 'offset'>;

const encode = (v: unknown): Buffer => packr.pack(v);

/** One plain MessagePack value (no extension types), the whole of `b`. */
function decode(b: Buffer): unknown {
  if (plainValueEnd(b) !== b.length) throw new Error('bytes follow the value');
  return unpackOne(b);
}

function bad(message: string): VmsynthError {
  return new VmsynthError('VMS_PROTOCOL', message, { details: { protocol: HANDOFF_PROTOCOL } });
}

const uint = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const str = (v: unknown): v is string => typeof v === 'string' && v.length <= 4096;
const indices = (v: unknown): v is number[] => Array.isArray(v) && v.length > 0 && v.length <= 8192 && v.every(uint);
const bytes = (v: unknown, n?: number): v is Uint8Array =>
  v instanceof Uint8Array && (n === undefined || v.length === n);

function need(f: Frame, ok: boolean, field: string): void {
  if (!ok) throw bad(`${aType(f.header.type)} has a missing or invalid "${field}"`);
}

function noPayload(f: Frame): void {
  if (f.payload.length > 0) throw bad(`${aType(f.header.type)} carries no payload`);
}

/** A message from the source cloudlet, checked. */
export function parseSourceMessage(f: Frame): SourceMessage {
  const h = f.header as Record<string, unknown>;
  switch (h.type) {
    case 'offer':
      need(f, str(h.session) && str(h.client) && str(h.policy), 'session');
      need(f, bytes(h.secretSha256, HASH_BYTES), 'secretSha256');
      need(f, h.overlayUrl === undefined || str(h.overlayUrl), 'overlayUrl');
      need(f, h.overlayId === undefined || bytes(h.overlayId, HASH_BYTES), 'overlayId');
      need(f, f.payload.length > 0 || h.overlayId !== undefined, 'manifest');
      need(f, h.genid === undefined || h.genid === null || (str(h.genid) && h.genid.length <= 64), 'genid');
      return {
        type: 'offer',
        session: h.session as string,
        client: h.client as string,
        policy: h.policy as string,
        secretSha256: Buffer.from(h.secretSha256 as Uint8Array),
        ...(h.overlayUrl !== undefined ? { overlayUrl: h.overlayUrl as string } : {}),
        ...(h.overlayId !== undefined ? { overlayId: Buffer.from(h.overlayId as Uint8Array) } : {}),
        manifest: f.payload,
        ...(h.genid !== undefined ? { genid: h.genid as string | null } : {}),
      };
    case 'segment':
    case 'dsegment':
      need(f, uint(h.index), 'index');
      need(f, f.payload.length > 0, 'payload');
      return { type: h.type, index: h.index as number, data: f.payload };
    case 'pass':
      need(f, uint(h.pass), 'pass');
      return { type: 'pass', pass: h.pass as number, tables: f.payload };
    case 'final':
      need(f, uint(h.pass), 'pass');
      need(f, f.payload.length > 0, 'payload');
      need(f, h.whole === undefined || typeof h.whole === 'boolean', 'whole');
      return { type: 'final', pass: h.pass as number, state: f.payload, ...(h.whole === true ? { whole: true } : {}) };
    case 'ping':
      noPayload(f);
      return { type: 'ping' };
    case 'error':
      need(f, str(h.code) && str(h.message), 'code');
      return { type: 'error', code: h.code as string, message: h.message as string };
    default:
      throw bad(`unknown handoff message type "${String(h.type).slice(0, 40)}" from a source cloudlet`);
  }
}

/** A message from the target cloudlet, checked. */
export function parseTargetMessage(f: Frame): TargetMessage {
  const h = f.header as Record<string, unknown>;
  noPayload(f);
  switch (h.type) {
    case 'welcome':
      need(f, str(h.protocol) && str(h.server), 'protocol');
      return { type: 'welcome', protocol: h.protocol as string, server: h.server as string };
    case 'accepted':
      need(f, str(h.session), 'session');
      return { type: 'accepted', session: h.session as string };
    case 'manifest':
      return { type: 'manifest' };
    case 'want':
    case 'dwant':
      need(f, indices(h.segments), 'segments');
      return { type: h.type, segments: h.segments as number[] };
    case 'complete':
      need(f, uint(h.appliedMs), 'appliedMs');
      return { type: 'complete', appliedMs: h.appliedMs as number };
    case 'applied':
      need(f, uint(h.pass), 'pass');
      return { type: 'applied', pass: h.pass as number };
    case 'resumed':
      need(f, uint(h.ms), 'ms');
      return { type: 'resumed', ms: h.ms as number };
    case 'done':
      return { type: 'done' };
    case 'ping':
      return { type: 'ping' };
    case 'error':
      need(f, str(h.code) && str(h.message), 'code');
      return { type: 'error', code: h.code as string, message: h.message as string };
    default:
      throw bad(`unknown handoff message type "${String(h.type).slice(0, 40)}" from a target cloudlet`);
  }
}

/** A pass's segment tables, as the pass and final messages carry them. */
export function encodeTables(tables: DeltaTable[]): Buffer {
  return encode(tables);
}

function checkTable(t: unknown): DeltaTable {
  const x = t as Record<string, unknown>;
  const ok =
    typeof x === 'object' &&
    x !== null &&
    uint(x.index) &&
    uint(x.bytes) &&
    uint(x.rawBytes) &&
    uint(x.count) &&
    uint(x.digests) &&
    bytes(x.sha256, HASH_BYTES) &&
    bytes(x.chunks) &&
    x.chunks.length === x.count * 16 &&
    (x.tableSha256 === undefined || bytes(x.tableSha256, HASH_BYTES));
  if (!ok) throw bad('a delta segment table is malformed');
  return x as unknown as DeltaTable;
}

export function decodeTables(payload: Buffer): DeltaTable[] {
  let v: unknown;
  try {
    v = decode(payload);
  } catch (err) {
    throw bad(`the delta segment tables do not decode: ${(err as Error).message}`);
  }
  if (!Array.isArray(v)) throw bad('the delta segment tables are not a list');
  return v.map(checkTable);
}

export function encodeFinal(s: FinalState): Buffer {
  return encode(s);
}

export function decodeFinal(payload: Buffer): FinalState {
  let v: Record<string, unknown>;
  try {
    v = decode(payload) as Record<string, unknown>;
  } catch (err) {
    throw bad(`the final state does not decode: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || !bytes(v.deviceState) || !Array.isArray(v.tables))
    throw bad('the final state is malformed');
  if (v.genid !== null && !str(v.genid)) throw bad('the final state has an invalid genid');
  return {
    deviceState: v.deviceState,
    genid: v.genid,
    tables: (v.tables as unknown[]).map(checkTable),
    log: v.log,
  };
}
