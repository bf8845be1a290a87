/**
 * Checking the local bases' hashes: each base once per server (later checks
 * share the first), and all of them before `vmsynth serve` listens.
 */
import { publish } from '../core/diagnostics.js';
import { listBases, loadBase, verifyBase, type Base } from '../vm/base.js';

/** Hashes each base once per server (keyed by directory and capture time): later checks share the first. */
export function baseChecker(): (base: Base) => Promise<void> {
  const verified = new Map<string, Promise<void>>();
  return (base) => {
    const key = `${base.dir}\0${base.manifest.created.at}`;
    let p = verified.get(key);
    if (!p) {
      p = verifyBase(base).then(() => undefined);
      p.catch(() => undefined);
      verified.set(key, p);
    }
    return p;
  };
}

/** Hashes every local base now, publishing each result (`vmsynth serve` does this before it listens). */
export async function checkAllBases(checkBase: (base: Base) => Promise<void>): Promise<void> {
  for (const entry of await listBases()) {
    if (!entry.ok) {
      publish('baseChecked', { base: entry.name, ok: false, error: entry.error });
      continue;
    }
    const t0 = performance.now();
    const base = await loadBase(entry.dir);
    const error = await checkBase(base).then(
      () => undefined,
      (e: unknown) => e,
    );
    publish('baseChecked', {
      base: entry.name,
      ok: !error,
      ms: Math.round(performance.now() - t0),
      ...(error ? { error } : {}),
    });
  }
}
