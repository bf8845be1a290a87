/**
 * Opening an overlay: read the manifest, check its signature (against this
 * host's trusted keys), validate the body, check the segments file is whole,
 * and hand out segments one at a time, hash-checked and decompressed. Never
 * holds more than one segment (plus the manifest) in memory.
 */
import { promises as fsp, openSync, readSync, closeSync } from 'node:fs';
import path from 'node:path';
import { VmsynthError } from '../core/errors.js';
import type { Base } from '../vm/base.js';
import { sha256 } from './chunk-io.js';
import {
  IMAGE_NAMES,
  MANIFEST_FILE,
  MAX_MANIFEST_BYTES,
  SEGMENTS_FILE,
  segmentsFileBytes,
  type OverlayBody,
  type OverlayEnvelope,
  type SegmentInfo,
} from './format.js';
import { decodeBody, decodeEnvelope } from './manifest.js';
import { decompressFrame } from './zstd-frame.js';
import { verifySignature } from './keys.js';

export interface OpenOptions {
  /** Trusted public keys by id; null checks only that the signature matches the key the manifest carries. */
  trusted: Map<string, Buffer> | null;
}

export class Overlay {
  private constructor(
    readonly dir: string,
    readonly envelope: OverlayEnvelope,
    readonly body: OverlayBody,
    readonly manifestBytes: number,
    readonly segmentsBytes: number,
  ) {}

  get keyId(): string {
    return this.envelope.signature.keyId;
  }

  static async open(dir: string, opts: OpenOptions): Promise<Overlay> {
    const abs = path.resolve(dir);
    const mfile = path.join(abs, MANIFEST_FILE);
    const st = await fsp.stat(abs).catch(() => null);
    if (!st?.isDirectory()) throw new VmsynthError('VMS_USAGE', `${abs} is not an overlay directory`);
    const mst = await fsp.stat(mfile).catch(() => null);
    if (!mst) throw new VmsynthError('VMS_OVERLAY_CORRUPT', `${abs} has no ${MANIFEST_FILE}`);
    if (mst.size > MAX_MANIFEST_BYTES)
      throw new VmsynthError(
        'VMS_OVERLAY_CORRUPT',
        `${mfile} is ${mst.size} bytes, over the ${MAX_MANIFEST_BYTES >> 20} MiB limit`,
      );
    const bytes = await fsp.readFile(mfile);
    const { envelope, body } = Overlay.parseManifest(bytes, opts);
    const want = segmentsFileBytes(body);
    const sst = await fsp.stat(path.join(abs, SEGMENTS_FILE)).catch(() => null);
    if (!sst) throw new VmsynthError('VMS_OVERLAY_CORRUPT', `${abs} has no ${SEGMENTS_FILE}`);
    if (sst.size !== want) {
      throw new VmsynthError(
        'VMS_OVERLAY_CORRUPT',
        `${SEGMENTS_FILE} is ${sst.size} bytes, the manifest describes ${want}${sst.size < want ? ' (truncated)' : ''}`,
      );
    }
    return new Overlay(abs, envelope, body, bytes.length, want);
  }

  /**
   * An overlay known only by its manifest bytes (a synthesis server's view:
   * the segments arrive over the network). `segmentsPath` is not usable.
   */
  static fromManifest(bytes: Uint8Array, opts: OpenOptions): Overlay {
    if (bytes.length > MAX_MANIFEST_BYTES)
      throw new VmsynthError(
        'VMS_OVERLAY_CORRUPT',
        `the manifest is ${bytes.length} bytes, over the ${MAX_MANIFEST_BYTES >> 20} MiB limit`,
      );
    const { envelope, body } = Overlay.parseManifest(bytes, opts);
    return new Overlay('(received)', envelope, body, bytes.length, segmentsFileBytes(body));
  }

  /** Envelope, signature (against `opts.trusted`), then the validated body. */
  private static parseManifest(bytes: Uint8Array, opts: OpenOptions): { envelope: OverlayEnvelope; body: OverlayBody } {
    const envelope = decodeEnvelope(bytes);
    verifySignature(envelope.body, envelope.signature, opts.trusted);
    return { envelope, body: decodeBody(envelope.body) };
  }

  /** Throws VMS_BASE_MISMATCH unless `base` is the base this overlay was made against. */
  checkBase(base: Base): void {
    for (const name of IMAGE_NAMES) {
      const want = this.body.base[name];
      const have = base.manifest[name];
      if (want.sha256 !== have.sha256 || want.bytes !== have.bytes) {
        throw new VmsynthError(
          'VMS_BASE_MISMATCH',
          `overlay ${this.dir} was made against base "${this.body.base.name}" (${name} ${want.sha256.slice(0, 12)}…), not "${base.name}" (${have.sha256.slice(0, 12)}…)`,
          {
            details: {
              want: this.body.base,
              have: { name: base.name, memory: base.manifest.memory, disk: base.manifest.disk },
            },
          },
        );
      }
    }
  }

  /** The saved device state, checked against its digest. */
  deviceState(): Buffer {
    const ds = this.body.deviceState;
    let raw: Buffer;
    try {
      // One frame declaring at most the recorded size: a plain decompress allocated whatever the frame
      // header declared (fuzzing: a 13-byte frame declaring 2 GiB got 2 GiB before failing).
      raw = decompressFrame(ds.zstd, ds.bytes);
    } catch (err) {
      throw new VmsynthError(
        'VMS_OVERLAY_CORRUPT',
        `the device state does not decompress (${(err as Error).message})`,
        { cause: err },
      );
    }
    if (raw.length !== ds.bytes || sha256(raw).toString('hex') !== ds.sha256)
      throw new VmsynthError('VMS_OVERLAY_CORRUPT', 'the device state does not match its digest');
    return raw;
  }

  get segmentsPath(): string {
    return path.join(this.dir, SEGMENTS_FILE);
  }

  /** Opens the segments file for reading compressed segments in any order. */
  segmentFile(): SegmentFile {
    return new SegmentFile(this.segmentsPath);
  }
}

export class SegmentFile {
  private fd: number;

  constructor(readonly file: string) {
    this.fd = openSync(file, 'r');
  }

  /** The compressed bytes of a segment (not yet checked). */
  read(s: SegmentInfo): Buffer {
    const buf = Buffer.allocUnsafeSlow(s.bytes);
    let done = 0;
    while (done < s.bytes) {
      const n = readSync(this.fd, buf, done, s.bytes - done, s.offset + done);
      if (n === 0)
        throw new VmsynthError('VMS_OVERLAY_CORRUPT', `${this.file} ends inside segment at offset ${s.offset}`);
      done += n;
    }
    return buf;
  }

  close(): void {
    closeSync(this.fd);
  }
}
