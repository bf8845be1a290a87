/**
 * What a synthesis session (session.ts) is started with, and the events it
 * reports to whoever drives it (the server's ServedSession, or a test).
 */
import type { VmsynthError } from '../core/errors.js';
import type { Overlay } from '../overlay/reader.js';
import type { Policy } from '../protocol/messages.js';
import type { ObjectSource } from '../store/object-source.js';
import type { SessionSource } from '../store/session-source.js';
import type { Base } from '../vm/base.js';
import type { Libvirt } from '../vm/libvirt.js';
import type { KeeperPool } from './keeper-pool.js';
import type { SynthRecord } from './session-record.js';

export interface SynthEvents {
  /** Ask the client for these segments. */
  want(lane: 'demand' | 'background', segments: number[]): void;
  /** A blocked guest read needs these segments, already asked for in the background: the client should send them next. */
  hurry(segments: number[]): void;
  /** Chunk lookaside: ask the client for these segments' digest tables. */
  tables(segments: number[]): void;
  /** Chunk lookaside: ask the client for segment `segment` without the payload slots `omit` sets. */
  thin(lane: 'demand' | 'background', segment: number, omit: Buffer): void;
  /** The VM is running. */
  ready(resumedMs: number): void;
  /** Every segment has been applied. */
  complete(appliedMs: number): void;
  /** The session cannot go on (the caller closes it). */
  failed(err: VmsynthError): void;
  /** A handoff's target: a guest read waits for delta segment `segment` (numbered after the overlay's). */
  deltaDemand?(segment: number): void;
}

export interface SynthOptions {
  overlay: Overlay;
  base: Base;
  policy: Policy;
  lv: Libvirt;
  events: SynthEvents;
  /** Worker threads for verify + decompress + apply (default: DEFAULTS.threads). */
  threads?: number;
  /** Background bytes requested and not yet applied (default: DEFAULTS.maxInFlightKib). */
  maxInFlightBytes?: number;
  fuseDevice?: string;
  /** The session id (vm/run-dir.ts newRunId); default a new one. */
  id?: string;
  /** The cloudlet store, as this session sees it: segments it holds are taken from it, not asked of the client. */
  store?: SessionSource;
  /** The object store the client named the overlay by: segments the store lacks are fetched from it first. */
  objects?: ObjectSource;
  /** The client offered chunk lookaside (digest tables and thin segments). */
  lookaside?: boolean;
  /**
   * Serve the images from a keeper process that outlives this one (keeper.ts), which ends the
   * session itself when no server adopts it within graceMs; `manifest`: the overlay's manifest
   * as the client sent it, kept for that server.
   */
  keeper?: { graceMs: number; manifest: Uint8Array; overlayUrl?: string; pool?: KeeperPool };
  /**
   * A handoff's target: the overlay is applied whole (policy baseline), and the
   * VM resumes only when the handoff brings its device state (`machine.startHandedOff`).
   */
  incoming?: boolean;
  /** Adopt session `id` from the keeper a previous server left, with the record it kept. */
  adopt?: SynthRecord;
}
