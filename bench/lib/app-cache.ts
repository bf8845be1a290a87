/**
 * The suite's per-app cache entries (<cache>/bench/suite/<app>-<id>/). Each
 * records the base it was made over (made-over.json). Preparing an app
 * removes its other entries that are stale: made over the same base
 * directory (replaced by this one), or over a base that is gone. An entry
 * over another live base (the quick test's own base, a developer's) stays.
 * Entries without the record, from older suites, are left alone.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { loadBase } from '../../lib/vm/base.js';

export const MADE_OVER = 'made-over.json';

export interface MadeOver {
  baseDir: string;
  memorySha256: string;
}

/** Records the base an entry was made over (creates the entry's directory). */
export async function markEntry(dir: string, made: MadeOver): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  await fsp.writeFile(path.join(dir, MADE_OVER), JSON.stringify(made) + '\n');
}

/** The memory image hash of the base in `dir`, or null when no loadable base is there. */
function liveBaseSha(dir: string): Promise<string | null> {
  return loadBase(dir).then(
    (b) => b.manifest.memory.sha256,
    () => null,
  );
}

/** Removes `<app>-*` entries under `root` other than `keep` that are stale for `made`; returns them. */
export async function pruneAppEntries(
  root: string,
  app: string,
  keep: string,
  made: MadeOver,
  baseSha = liveBaseSha,
): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await fsp.readdir(root).catch(() => [] as string[])) {
    if (!name.startsWith(`${app}-`) || name === keep) continue;
    const dir = path.join(root, name);
    const other = JSON.parse(
      await fsp.readFile(path.join(dir, MADE_OVER), 'utf8').catch(() => 'null'),
    ) as MadeOver | null;
    if (!other) continue;
    if (other.baseDir !== made.baseDir && (await baseSha(other.baseDir)) === other.memorySha256) continue;
    await fsp.rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}
