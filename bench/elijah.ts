/**
 * Elijah's overlay scheme, re-run on our chunks for a size comparison: the
 * same dedup (zero, base memory, base disk, self: Elijah had all four), and
 * every other chunk as the smaller of an xdelta3 delta against the base
 * chunk at the same offset or the raw chunk, as items with a small header,
 * the whole compressed with xz (Debian's xdelta3 and xz-utils, as
 * processes; -B/-W only shrink buffers, not output; -D -R: a chunk that happens to
 * start with gzip's magic must not be handed to gzip). One xz stream over everything favours Elijah slightly (it cut
 * blobs); its msgpack metadata is not counted.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ChunkFile } from '../lib/overlay/chunk-io.js';
import { ChunkKind } from '../lib/overlay/format.js';
import { readRecord } from '../lib/overlay/records.js';
import type { Overlay } from '../lib/overlay/reader.js';

export interface ElijahSize {
  bytes: number;
  items: number;
  xdeltaItems: number;
  rawItems: number;
  ms: number;
}

export function elijahSize(
  overlay: Overlay,
  base: { memory: string; disk: string },
  custom: { memory: string; disk: string },
  xzLevel = 6,
): ElijahSize {
  const t0 = performance.now();
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'vmsynth-elijah-'));
  const files = [
    new ChunkFile(base.memory),
    new ChunkFile(base.disk),
    new ChunkFile(custom.memory),
    new ChunkFile(custom.disk),
  ];
  const parts: Buffer[] = [];
  let items = 0;
  let xdeltaItems = 0;
  let rawItems = 0;
  try {
    // Pass 1: write each payload chunk and its base chunk to files; one shell per CPU runs xdelta3
    // over its share of them (a process per chunk spawned from Node costs ~50 ms here; from sh,
    // ~1 ms; the face app has 246,488 such chunks).
    mkdirSync(path.join(tmp, 'c'));
    const records = overlay.body.segments.flatMap((s) =>
      Array.from({ length: s.count }, (_, i) => readRecord(s.chunks, i)),
    );
    let n = 0;
    for (const r of records) {
      if (r.kind !== ChunkKind.XOR && r.kind !== ChunkKind.RAW) continue;
      writeFileSync(path.join(tmp, 'c', `${n}.s`), files[r.image]!.chunk(r.index));
      writeFileSync(path.join(tmp, 'c', `${n}.t`), files[2 + r.image]!.chunk(r.index));
      n++;
    }
    const workers = Math.max(1, Math.min(os.cpus().length, n));
    const worker = (w: number) =>
      `( i=${w}; while [ $i -lt ${n} ]; do xdelta3 -e -9 -A -D -R -f -B 524288 -W 16384 -s $i.s $i.t $i.d || exit 1; i=$((i+${workers})); done ) & pids="$pids $!"`;
    execFileSync('sh', [
      '-c',
      `cd "$1" || exit 1; pids=; ${Array.from({ length: workers }, (_, w) => worker(w)).join('; ')}; rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc`,
      'sh',
      path.join(tmp, 'c'),
    ]);
    // Pass 2: the items, in overlay order.
    n = 0;
    for (const r of records) {
      const head = Buffer.alloc(11);
      head.writeBigUInt64LE(BigInt(r.index * 4096), 0);
      head[8] = r.image * 8 + r.kind;
      items++;
      if (r.kind === ChunkKind.XOR || r.kind === ChunkKind.RAW) {
        const content = readFileSync(path.join(tmp, 'c', `${n}.t`));
        const delta = readFileSync(path.join(tmp, 'c', `${n}.d`));
        n++;
        const body = delta.length < content.length ? delta : content;
        if (body === delta) xdeltaItems++;
        else rawItems++;
        head.writeUInt16LE(body.length, 9);
        parts.push(head, body);
      } else {
        // A reference: Elijah's item carries the referenced offset.
        const ref = Buffer.alloc(8);
        ref.writeBigUInt64LE(BigInt(r.refIndex * 4096));
        parts.push(head, r.kind === ChunkKind.ZERO ? Buffer.alloc(0) : ref);
      }
    }
    const xz = execFileSync('xz', [`-${xzLevel}`, '-c', '-T1'], { input: Buffer.concat(parts), maxBuffer: 1 << 30 });
    return { bytes: xz.length, items, xdeltaItems, rawItems, ms: performance.now() - t0 };
  } finally {
    for (const f of files) f.close();
    rmSync(tmp, { recursive: true, force: true });
  }
}
