/**
 * Where a module that runs outside the calling thread's loader lives: a worker
 * thread or a child process gets plain Node, not the TypeScript loader the
 * tests run lib/ under. Run from dist/, the compiled module beside the
 * caller; run from the TypeScript sources, the one in dist/, which must be
 * built after the last change under lib/ (bootstrap builds it before npm test
 * and test:unit).
 */
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { VmsynthError } from './errors.js';

const resolved = new Map<string, URL>();

/**
 * The compiled module `rel` (a path under lib/, ending in .js) for a caller
 * at `callerUrl` (its import.meta.url); `what` names it in the error when the
 * build is missing or stale.
 */
export function compiledModule(callerUrl: string, rel: string, what: string): URL {
  const key = `${callerUrl}\0${rel}`;
  const known = resolved.get(key);
  if (known) return known;
  const here = fileURLToPath(callerUrl);
  const lib = libRoot(here);
  let url: URL;
  if (!here.endsWith('.ts')) {
    url = pathToFileURL(path.join(lib, rel));
  } else {
    const compiled = path.join(lib, '..', 'dist', 'lib', rel);
    // tsc rewrites every output it emits, so a compiled module is as new as the last build.
    const built = statSync(compiled, { throwIfNoEntry: false })?.mtimeMs ?? 0;
    if (built === 0 || newestUnder(lib) > built) {
      throw new VmsynthError(
        'VMS_INTERNAL',
        `the compiled ${what} (${compiled}) is missing or older than lib/: run \`npm run build\` (npm test and npm run test:unit build it first)`,
      );
    }
    url = pathToFileURL(compiled);
  }
  resolved.set(key, url);
  return url;
}

/** The lib/ directory a module file sits under. */
function libRoot(file: string): string {
  let dir = path.dirname(file);
  while (path.basename(dir) !== 'lib') {
    const up = path.dirname(dir);
    if (up === dir) throw new VmsynthError('VMS_INTERNAL', `${file} is not under a lib/ directory`);
    dir = up;
  }
  return dir;
}

/** The newest modification time of any file under `dir`. */
function newestUnder(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestUnder(p) : statSync(p).mtimeMs);
  }
  return newest;
}
