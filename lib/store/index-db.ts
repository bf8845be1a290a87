/**
 * The cloudlet store's index: one SQLite database (better-sqlite3, WAL) that
 * says which segments the store holds, which overlays name them, what is
 * pinned or leased by a running session, and the LRU order. It holds no
 * segment bytes (segment-store.ts keeps those in files) and does no file I/O
 * of its own, so its rules are tested exactly against an in-memory database.
 *
 * Rules:
 *   - a segment row is `ready` (its file is in place) or pending (a writer,
 *     named by PID, is putting it there); readers see only ready rows;
 *   - a segment's reference count is the number of stored overlays whose
 *     manifest names it; an overlay is protected while it is pinned or a
 *     live process holds a lease on it (a session using it), and so are
 *     all its segments;
 *   - eviction takes unprotected ready segments with no references first,
 *     then the rest by least recent use (`tick`, a counter bumped by every
 *     insert and every hit, so the order is exact, not clock-bound).
 */
import Database from 'better-sqlite3';
import { VmsynthError } from '../core/errors.js';
import { ChunkTable } from './chunk-table.js';

const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments(
  sha BLOB PRIMARY KEY,
  bytes INTEGER NOT NULL,
  ready INTEGER NOT NULL,
  writer INTEGER NOT NULL,
  tick INTEGER NOT NULL,
  added_at INTEGER NOT NULL,
  used_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS segments_tick ON segments(tick);
CREATE TABLE IF NOT EXISTS overlays(
  id BLOB PRIMARY KEY,
  key_id TEXT NOT NULL,
  base TEXT NOT NULL,
  created_at TEXT NOT NULL,
  segments INTEGER NOT NULL,
  bytes INTEGER NOT NULL,
  pinned INTEGER NOT NULL DEFAULT 0,
  added_at INTEGER NOT NULL,
  used_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS overlay_segments(
  overlay BLOB NOT NULL REFERENCES overlays(id) ON DELETE CASCADE,
  idx INTEGER NOT NULL,
  sha BLOB NOT NULL,
  PRIMARY KEY(overlay, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS overlay_segments_sha ON overlay_segments(sha);
-- The manifest as its client sent it (a handoff names the overlay by id, and the target reads it here).
CREATE TABLE IF NOT EXISTS manifests(
  overlay BLOB PRIMARY KEY REFERENCES overlays(id) ON DELETE CASCADE,
  bytes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS leases(
  overlay BLOB NOT NULL,
  holder TEXT NOT NULL,
  pid INTEGER NOT NULL,
  PRIMARY KEY(overlay, holder)
) WITHOUT ROWID;
`;

/** Counters kept in `meta`, across restarts. */
export const COUNTERS = [
  'hits',
  'misses',
  'hitBytes',
  'added',
  'evictions',
  'evictedBytes',
  'dropped',
  /** Chunks (and their payload bytes) lookaside took from stored segments instead of the link. */
  'chunkHits',
  'chunkHitBytes',
] as const;
export type Counter = (typeof COUNTERS)[number];

export interface OverlayRecord {
  id: Buffer;
  keyId: string;
  base: string;
  createdAt: string;
  /** Segment SHA-256s in manifest order. */
  segments: Buffer[];
  /** Compressed bytes of all its segments. */
  bytes: number;
  /** Its manifest as received, to keep. */
  manifest?: Uint8Array;
}

export interface OverlayRow {
  id: string;
  keyId: string;
  base: string;
  createdAt: string;
  segments: number;
  bytes: number;
  /** Of its segments, how many (and how many bytes) the store holds. */
  present: number;
  presentBytes: number;
  pinned: boolean;
  leases: number;
  addedAt: number;
  usedAt: number;
}

export interface SegmentRow {
  sha: Buffer;
  bytes: number;
}

export class StoreIndex {
  private readonly db: Database.Database;
  private readonly q;
  /** Which stored segment holds a chunk, by content digest (lookaside). */
  readonly chunks: ChunkTable;

  /** Opens (creating) the index at `file` (":memory:" for tests). */
  constructor(file: string) {
    try {
      this.db = new Database(file);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('busy_timeout = 5000');
      this.db.pragma('foreign_keys = ON');
      this.db.exec(SCHEMA);
      const v = this.db.prepare(`SELECT value FROM meta WHERE key = 'schema'`).get() as { value: number } | undefined;
      if (v && v.value !== SCHEMA_VERSION)
        throw new VmsynthError(
          'VMS_STORE',
          `the store index ${file} has schema ${v.value}; this vmsynth reads ${SCHEMA_VERSION}`,
        );
      this.db.prepare(`INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?), ('tick', 0)`).run(SCHEMA_VERSION);
    } catch (err) {
      if (err instanceof VmsynthError) throw err;
      throw new VmsynthError('VMS_STORE', `cannot open the store index ${file}: ${(err as Error).message}`, {
        cause: err,
        details: { file },
      });
    }
    const db = this.db;
    this.chunks = new ChunkTable(db);
    this.q = {
      tick: db.prepare(`UPDATE meta SET value = value + 1 WHERE key = 'tick' RETURNING value`),
      count: db.prepare(
        `INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value`,
      ),
      ready: db.prepare(`SELECT bytes FROM segments WHERE sha = ? AND ready = 1`),
      segment: db.prepare(`SELECT ready, writer FROM segments WHERE sha = ?`),
      claim: db.prepare(
        `INSERT INTO segments(sha, bytes, ready, writer, tick, added_at, used_at) VALUES (?, ?, 0, ?, ?, ?, ?)`,
      ),
      commit: db.prepare(`UPDATE segments SET ready = 1, tick = ?, used_at = ? WHERE sha = ? AND ready = 0`),
      touch: db.prepare(`UPDATE segments SET tick = ?, used_at = ? WHERE sha = ?`),
      remove: db.prepare(`DELETE FROM segments WHERE sha = ?`),
      total: db.prepare(`SELECT coalesce(sum(bytes), 0) AS bytes, count(*) AS n FROM segments`),
      pending: db.prepare(`SELECT sha, writer FROM segments WHERE ready = 0`),
      victims: db.prepare(`
        SELECT s.sha, s.bytes FROM segments s
        WHERE s.ready = 1 AND NOT EXISTS (
          SELECT 1 FROM overlay_segments os JOIN overlays o ON o.id = os.overlay
          WHERE os.sha = s.sha AND (o.pinned = 1 OR EXISTS (SELECT 1 FROM leases l WHERE l.overlay = o.id)))
        ORDER BY EXISTS (SELECT 1 FROM overlay_segments os WHERE os.sha = s.sha), s.tick`),
      refs: db.prepare(`SELECT count(DISTINCT overlay) AS n FROM overlay_segments WHERE sha = ?`),
      overlay: db.prepare(`SELECT id FROM overlays WHERE id = ?`),
      addOverlay: db.prepare(
        `INSERT INTO overlays(id, key_id, base, created_at, segments, bytes, added_at, used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      useOverlay: db.prepare(`UPDATE overlays SET used_at = ? WHERE id = ?`),
      addManifest: db.prepare(`INSERT OR IGNORE INTO manifests(overlay, bytes) VALUES (?, ?)`),
      manifest: db.prepare(`SELECT bytes FROM manifests WHERE overlay = ?`),
      addRef: db.prepare(`INSERT OR IGNORE INTO overlay_segments(overlay, idx, sha) VALUES (?, ?, ?)`),
      pin: db.prepare(`UPDATE overlays SET pinned = ? WHERE id = ?`),
      lease: db.prepare(`INSERT OR REPLACE INTO leases(overlay, holder, pid) VALUES (?, ?, ?)`),
      release: db.prepare(`DELETE FROM leases WHERE overlay = ? AND holder = ?`),
      leasePids: db.prepare(`SELECT DISTINCT pid FROM leases`),
      dropPid: db.prepare(`DELETE FROM leases WHERE pid = ?`),
      byPrefix: db.prepare(`SELECT id FROM overlays WHERE hex(id) LIKE ? ORDER BY id`),
      overlays: db.prepare(`
        SELECT o.id, o.key_id, o.base, o.created_at, o.segments, o.bytes, o.pinned, o.added_at, o.used_at,
          (SELECT count(*) FROM overlay_segments os JOIN segments s ON s.sha = os.sha AND s.ready = 1 WHERE os.overlay = o.id) AS present,
          (SELECT coalesce(sum(s.bytes), 0) FROM overlay_segments os JOIN segments s ON s.sha = os.sha AND s.ready = 1 WHERE os.overlay = o.id) AS present_bytes,
          (SELECT count(*) FROM leases l WHERE l.overlay = o.id) AS leases
        FROM overlays o ORDER BY o.used_at DESC, o.id`),
      emptyOverlays: db.prepare(`
        DELETE FROM overlays WHERE pinned = 0
          AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.overlay = overlays.id)
          AND NOT EXISTS (SELECT 1 FROM overlay_segments os JOIN segments s ON s.sha = os.sha WHERE os.overlay = overlays.id)
        RETURNING id`),
      allReady: db.prepare(`SELECT sha, bytes FROM segments WHERE ready = 1 ORDER BY tick`),
      counters: db.prepare(`SELECT key, value FROM meta`),
      has: db.prepare(`SELECT 1 FROM segments WHERE sha = ?`),
    };
  }

  private nextTick(): number {
    return (this.q.tick.get() as { value: number }).value;
  }

  count(counter: Counter, by = 1): void {
    this.q.count.run(counter, by);
  }

  /** The stored (ready) segment's size, or null. */
  ready(sha: Uint8Array): number | null {
    return (this.q.ready.get(sha) as { bytes: number } | undefined)?.bytes ?? null;
  }

  /** Whether the index has any row for `sha`, ready or pending. */
  known(sha: Uint8Array): boolean {
    return this.q.has.get(sha) !== undefined;
  }

  /** Marks a hit: the segment becomes the most recently used. */
  touch(sha: Uint8Array, now = Date.now()): void {
    this.q.touch.run(this.nextTick(), now, sha);
  }

  /**
   * Claims `sha` for writing by `writer` (a PID): a pending row the sweep can
   * undo if the writer dies. False when a row exists already (stored, or
   * another writer has it).
   */
  claim(sha: Uint8Array, bytes: number, writer: number, now = Date.now()): boolean {
    return this.db.transaction(() => {
      if (this.q.segment.get(sha)) return false;
      this.q.claim.run(sha, bytes, writer, this.nextTick(), now, now);
      return true;
    })();
  }

  /** The claimed segment's file is in place: readers may use it. */
  commit(sha: Uint8Array, now = Date.now()): void {
    this.db.transaction(() => {
      this.q.commit.run(this.nextTick(), now, sha);
      this.count('added');
    })();
  }

  /** Forgets a segment (its file is removed by the caller, after). */
  remove(sha: Uint8Array): void {
    this.q.remove.run(sha);
  }

  /** Pending rows: writers that may have died mid-insert. */
  pending(): { sha: Buffer; writer: number }[] {
    return this.q.pending.all() as { sha: Buffer; writer: number }[];
  }

  /** Bytes and count of every segment row (pending ones included: their bytes are being written). */
  totals(): { bytes: number; segments: number } {
    const r = this.q.total.get() as { bytes: number; n: number };
    return { bytes: r.bytes, segments: r.n };
  }

  /**
   * Picks segments to evict until `need` bytes are freed, in eviction order
   * (unreferenced first, then least recently used), skipping protected ones;
   * removes their rows and returns them. Returns null, removing nothing,
   * when the unprotected segments cannot free `need`.
   */
  evict(need: number): SegmentRow[] | null {
    if (need <= 0) return [];
    return this.db.transaction(() => {
      const picked: SegmentRow[] = [];
      let freed = 0;
      for (const row of this.q.victims.iterate() as Iterable<SegmentRow>) {
        if (freed >= need) break;
        picked.push(row);
        freed += row.bytes;
      }
      if (freed < need) return null;
      for (const r of picked) this.q.remove.run(r.sha);
      this.count('evictions', picked.length);
      this.count('evictedBytes', freed);
      return picked;
    })();
  }

  /** Ready segments in eviction order, protected ones excluded (for tests and `store ls --segments`). */
  evictionOrder(): SegmentRow[] {
    return this.q.victims.all() as SegmentRow[];
  }

  /** How many stored overlays name `sha`. */
  refs(sha: Uint8Array): number {
    return (this.q.refs.get(sha) as { n: number }).n;
  }

  /** Records an overlay and the segments its manifest names (idempotent); marks it used. */
  addOverlay(o: OverlayRecord, now = Date.now()): void {
    this.db.transaction(() => {
      if (this.q.overlay.get(o.id)) this.q.useOverlay.run(now, o.id);
      else {
        this.q.addOverlay.run(o.id, o.keyId, o.base, o.createdAt, o.segments.length, o.bytes, now, now);
        o.segments.forEach((sha, i) => this.q.addRef.run(o.id, i, sha));
      }
      if (o.manifest) this.q.addManifest.run(o.id, o.manifest);
    })();
  }

  /** The manifest kept for overlay `id`, or null. */
  manifest(id: Uint8Array): Buffer | null {
    return (this.q.manifest.get(id) as { bytes: Buffer } | undefined)?.bytes ?? null;
  }

  hasOverlay(id: Uint8Array): boolean {
    return this.q.overlay.get(id) !== undefined;
  }

  setPinned(id: Uint8Array, pinned: boolean): boolean {
    return this.q.pin.run(pinned ? 1 : 0, id).changes > 0;
  }

  lease(id: Uint8Array, holder: string, pid = process.pid): void {
    this.q.lease.run(id, holder, pid);
  }

  release(id: Uint8Array, holder: string): void {
    this.q.release.run(id, holder);
  }

  /** Drops the leases of processes `alive` says are gone (and this process's, on `own`). */
  dropLeases(alive: (pid: number) => boolean, own = false): number {
    let n = 0;
    for (const { pid } of this.q.leasePids.all() as { pid: number }[])
      if ((own && pid === process.pid) || (pid !== process.pid && !alive(pid))) n += this.q.dropPid.run(pid).changes;
    return n;
  }

  /** Overlay ids whose hex form starts with `prefix`. */
  overlaysByPrefix(prefix: string): Buffer[] {
    return (this.q.byPrefix.all(`${prefix.toUpperCase()}%`) as { id: Buffer }[]).map((r) => r.id);
  }

  overlays(): OverlayRow[] {
    type Raw = {
      id: Buffer;
      key_id: string;
      base: string;
      created_at: string;
      segments: number;
      bytes: number;
      pinned: number;
      added_at: number;
      used_at: number;
      present: number;
      present_bytes: number;
      leases: number;
    };
    return (this.q.overlays.all() as Raw[]).map((r) => ({
      id: r.id.toString('hex'),
      keyId: r.key_id,
      base: r.base,
      createdAt: r.created_at,
      segments: r.segments,
      bytes: r.bytes,
      present: r.present,
      presentBytes: r.present_bytes,
      pinned: r.pinned === 1,
      leases: r.leases,
      addedAt: r.added_at,
      usedAt: r.used_at,
    }));
  }

  /** Removes overlays with no stored segment that nothing pins or leases; returns how many. */
  dropEmptyOverlays(): number {
    return this.q.emptyOverlays.all().length;
  }

  /** Every ready segment, least recently used first. */
  allReady(): SegmentRow[] {
    return this.q.allReady.all() as SegmentRow[];
  }

  counters(): Record<Counter, number> {
    const out = Object.fromEntries(COUNTERS.map((c) => [c, 0])) as Record<Counter, number>;
    for (const r of this.q.counters.all() as { key: string; value: number }[])
      if ((COUNTERS as readonly string[]).includes(r.key)) out[r.key as Counter] = r.value;
    return out;
  }

  close(): void {
    this.db.close();
  }
}
