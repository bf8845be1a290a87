/**
 * The store's chunk index, for lookaside across overlays: which stored
 * segment holds a chunk with a given content digest, and where in it. A
 * table of the store's SQLite database (index-db.ts); its rows go when their
 * segment's row goes (a foreign key, ON DELETE CASCADE), so an evicted or
 * dropped segment is never named.
 *
 * A row names the payload slot in the stored segment's raw bytes, and how
 * the payload makes the content: RAW (the payload is the content) or XOR
 * (payload XOR the chunk at image/index of the base named by `base`). What a
 * row leads to is checked against the digest before use, like any chunk.
 */
import type Database from 'better-sqlite3';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS chunks(
  digest BLOB PRIMARY KEY,
  segment BLOB NOT NULL REFERENCES segments(sha) ON DELETE CASCADE,
  slot INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  base TEXT NOT NULL,
  image INTEGER NOT NULL,
  idx INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_segment ON chunks(segment);
`;

/** Where a stored chunk is: its segment, payload slot, and how its payload makes its content. */
export interface ChunkLocation {
  segment: Buffer;
  slot: number;
  /** ChunkKind.XOR or ChunkKind.RAW. */
  kind: number;
  /** The base an XOR payload is against (base-manifest identity); a RAW chunk's content needs none. */
  base: string;
  image: number;
  index: number;
}

export interface ChunkRow {
  digest: Uint8Array;
  slot: number;
  kind: number;
  image: number;
  index: number;
}

export class ChunkTable {
  private readonly q;

  constructor(private readonly db: Database.Database) {
    db.exec(SCHEMA);
    this.q = {
      add: db.prepare(
        `INSERT OR IGNORE INTO chunks(digest, segment, slot, kind, base, image, idx) VALUES (?, ?, ?, ?, ?, ?, ?)`,
      ),
      find: db.prepare(
        `SELECT c.segment, c.slot, c.kind, c.base, c.image, c.idx AS "index" FROM chunks c
         JOIN segments s ON s.sha = c.segment AND s.ready = 1 WHERE c.digest = ?`,
      ),
      count: db.prepare(`SELECT count(*) AS n FROM chunks`),
      any: db.prepare(`SELECT 1 FROM chunks LIMIT 1`),
      indexed: db.prepare(`SELECT 1 FROM chunks WHERE segment = ? LIMIT 1`),
    };
  }

  /** Names the payload chunks of stored segment `segment` (over base `base`); a digest already named elsewhere keeps its row. */
  add(segment: Uint8Array, base: string, rows: readonly ChunkRow[]): void {
    this.db.transaction(() => {
      for (const r of rows) this.q.add.run(r.digest, segment, r.slot, r.kind, base, r.image, r.index);
    })();
  }

  /** Where a ready stored segment holds a chunk with this digest, or null. */
  find(digest: Uint8Array): ChunkLocation | null {
    return (this.q.find.get(digest) as ChunkLocation | undefined) ?? null;
  }

  /** Whether any chunk of segment `segment` is named. */
  indexed(segment: Uint8Array): boolean {
    return this.q.indexed.get(segment) !== undefined;
  }

  count(): number {
    return (this.q.count.get() as { n: number }).n;
  }

  /** Whether any chunk is named (cheaper than count() on a big store). */
  any(): boolean {
    return this.q.any.get() !== undefined;
  }
}
