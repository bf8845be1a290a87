/**
 * What a session writes into its run directory so that a server started
 * after this one can adopt it from its keeper (keeper.ts): the overlay's
 * signed manifest as the client sent it, and small JSON records, replaced
 * whole (written aside, then renamed) each time they change.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';

/** The overlay's manifest, as the client sent it (checked again against the trusted keys at adoption). */
export const MANIFEST_FILE = 'overlay.manifest';
/** The synthesis session's record (SynthRecord). */
export const SYNTH_RECORD = 'synth.json';

export interface SynthRecord {
  /** The host port forwarded to the app in the VM, once it runs. */
  hostPort: number | null;
  resumedMs: number | null;
  completeMs: number | null;
  firstResponseMs: number | null;
  /** Where the client said the overlay's segments may be fetched. */
  overlayUrl?: string;
  lookaside: boolean;
}

/** Replaces `name` in `dir` with `value` as JSON, atomically. */
export async function writeRecord(dir: string, name: string, value: unknown): Promise<void> {
  const file = path.join(dir, name);
  const tmp = `${file}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, JSON.stringify(value));
  await fsp.rename(tmp, file);
}

/** The JSON record `name` in `dir`, or null when there is none (or it does not parse). */
export async function readRecord<T>(dir: string, name: string): Promise<T | null> {
  try {
    return JSON.parse(await fsp.readFile(path.join(dir, name), 'utf8')) as T;
  } catch {
    return null;
  }
}

/** Writes a session's SynthRecord, one write at a time, so the last one written is the last one asked for. */
export class RecordWriter {
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly dir: string,
    private readonly fixed: Pick<SynthRecord, 'overlayUrl' | 'lookaside'>,
    private readonly onError: (error: unknown) => void,
  ) {}

  save(now: Omit<SynthRecord, 'overlayUrl' | 'lookaside'>): Promise<void> {
    const record: SynthRecord = { ...now, ...this.fixed };
    this.chain = this.chain.then(() => writeRecord(this.dir, SYNTH_RECORD, record)).catch(this.onError);
    return this.chain;
  }
}
