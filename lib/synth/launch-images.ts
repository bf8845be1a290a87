/**
 * The launch VM's disk and memory images while its overlay streams in:
 * chunk maps over base | store | zeros, the store files segments are applied
 * into (sparse, one per image, at the image's own offsets), the arrivals
 * that hold guest reads of missing chunks, and the apply pipeline. No VM and
 * no network: a session mounts `images` and feeds `apply`; tests do the same
 * without a guest.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { Scope } from '../core/scope.js';
import { ChunkMap, ChunkSource } from '../fs/chunk-map.js';
import { fileReader, ImageFile, zeroReader } from '../fs/image.js';
import { readRecord, type OverlayBody } from '../overlay/format.js';
import { ChunkArrivals } from './arrivals.js';
import { StreamApplier } from './stream-apply.js';

export interface LaunchImageOptions {
  body: OverlayBody;
  /** Base image files, memory then disk. */
  base: [string, string];
  /** Where the store files go. */
  dir: string;
  /** A guest read needs this segment. */
  demand: (segment: number) => void;
  /** A held guest read went on after waiting this long. */
  unblocked?: (ms: number) => void;
  /** Worker threads for verify + decompress + apply. */
  threads: number;
}

export class LaunchImages {
  private constructor(
    readonly arrivals: ChunkArrivals,
    readonly memory: ImageFile,
    readonly disk: ImageFile,
    readonly applier: StreamApplier,
  ) {}

  /** Creates the store files and the pipeline; everything is released by `scope`. */
  static async create(opts: LaunchImageOptions, scope: Scope): Promise<LaunchImages> {
    const { body } = opts;
    const maps = [new ChunkMap(body.base.memory.bytes), new ChunkMap(body.base.disk.bytes)];
    const arrivals = new ChunkArrivals(maps, opts.demand, opts.unblocked);
    body.segments.forEach((s, si) => {
      for (let i = 0; i < s.count; i++) {
        const r = readRecord(s.chunks, i);
        arrivals.expect(r.image, r.index, si);
      }
    });
    const handles: FileHandle[] = [];
    scope.defer('close store and base files', () => Promise.all(handles.map((h) => h.close())));
    const open = async (file: string, flags: string) => {
      const h = await fsp.open(file, flags);
      handles.push(h);
      return h;
    };
    const store = [`${opts.dir}/memory.store`, `${opts.dir}/disk.store`];
    const storeHandles = [await open(store[0]!, 'w+'), await open(store[1]!, 'w+')];
    await storeHandles[0]!.truncate(body.base.memory.bytes);
    await storeHandles[1]!.truncate(body.base.disk.bytes);
    const baseHandles = [await open(opts.base[0], 'r'), await open(opts.base[1], 'r')];
    const image = (i: number, name: string) => new ImageFile(name, maps[i]!, {
      [ChunkSource.BASE]: fileReader(baseHandles[i]!, opts.base[i]!),
      [ChunkSource.ZERO]: zeroReader,
      [ChunkSource.OVERLAY]: fileReader(storeHandles[i]!, store[i]!),
    }, undefined, arrivals.gate(i));
    const applier = new StreamApplier({ segments: body.segments, base: [...opts.base], store, storeHandles, arrivals, threads: opts.threads });
    scope.defer('stop the apply workers', () => applier.close());
    return new LaunchImages(arrivals, image(0, 'memory.img'), image(1, 'disk.img'), applier);
  }
}
