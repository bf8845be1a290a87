/**
 * The chunks of a running (or stopped) VM that may differ from its launch
 * image, read from outside QEMU, for a handoff pass (delta.ts):
 *
 * - memory: the pages QEMU holds private copies of in its mapping of the
 *   FUSE memory image (vm/written-pages.ts: pagemap, then /proc/PID/mem);
 * - disk: the clusters of the session's qcow2 layer (`qemu-img map -U`
 *   lists them; data clusters are read from the layer file at the offsets
 *   it gives; zero clusters are zeros). QEMU flushes the layer's metadata
 *   when the VM stops, so the pass after the stop sees every write; passes
 *   while it runs may miss the newest, which the next pass finds;
 * - and the chunks an earlier handoff brought (`inherited`), read from the
 *   launch image where the VM has not written them since.
 *
 * Each image's chunks come in ascending order.
 */
import { promises as fsp } from 'node:fs';
import { exec } from '../core/exec.js';
import { VmsynthError } from '../core/errors.js';
import { CHUNK_SIZE } from '../fs/chunk-map.js';
import { ZERO_CHUNK } from '../overlay/chunk-io.js';
import { Image } from '../overlay/format.js';
import { readPages, scanWritten } from '../vm/written-pages.js';
import type { ChunkNow, DeltaReaders } from './delta.js';

/** One entry of `qemu-img map --output=json`. */
export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** A run of disk chunks the layer holds: read from `offset` in the layer file, or zeros. */
export interface LayerRun {
  /** First chunk index and count. */
  index: number;
  count: number;
  /** Offset of the first chunk's bytes in the layer file; null: zeros. */
  offset: number | null;
}

/** The runs of chunks the top layer (depth 0) holds, from qemu-img map's entries (pure). */
export function layerRuns(entries: MapEntry[]): LayerRun[] {
  const out: LayerRun[] = [];
  for (const e of entries) {
    if (e.depth !== 0 || (!e.data && !e.zero)) continue;
    if (e.start % CHUNK_SIZE !== 0 || e.length % CHUNK_SIZE !== 0)
      throw new VmsynthError(
        'VMS_INTERNAL',
        `qemu-img map gave a run not on ${CHUNK_SIZE}-byte chunks: ${JSON.stringify(e)}`,
      );
    const zeros = e.zero || !e.data;
    if (!zeros && e.offset === undefined)
      throw new VmsynthError(
        'VMS_INTERNAL',
        `qemu-img map gave a data run with no offset (compressed?): ${JSON.stringify(e)}`,
      );
    out.push({ index: e.start / CHUNK_SIZE, count: e.length / CHUNK_SIZE, offset: zeros ? null : e.offset! });
  }
  return out;
}

/** The runs the session's qcow2 layer holds (readable while QEMU has it open: -U). */
export async function diskLayerRuns(layer: string): Promise<LayerRun[]> {
  const { stdout } = await exec('qemu-img', ['map', '-U', '--output=json', '-f', 'qcow2', layer]);
  return layerRuns(JSON.parse(stdout) as MapEntry[]);
}

export interface VmChangesOptions {
  /** QEMU's process id. */
  pid: number;
  /** The memory image as QEMU mapped it (the FUSE memory.img path). */
  memoryFile: string;
  /** The session's qcow2 layer over the launch disk. */
  diskLayer: string;
  /** Chunks an earlier handoff brought, per image, ascending. */
  inherited: [number[], number[]];
  readers: Pick<DeltaReaders, 'launch'>;
}

/** Merges two ascending lists of chunk indexes; each index once, with whether it is in `a`. */
function* merged(a: readonly number[], b: readonly number[]): Generator<{ index: number; inA: boolean }> {
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const x = a[i] ?? Infinity;
    const y = b[j] ?? Infinity;
    if (x <= y) {
      yield { index: x, inA: true };
      i++;
      if (x === y) j++;
    } else {
      yield { index: y, inA: false };
      j++;
    }
  }
}

/** Every chunk that may have changed since synthesis, memory then disk, with its content now. */
export async function* vmChanges(o: VmChangesOptions): AsyncGenerator<ChunkNow> {
  const scan = await scanWritten(o.pid, o.memoryFile);
  const written = new Map<number, Buffer>();
  for await (const p of readPages(o.pid, scan.mapping, scan.pages)) written.set(p.page, p.data);
  const buf = Buffer.allocUnsafe(CHUNK_SIZE);
  for (const { index, inA } of merged(scan.pages, o.inherited[Image.MEMORY])) {
    if (inA) {
      yield { image: Image.MEMORY, index, data: written.get(index)! };
    } else {
      await o.readers.launch(Image.MEMORY, index, buf);
      yield { image: Image.MEMORY, index, data: buf };
    }
  }
  const runs = await diskLayerRuns(o.diskLayer);
  const layerChunks: number[] = [];
  const where = new Map<number, number | null>();
  for (const r of runs)
    for (let c = 0; c < r.count; c++) {
      layerChunks.push(r.index + c);
      where.set(r.index + c, r.offset === null ? null : r.offset + c * CHUNK_SIZE);
    }
  const file = await fsp.open(o.diskLayer, 'r');
  try {
    for (const { index, inA } of merged(layerChunks, o.inherited[Image.DISK])) {
      const at = inA ? where.get(index)! : undefined;
      if (at === null) {
        yield { image: Image.DISK, index, data: ZERO_CHUNK };
      } else if (at !== undefined) {
        const { bytesRead } = await file.read(buf, 0, CHUNK_SIZE, at);
        if (bytesRead !== CHUNK_SIZE) buf.fill(0, bytesRead);
        yield { image: Image.DISK, index, data: buf };
      } else {
        await o.readers.launch(Image.DISK, index, buf);
        yield { image: Image.DISK, index, data: buf };
      }
    }
  } finally {
    await file.close();
  }
}
