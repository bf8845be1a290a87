/**
 * The benches' signing key, kept with their cached overlays, and opening a
 * cached overlay only if it verifies against that key.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { generateKey, loadSigningKey, type SigningKey } from '../../lib/overlay/keys.js';
import { Overlay } from '../../lib/overlay/reader.js';

/** A signing key and the path of its public key (for a server's trust list). */
export type BenchKey = SigningKey & { pubFile: string };

/** The bench's signing key in `<root>/keys` (created on first use). */
export async function benchKey(root: string): Promise<BenchKey> {
  const dir = path.join(root, 'keys');
  const keys = (await fsp.readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.key'));
  if (keys.length === 0) await generateKey(dir);
  const key = await loadSigningKey(undefined, dir);
  return { ...key, pubFile: path.join(dir, `${key.keyId}.pub`) };
}

/** The trust map that accepts exactly `key`. */
export const trustedBy = (key: SigningKey): Map<string, Buffer> => new Map([[key.keyId, key.publicKeyRaw]]);

/**
 * The overlay in `dir` if it opens and verifies against `key`, else null;
 * with `tables`, also null when it was built before segments signed their
 * digest tables (no chunk lookaside: build it again).
 */
export async function openIfValid(
  dir: string,
  key: SigningKey,
  opts: { tables?: boolean } = {},
): Promise<Overlay | null> {
  const o = await Overlay.open(dir, { trusted: trustedBy(key) }).catch(() => null);
  if (o && opts.tables && o.body.segments.some((s) => !s.tableSha256)) return null;
  return o;
}
