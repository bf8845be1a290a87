/**
 * Overlays and bases to and from an object store (`vmsynth overlay push`,
 * `vmsynth base push` and `base pull`), so a fleet of cloudlets shares them.
 *
 * An overlay goes up as its two files, segments first and the manifest last:
 * a reader that finds the manifest finds segments that match it. A base goes
 * up as the five files its manifest names and then manifest.json, last for
 * the same reason. A pulled base is written beside its final place
 * (`<name>.tmp-<pid>`), hashed against its manifest, then renamed into the
 * base directory: a base that arrives damaged never appears.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { VmsynthError } from '../core/errors.js';
import { baseDir } from '../core/paths.js';
import { claimOutput } from '../core/stale.js';
import { MANIFEST_FILE, SEGMENTS_FILE } from '../overlay/format.js';
import { Overlay } from '../overlay/reader.js';
import { ObjectStore, parseS3Url, s3Url } from '../store/object-store.js';
import { checkBaseName, loadBase, verifyBase } from '../vm/base.js';

export interface TransferOptions {
  objects: ObjectStore;
  /** Bytes done of the file being sent or fetched. */
  onProgress?: (file: string, done: number, total: number) => void;
  signal?: AbortSignal;
}

const BASE_FILES = ['kernel', 'initrd', 'disk', 'memory', 'deviceState'] as const;

/** Uploads an overlay directory (checked first: a whole, self-consistently signed overlay) to `url`. */
export async function pushOverlay(
  dir: string,
  url: string,
  o: TransferOptions,
): Promise<{ url: string; bytes: number }> {
  const loc = parseS3Url(url);
  const overlay = await Overlay.open(dir, { trusted: null });
  for (const name of [SEGMENTS_FILE, MANIFEST_FILE])
    await o.objects.putFile(loc, name, path.join(overlay.dir, name), (d, t) => o.onProgress?.(name, d, t), o.signal);
  return { url: s3Url(loc), bytes: overlay.segmentsBytes + overlay.manifestBytes };
}

/** Uploads local base `name` (its files as its manifest names them, manifest.json last) to `url`. */
export async function pushBase(name: string, url: string, o: TransferOptions): Promise<{ url: string; bytes: number }> {
  const loc = parseS3Url(url);
  const base = await loadBase(name);
  let bytes = 0;
  for (const key of BASE_FILES) {
    const file = base.manifest[key].file;
    await o.objects.putFile(loc, file, base.file(key), (d, t) => o.onProgress?.(file, d, t), o.signal);
    bytes += base.manifest[key].bytes;
  }
  await o.objects.putFile(loc, 'manifest.json', path.join(base.dir, 'manifest.json'), undefined, o.signal);
  return { url: s3Url(loc), bytes };
}

/**
 * Downloads the base at `url` into the base directory as `name` (default:
 * the name its manifest gives), checked against its manifest's hashes
 * before it appears there.
 */
export async function pullBase(
  url: string,
  o: TransferOptions & { name?: string; force?: boolean },
): Promise<{ name: string; dir: string; bytes: number }> {
  const loc = parseS3Url(url);
  if (o.name) checkBaseName(o.name);
  const manifestText = (await o.objects.get(loc, 'manifest.json', undefined, o.signal)).toString('utf8');
  let named: string;
  try {
    const n = (JSON.parse(manifestText) as { name?: unknown }).name;
    named = typeof n === 'string' ? n : '';
  } catch (cause) {
    throw new VmsynthError('VMS_BASE_CORRUPT', `${s3Url(loc)}/manifest.json is not JSON`, { cause });
  }
  const name = o.name ?? named;
  checkBaseName(name);
  const out = path.join(baseDir(), name);
  if (!o.force && (await fsp.stat(out).catch(() => null)))
    throw new VmsynthError('VMS_BASE_EXISTS', `base "${name}" already exists at ${out}`, { details: { dir: out } });
  await fsp.mkdir(baseDir(), { recursive: true });
  const tmp = await claimOutput(out, 'tmp', true);
  try {
    const files = JSON.parse(manifestText) as Record<string, unknown> & Record<string, { file?: unknown }>;
    // The name is the directory's; the identity is the hashes (overlays name their base by those).
    await fsp.writeFile(path.join(tmp, 'manifest.json'), JSON.stringify({ ...files, name }, null, 2) + '\n');
    let bytes = 0;
    for (const key of BASE_FILES) {
      const file = files[key]?.file;
      if (typeof file !== 'string' || file.includes('/') || file.startsWith('.'))
        throw new VmsynthError('VMS_BASE_CORRUPT', `${s3Url(loc)}/manifest.json names no ${key} file`);
      await o.objects.getFile(loc, file, path.join(tmp, file), (d, t) => o.onProgress?.(file, d, t), o.signal);
    }
    const base = await loadBase(tmp);
    await verifyBase(base, o.signal);
    for (const key of BASE_FILES) bytes += base.manifest[key].bytes;
    if (o.force) await fsp.rm(out, { recursive: true, force: true });
    await fsp.rename(tmp, out);
    return { name, dir: out, bytes };
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}
