/**
 * The cloudlet store: overlay segments kept on this cloudlet, content
 * addressed by the SHA-256 their signed manifest names, so a second
 * synthesis of an overlay (or of another overlay sharing a segment) takes
 * them from here instead of over the client's link.
 *
 * Layout under `dir`: index.sqlite (index-db.ts), segments/<2 hex>/<64 hex>
 * (a segment's compressed bytes, exactly as received) and tmp/ (files being
 * written, named <64 hex>.<pid>).
 *
 * Crash safety: an insert claims a pending row (naming its PID) before it
 * writes, writes tmp/, renames into segments/, then marks the row ready. A
 * removal deletes the row, then the file. So a process killed anywhere
 * leaves a pending row of a dead writer, a tmp file of a dead PID, or a file
 * with no row; `open` undoes all three. Bytes read back are NOT verified
 * here: every consumer checks them against the SHA-256 they are keyed by
 * before use (a session through the segment pipeline's openSegment, exactly
 * as a received segment; `verify` itself), and drops an entry that fails.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import { processAlive } from '../core/stale.js';
import { sha256 } from '../overlay/chunk-io.js';
import { decodeEnvelope } from '../overlay/manifest.js';
import type { Overlay } from '../overlay/reader.js';
import type { ChunkLocation, ChunkRow } from './chunk-table.js';
import { StoreIndex, type Counter, type OverlayRow } from './index-db.js';

export interface StoreOptions {
  dir: string;
  /** The cap on stored segment bytes; inserts evict down to it, and are skipped when they cannot. */
  maxBytes: number;
}

export interface StoreStats {
  dir: string;
  maxBytes: number;
  bytes: number;
  segments: number;
  overlays: number;
  pinned: number;
  hits: number;
  misses: number;
  /** hits / (hits + misses), or null before any lookup. */
  hitRatio: number | null;
  /** Segment bytes sessions took from the store instead of their client's link. */
  bytesSaved: number;
  added: number;
  evictions: number;
  evictedBytes: number;
  /** Entries dropped because they failed their check or their file was gone. */
  dropped: number;
  /** Chunk lookaside: chunks the index names, and how many (and how many payload bytes) sessions took from stored segments instead of the link. */
  chunks: number;
  chunkHits: number;
  chunkBytesSaved: number;
}

export interface GcReport {
  evicted: number;
  evictedBytes: number;
  orphanFiles: number;
  overlaysRemoved: number;
}

export interface VerifyReport {
  checked: number;
  bytes: number;
  /** SHA-256s (hex) of the entries that failed and were dropped. */
  dropped: string[];
}

/** Test failpoints: `VMSYNTH_STORE_CRASH=<point>` kills the process at that step of an insert (the crash test). */
function failpoint(point: 'claimed' | 'written' | 'renamed'): void {
  if (process.env.VMSYNTH_STORE_CRASH === point) process.kill(process.pid, 'SIGKILL');
}

const hex = (sha: Uint8Array): string => Buffer.from(sha).toString('hex');

/** The store's id for an overlay: the SHA-256 of its signed manifest body. */
export function overlayId(overlay: Overlay): Buffer {
  return sha256(overlay.envelope.body);
}

/** The same id, from the manifest's bytes alone (not checked: whoever reads it admits it first). */
export function manifestOverlayId(manifest: Uint8Array): Buffer {
  return sha256(decodeEnvelope(manifest).body);
}

export class SegmentStore {
  private constructor(
    readonly dir: string,
    readonly maxBytes: number,
    readonly index: StoreIndex,
  ) {}

  /** Opens (creating) the store at `opts.dir` and undoes what killed writers left. */
  static async open(opts: StoreOptions): Promise<SegmentStore> {
    const dir = path.resolve(opts.dir);
    try {
      await fsp.mkdir(path.join(dir, 'segments'), { recursive: true, mode: 0o750 });
      await fsp.mkdir(path.join(dir, 'tmp'), { recursive: true, mode: 0o750 });
    } catch (err) {
      throw new VmsynthError('VMS_STORE', `cannot create the store directory ${dir}: ${(err as Error).message}`, {
        cause: err,
        details: { dir },
      });
    }
    const store = new SegmentStore(dir, opts.maxBytes, new StoreIndex(path.join(dir, 'index.sqlite')));
    try {
      await store.recover();
    } catch (err) {
      store.close();
      throw err;
    }
    return store;
  }

  segmentPath(sha: Uint8Array): string {
    const h = hex(sha);
    return path.join(this.dir, 'segments', h.slice(0, 2), h);
  }

  private tmpPath(sha: Uint8Array, pid = process.pid): string {
    return path.join(this.dir, 'tmp', `${hex(sha)}.${pid}`);
  }

