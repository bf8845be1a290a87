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

async function readJson<T>(file: string): Promise<T | null> {
  try {
    return JSON.parse(await fsp.readFile(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

/** Removes `<app>-*` entries under `root` other than `keep` that are stale for `made`; returns them. */
export async function pruneAppEntries(root: string, app: string, keep: string, made: MadeOver): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await fsp.readdir(root).catch(() => [] as string[])) {
    if (!name.startsWith(`${app}-`) || name === keep) continue;
    const dir = path.join(root, name);
    const other = await readJson<MadeOver>(path.join(dir, MADE_OVER));
    if (!other) continue;
    if (other.baseDir !== made.baseDir) {
      const manifest = await readJson<{ memory?: { sha256?: string } }>(path.join(other.baseDir, 'manifest.json'));
      if (manifest?.memory?.sha256 === other.memorySha256) continue;
    }
    await fsp.rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}
