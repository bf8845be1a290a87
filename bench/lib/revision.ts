/**
 * Another revision of vmsynth's apply path, built beside this one so a bench
 * measures before and after in one run (BENCH_OVERLAY_BASELINE=<git rev>).
 *
 * `git archive` writes the revision's lib/ and tsconfig.json into a temp
 * directory (the repository itself is not touched), node_modules is linked
 * to ours, and tsc builds it. Its offline apply is then loaded in this
 * process: lib/overlay/image-rebuild.js (paths) where it has one, else the
 * older lib/overlay/applier.js (open files).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { exec } from '../../lib/core/exec.js';
import { packageRoot } from '../../lib/core/paths.js';

export interface ApplyStats {
  ms: number;
  imageBytes: number;
  compressedBytes: number;
}

/** Applies the overlay in `dir` onto copies of base (memory, disk) in out, with `threads` workers. */
export type ApplyFn = (
  dir: string,
  base: [string, string],
  out: [string, string],
  threads: number,
) => Promise<ApplyStats>;

export interface Revision {
  /** The commit it resolved to. */
  commit: string;
  apply: ApplyFn;
}

/** Builds `rev` under `tmp` and loads its offline apply. */
export async function loadRevision(rev: string, tmp: string): Promise<Revision> {
  const root = packageRoot();
  const commit = (await exec('git', ['-C', root, 'rev-parse', '--verify', `${rev}^{commit}`])).stdout.trim();
  const dir = path.join(tmp, `rev-${commit.slice(0, 12)}`);
  await fsp.mkdir(dir, { recursive: true });
  await exec('bash', [
    '-c',
    'git -C "$1" archive "$2" lib tsconfig.json package.json | tar -x -C "$3"',
    'archive',
    root,
    commit,
    dir,
  ]);
  await fsp.symlink(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
  await exec(path.join(root, 'node_modules', '.bin', 'tsc'), ['-p', dir]);
  // The revision's modules, typed as the parts this uses (older revisions take open files, newer ones paths).
  const mod = <T>(rel: string): Promise<T> =>
    import(pathToFileURL(path.join(dir, 'dist', 'lib', 'overlay', rel)).href) as Promise<T>;
  type Opened = object;
  type Apply<F> = (overlay: Opened, base: F, out: F, opts: { threads: number }) => Promise<ApplyStats>;
  interface OpenFile {
    close(): void;
  }
  const { Overlay } = await mod<{ Overlay: { open(dir: string, opts: { trusted: null }): Promise<Opened> } }>(
    'reader.js',
  );
  const open = (d: string) => Overlay.open(d, { trusted: null });
  const hasRebuild = await fsp.stat(path.join(dir, 'dist', 'lib', 'overlay', 'image-rebuild.js')).then(
    () => true,
    () => false,
  );
  if (hasRebuild) {
    const { applyToImages } = await mod<{ applyToImages: Apply<[string, string]> }>('image-rebuild.js');
    return { commit, apply: async (d, base, out, threads) => applyToImages(await open(d), base, out, { threads }) };
  }
  const { applyToImages } = await mod<{ applyToImages: Apply<OpenFile[]> }>('applier.js');
  const { ChunkFile } = await mod<{ ChunkFile: new (file: string, flags: 'r' | 'r+') => OpenFile }>('chunk-io.js');
  return {
    commit,
    apply: async (d, base, out, threads) => {
      const files = [...base, ...out].map((f, i) => new ChunkFile(f, i < 2 ? 'r' : 'r+'));
      try {
        return await applyToImages(await open(d), files.slice(0, 2), files.slice(2), { threads });
      } finally {
        for (const f of files) f.close();
      }
    },
  };
}