  /** Undoes the inserts of writers that died, and their tmp files; drops leases of processes that are gone. */
  private async recover(): Promise<void> {
    this.index.dropLeases(processAlive);
    for (const p of this.index.pending()) {
      if (p.writer === process.pid || processAlive(p.writer)) continue;
      this.index.remove(p.sha);
      await fsp.rm(this.segmentPath(p.sha), { force: true });
      await fsp.rm(this.tmpPath(p.sha, p.writer), { force: true });
      publish('staleCleaned', { kind: 'store insert', what: hex(p.sha) });
    }
    for (const name of await fsp.readdir(path.join(this.dir, 'tmp'))) {
      const pid = Number(/\.(\d+)$/.exec(name)?.[1] ?? 0);
      if (pid && (pid === process.pid || processAlive(pid))) continue;
      await fsp.rm(path.join(this.dir, 'tmp', name), { force: true });
    }
    await this.removeOrphans();
  }

  /**
   * Removes files under segments/ the index does not know (a removal killed
   * between row and file, or anything else put there): not named by a known
   * SHA-256 in the directory of its first two hex digits, or not in a
   * directory at all. Returns how many.
   */
  private async removeOrphans(): Promise<number> {
    let n = 0;
    const root = path.join(this.dir, 'segments');
    for (const sub of await fsp.readdir(root, { withFileTypes: true })) {
      if (!sub.isDirectory()) {
        await fsp.rm(path.join(root, sub.name), { force: true });
        n++;
        continue;
      }
      for (const name of await fsp.readdir(path.join(root, sub.name)).catch(() => [] as string[])) {
        const known =
          /^[0-9a-f]{64}$/.test(name) && name.startsWith(sub.name) && this.index.known(Buffer.from(name, 'hex'));
        if (known) continue;
        await fsp.rm(path.join(root, sub.name, name), { recursive: true, force: true });
        n++;
      }
    }
    return n;
  }

  /** Whether the store holds the segment with this SHA-256. */
  has(sha: Uint8Array): boolean {
    return this.index.ready(sha) !== null;
  }

  /**
   * The stored segment's bytes, UNVERIFIED (the caller checks them against
   * `sha` before use, and calls `drop` when they fail), or null when the
   * store does not hold it. A hit makes it the most recently used.
   */
  async read(sha: Uint8Array): Promise<Buffer | null> {
    if (!this.has(sha)) return null;
    let data: Buffer;
    try {
      data = await fsp.readFile(this.segmentPath(sha));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      await this.drop(sha, 'file missing');
      return null;
    }
    this.index.touch(sha);
    return data;
  }

