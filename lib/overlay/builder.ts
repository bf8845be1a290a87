/**
 * Building an overlay: diff a custom VM's disk and memory against its base in
 * 4 KiB chunks, dedup, delta-encode, pack in access order into ~1 MB zstd
 * segments, and write a signed manifest. Streaming, so a 1 GB overlay builds
 * in well under 100 MB of heap. The passes: scan.ts (1, what differs; 2,
 * what the base already has) and pack.ts (3, the order; 4, dedup against
 * earlier overlay chunks, delta choice, segments). The output directory is
 * written under a temporary name and renamed into place when complete: a
 * failure leaves nothing.
 */
import { promises as fsp, openSync, closeSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { compress } from 'zstd-napi';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { packr } from '../core/msgpack.js';
import { PhaseTimer } from '../core/scope.js';
import { claimOutput } from '../core/stale.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import type { Base } from '../vm/base.js';
import { ChunkFile, sha256 } from './chunk-io.js';
import {
  DEFAULT_SEGMENT_BYTES,
  IMAGE_NAMES,
  MANIFEST_FILE,
  MAX_SEGMENT_PAYLOAD_BYTES,
  OVERLAY_FORMAT,
  SEGMENTS_FILE,
  type ImageIdentity,
  type OverlayBody,
  type OverlayEnvelope,
} from './format.js';
import { signBytes, type SigningKey } from './keys.js';
import { encodeBody } from './manifest.js';
import { orderEntries, pack, SegmentPacker, type BuildOrder } from './pack.js';
import { checkSameSize, Entries, lookaside, scan } from './scan.js';

export type { BuildOrder, ChunkRef } from './pack.js';

export interface ImagePaths {
  memory: string;
  disk: string;
}

export interface BuildBase {
  name: string;
  files: ImagePaths;
  identity: { memory: ImageIdentity; disk: ImageIdentity };
}

/** The builder's view of a local base: its name, image files and identity. */
export function baseInput(base: Base): BuildBase {
  return {
    name: base.name,
    files: { memory: base.file('memory'), disk: base.file('disk') },
    identity: { memory: base.manifest.memory, disk: base.manifest.disk },
  };
}

export interface BuildOptions {
  base: BuildBase;
  custom: ImagePaths & { deviceState: string };
  appPort: number;
  /** Disk chunk ranges [start, end) the guest discarded; counted as trimmed. */
  trimmed?: Array<[number, number]>;
  /** Re-packing a synthesized VM, whose trimmed ranges are no longer known: the count its first build recorded. */
  trimmedChunks?: number;
  order?: BuildOrder;
  segmentBytes?: number;
  zstdLevel?: number;
  /** Delta choice per payload chunk: "auto" (default: the rule below), or always "xor" / "raw" (for measuring). */
  delta?: 'auto' | 'xor' | 'raw';
  key: SigningKey;
  out: string;
  force?: boolean;
  signal?: AbortSignal;
}

export interface BuildResult {
  dir: string;
  manifestBytes: number;
  segmentsBytes: number;
  segments: number;
  body: OverlayBody;
  ms: { scan: number; lookaside: number; pack: number; total: number };
}

const DELTA_RULES = {
  auto: 'XOR against the base chunk at the same offset when that leaves more zero 32-bit words than the raw chunk; RAW otherwise',
  xor: 'always XOR against the base chunk at the same offset',
  raw: 'always RAW',
} as const;

export async function buildOverlay(opts: BuildOptions): Promise<BuildResult> {
  const timer = new PhaseTimer<'scan' | 'lookaside' | 'pack'>();
  const segmentBytes = opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
  if (segmentBytes < CHUNK_SIZE || segmentBytes % CHUNK_SIZE !== 0 || segmentBytes > MAX_SEGMENT_PAYLOAD_BYTES) {
    throw new VmsynthError(
      'VMS_USAGE',
      `segment size ${segmentBytes} must be a multiple of 4096 between 4 KiB and ${MAX_SEGMENT_PAYLOAD_BYTES >> 20} MiB`,
    );
  }
  const level = opts.zstdLevel ?? 3;
  const out = path.resolve(opts.out);
  const files: ChunkFile[] = [];
  const open = (f: string) => {
    const cf = new ChunkFile(f);
    files.push(cf);
    return cf;
  };
  const tmp = await claimOutput(out, 'tmp', opts.force);
  let fd = -1;
  try {
    const base = [open(opts.base.files.memory), open(opts.base.files.disk)];
    const custom = [open(opts.custom.memory), open(opts.custom.disk)];
    checkSameSize(base[0]!, custom[0]!, 'memory');
    checkSameSize(base[1]!, custom[1]!, 'disk');
    for (const name of IMAGE_NAMES) {
      const want = opts.base.identity[name].bytes;
      const have = base[name === 'memory' ? 0 : 1]!.bytes;
      if (want !== have)
        throw new VmsynthError('VMS_BASE_CORRUPT', `base ${name} image is ${have} bytes, its manifest says ${want}`);
    }
    const deviceState = readFileSync(opts.custom.deviceState);

    publish('progress', { step: 'overlay: comparing the custom VM with its base' });
    const entries = new Entries();
    const { trimmedChunks, modified } = await scan(base, custom, entries, opts.trimmed ?? [], opts.signal);
    timer.lap('scan');
    publish('progress', { step: `overlay: ${entries.n} chunks differ; looking them up in the base` });
    await lookaside(base, custom, entries, opts.signal);
    timer.lap('lookaside');

    fd = openSync(path.join(tmp, SEGMENTS_FILE), 'w');
    const packer = new SegmentPacker(fd, segmentBytes, level);
    publish('progress', { step: `overlay: packing ${entries.n} chunks into ${segmentBytes >> 10} KiB segments` });
    const kinds = await pack(
      base,
      custom,
      entries,
      orderEntries(entries, opts.order),
      opts.delta ?? 'auto',
      packer,
      opts.signal,
    );
    closeSync(fd);
    fd = -1;
    timer.lap('pack');

    const body: OverlayBody = {
      format: OVERLAY_FORMAT,
      createdAt: new Date().toISOString(),
      tool: `vmsynth ${VMSYNTH_VERSION}`,
      base: { name: opts.base.name, memory: opts.base.identity.memory, disk: opts.base.identity.disk },
      chunkSize: CHUNK_SIZE,
      delta: { encoding: 'xor', rule: DELTA_RULES[opts.delta ?? 'auto'] },
      compression: { codec: 'zstd', level },
      segmentBytes,
      order: opts.order
        ? { kind: 'profile', runs: opts.order.runs, rank: opts.order.rank }
        : { kind: 'default', runs: 0 },
      vm: { appPort: opts.appPort },
      deviceState: {
        bytes: deviceState.length,
        sha256: sha256(deviceState).toString('hex'),
        zstd: compress(deviceState, { compressionLevel: 9 }),
      },
      segments: packer.table,
      stats: {
        chunks: kinds,
        trimmedChunks: opts.trimmedChunks ?? trimmedChunks,
        modified: { memory: modified[0]!, disk: modified[1]! },
      },
    };
    const bodyBytes = encodeBody(body);
    const sig = signBytes(opts.key, bodyBytes);
    const envelope: OverlayEnvelope = {
      format: OVERLAY_FORMAT,
      body: bodyBytes,
      signature: { alg: 'ed25519', keyId: opts.key.keyId, publicKey: opts.key.publicKeyRaw, sig },
    };
    const manifest = packr.pack(envelope);
    await fsp.writeFile(path.join(tmp, MANIFEST_FILE), manifest);
    if (opts.force) await fsp.rm(out, { recursive: true, force: true });
    await fsp.rename(tmp, out);
    return {
      dir: out,
      manifestBytes: manifest.length,
      segmentsBytes: packer.offset,
      segments: packer.table.length,
      body,
      ms: timer.ms(),
    };
  } catch (err) {
    if (fd >= 0) closeSync(fd);
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err;
  } finally {
    for (const f of files) f.close();
  }
}
