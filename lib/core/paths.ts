/**
 * Where vmsynth keeps things on the host. Each location can be moved with an
 * environment variable, so tests and ops can use their own directories.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULTS } from './defaults.js';

/** Session directories (FUSE mount points, QMP sockets, local disk overlays). */
export function runDir(): string {
  return path.resolve(process.env.VMSYNTH_RUN_DIR ?? DEFAULTS.runDir);
}

/** Base VM directories, one per base. */
export function baseDir(): string {
  return path.resolve(process.env.VMSYNTH_BASE_DIR ?? DEFAULTS.baseDir);
}

/** Build cache (test guest builds, downloaded Debian packages). */
export function cacheDir(): string {
  return path.resolve(process.env.VMSYNTH_CACHE_DIR ?? DEFAULTS.cacheDir);
}

/** Signing keys (private, 0600) and the public keys this host trusts (trusted/). */
export function keyDir(): string {
  return path.resolve(process.env.VMSYNTH_KEY_DIR ?? DEFAULTS.keyDir);
}

/** The cloudlet store (segment files and their SQLite index). */
export function storeDir(): string {
  return path.resolve(process.env.VMSYNTH_STORE_DIR ?? DEFAULTS.storeDir);
}

export function libvirtUri(): string {
  return process.env.LIBVIRT_URI ?? DEFAULTS.libvirtUri;
}

/** The installed vmsynth package's root (holds package.json and guest/), from source or from dist/. */
export function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'guest'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('cannot find the vmsynth package root');
    dir = up;
  }
}