  /**
   * Stores a segment whose bytes the caller has verified against `sha`.
   * Evicts least recently used unprotected segments to stay under the cap;
   * returns false (storing nothing) when it is stored already, being
   * stored, or cannot fit.
   */
  async put(sha: Uint8Array, data: Uint8Array): Promise<boolean> {
    if (data.length > this.maxBytes || !this.index.claim(sha, data.length, process.pid)) return false;
    failpoint('claimed');
    const file = this.segmentPath(sha);
    const tmp = this.tmpPath(sha);
    try {
      const over = this.index.totals().bytes - this.maxBytes;
      const evicted = this.index.evict(over);
      if (evicted === null) {
        this.index.remove(sha);
        return false;
      }
      for (const e of evicted) {
        await fsp.rm(this.segmentPath(e.sha), { force: true });
        publish('storeEvicted', { sha256: hex(e.sha), bytes: e.bytes });
      }
      await fsp.writeFile(tmp, data, { mode: 0o640 });
      failpoint('written');
      await fsp.mkdir(path.dirname(file), { recursive: true });
      await fsp.rename(tmp, file);
      failpoint('renamed');
      this.index.commit(sha);
    } catch (err) {
      this.index.remove(sha);
      await fsp.rm(tmp, { force: true });
      await fsp.rm(file, { force: true });
      throw new VmsynthError('VMS_STORE', `cannot store segment ${hex(sha)}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    publish('storeAdded', { sha256: hex(sha), bytes: data.length });
    return true;
  }

  /** Forgets an entry that failed its check (or whose file is gone), and removes its file. */
  async drop(sha: Uint8Array, reason: string): Promise<void> {
    this.index.remove(sha);
    this.index.count('dropped');
    publish('storeDropped', { sha256: hex(sha), reason });
    await fsp.rm(this.segmentPath(sha), { force: true });
  }

  /** Names the payload chunks of stored segment `sha` (over base `base`), for lookaside; nothing when it is not stored. */
  indexChunks(sha: Uint8Array, base: string, rows: readonly ChunkRow[]): void {
    if (this.has(sha)) this.index.chunks.add(sha, base, rows);
  }

  /** Whether the index names any chunk (lookaside can find something). */
  namesChunks(): boolean {
    return this.index.chunks.any();
  }

  /** Whether the chunks of stored segment `sha` are named already. */
  chunksIndexed(sha: Uint8Array): boolean {
    return this.index.chunks.indexed(sha);
  }

  /** Where a stored segment holds a chunk with this content digest, or null. */
  findChunk(digest: Uint8Array): ChunkLocation | null {
    return this.index.chunks.find(digest);
  }

  count(counter: Counter, by = 1): void {
    if (by > 0) this.index.count(counter, by);
  }

  /** Records an overlay (admitted: signed by a trusted key), the segments it names and its manifest as received; returns its id. */
  addOverlay(overlay: Overlay, manifest?: Uint8Array): Buffer {
    const id = overlayId(overlay);
    const body = overlay.body;
    this.index.addOverlay({
      id,
      keyId: overlay.keyId,
      base: body.base.name,
      createdAt: body.createdAt,
      segments: body.segments.map((s) => Buffer.from(s.sha256)),
      bytes: overlay.segmentsBytes,
      ...(manifest ? { manifest } : {}),
    });
    return id;
  }

  /** The manifest of stored overlay `id` as it was received, or null (none kept). */
  manifest(id: Uint8Array): Buffer | null {
    return this.index.manifest(id);
  }

  /** Protects an overlay's segments from eviction until the returned function is called. */
  lease(id: Uint8Array, holder: string): () => void {
    this.index.lease(id, holder);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.index.release(id, holder);
    };
  }

  /** The one overlay whose id starts with `prefix` (hex, at least 8 digits). */
  resolve(prefix: string): Buffer {
    if (!/^[0-9a-fA-F]{8,64}$/.test(prefix))
      throw new VmsynthError('VMS_USAGE', `"${prefix.slice(0, 80)}" is not an overlay id (8 to 64 hex digits)`);
    const ids = this.index.overlaysByPrefix(prefix);
    if (ids.length === 0)
      throw new VmsynthError('VMS_STORE_NOT_FOUND', `no stored overlay has an id starting ${prefix}`);
    if (ids.length > 1)
      throw new VmsynthError(
        'VMS_USAGE',
        `${ids.length} stored overlays have ids starting ${prefix}; give more digits`,
      );
    return ids[0]!;
  }

  /** Pins (or unpins) an overlay: its segments are never evicted while pinned. */
  pin(prefix: string, pinned = true): string {
    const id = this.resolve(prefix);
    this.index.setPinned(id, pinned);
    return id.toString('hex');
  }

  overlays(): OverlayRow[] {
    return this.index.overlays();
  }

  /** Evicts down to `targetBytes` (default: the cap), removes orphan files and overlays with nothing stored. */
  async gc(targetBytes = this.maxBytes): Promise<GcReport> {
    this.index.dropLeases(processAlive);
    const over = this.index.totals().bytes - targetBytes;
    // Whatever can go, when not all of `over` can.
    const evicted = this.index.evict(over) ?? this.index.evict(sumBytes(this.index.evictionOrder())) ?? [];
    for (const e of evicted) {
      await fsp.rm(this.segmentPath(e.sha), { force: true });
      publish('storeEvicted', { sha256: hex(e.sha), bytes: e.bytes });
    }
    const orphanFiles = await this.removeOrphans();
    return {
      evicted: evicted.length,
      evictedBytes: sumBytes(evicted),
      orphanFiles,
      overlaysRemoved: this.index.dropEmptyOverlays(),
    };
  }

  /** Reads every stored segment and checks it against its SHA-256; drops those that fail. */
  async verify(onProgress?: (done: number, total: number) => void): Promise<VerifyReport> {
    const rows = this.index.allReady();
    const report: VerifyReport = { checked: 0, bytes: 0, dropped: [] };
    for (const r of rows) {
      const data = await fsp.readFile(this.segmentPath(r.sha)).catch(() => null);
      if (!data || !sha256(data).equals(r.sha)) {
        await this.drop(r.sha, data ? 'sha256' : 'file missing');
        report.dropped.push(hex(r.sha));
      }
      report.checked++;
      report.bytes += data?.length ?? 0;
      onProgress?.(report.checked, rows.length);
    }
    return report;
  }

  stats(): StoreStats {
    const t = this.index.totals();
    const c = this.index.counters();
    const overlays = this.index.overlays();
    const lookups = c.hits + c.misses;
    return {
      dir: this.dir,
      maxBytes: this.maxBytes,
      bytes: t.bytes,
      segments: t.segments,
      overlays: overlays.length,
      pinned: overlays.filter((o) => o.pinned).length,
      hits: c.hits,
      misses: c.misses,
      hitRatio: lookups ? c.hits / lookups : null,
      bytesSaved: c.hitBytes,
      added: c.added,
      evictions: c.evictions,
      evictedBytes: c.evictedBytes,
      dropped: c.dropped,
      chunks: this.index.chunks.count(),
      chunkHits: c.chunkHits,
      chunkBytesSaved: c.chunkHitBytes,
    };
  }

  close(): void {
    this.index.close();
  }
}

function sumBytes(rows: { bytes: number }[]): number {
  return rows.reduce((a, r) => a + r.bytes, 0);
}
