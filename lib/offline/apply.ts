/**
 * Offline synthesis and verification of overlays (the `overlay apply` and
 * `overlay verify` commands), over a local base.
 *
 * `applyOverlay` writes a directory in the base format (disk.raw,
 * memory.raw, device.state, kernel, initrd, manifest.json): the launch VM,
 * resumable with `vmsynth base resume --base DIR`. It is built under a
 * temporary name and renamed into place only when complete.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { publish } from '../core/diagnostics.js';
import { exec } from '../core/exec.js';
import { sha256File } from '../core/hash.js';
import { VMSYNTH_VERSION } from '../core/version.js';
import { findBaseWithImages, loadBase, verifyBase, type Base } from '../vm/base.js';
import type { BaseManifest } from '../vm/base-manifest.js';
import { applyToImages, verifyChunks, type LoopStats } from '../overlay/image-rebuild.js';
import { trustedKeys } from '../overlay/keys.js';
import { Overlay } from '../overlay/reader.js';
import { claimOutput } from '../core/stale.js';

export interface TrustOptions {
  /** Extra trusted public key files (besides the key directory's trusted/). */
  trust?: string[];
}

/** The base named (it must be the one the overlay was made against), or else the local base with the overlay's disk and memory. */
export async function baseFor(overlay: Overlay, name?: string): Promise<Base> {
  if (!name) return findBaseWithImages(overlay.body.base);
  const base = await loadBase(name);
  overlay.checkBase(base);
  return base;
}

export async function openTrusted(dir: string, opts: TrustOptions): Promise<Overlay> {
  return Overlay.open(dir, { trusted: await trustedKeys(opts.trust ?? []) });
}

export interface ApplyOptions extends TrustOptions {
  overlay: string;
  base?: string;
  out: string;
  force?: boolean;
  /** Re-hash the base files first (default true). */
  verifyBase?: boolean;
  threads?: number;
  signal?: AbortSignal;
}

export interface ApplyResult {
  out: string;
  base: string;
  keyId: string;
  apply: LoopStats & { mbps: number };
  memory: { bytes: number; sha256: string };
  disk: { bytes: number; sha256: string };
  ms: { verifyBase: number | null; copy: number; apply: number; hash: number; total: number };
}

export async function applyOverlay(opts: ApplyOptions): Promise<ApplyResult> {
  const t0 = performance.now();
  const overlay = await openTrusted(opts.overlay, opts);
  const base = await baseFor(overlay, opts.base);
  let verifyMs: number | null = null;
  if (opts.verifyBase ?? true) verifyMs = (await verifyBase(base, opts.signal)).ms;
  const out = path.resolve(opts.out);
  const tmp = await claimOutput(out, 'tmp', opts.force);
  try {
    const tCopy = performance.now();
    publish('progress', { step: `overlay apply: copying base "${base.name}" into ${tmp}` });
    for (const key of ['disk', 'memory'] as const) {
      await exec('cp', ['--sparse=always', '--reflink=auto', base.file(key), path.join(tmp, `${key}.raw`)]);
    }
    await fsp.copyFile(base.file('kernel'), path.join(tmp, base.manifest.kernel.file));
    await fsp.copyFile(base.file('initrd'), path.join(tmp, base.manifest.initrd.file));
    const deviceState = overlay.deviceState();
    await fsp.writeFile(path.join(tmp, 'device.state'), deviceState);
    const tApply = performance.now();

    publish('progress', { step: `overlay apply: ${overlay.body.segments.length} segments` });
    const stats = await applyToImages(
      overlay,
      [base.file('memory'), base.file('disk')],
      [path.join(tmp, 'memory.raw'), path.join(tmp, 'disk.raw')],
      { threads: opts.threads, signal: opts.signal },
    );
    const tHash = performance.now();

    publish('progress', { step: 'overlay apply: hashing the synthesized images' });
    const memory = {
      bytes: base.manifest.memory.bytes,
      sha256: await sha256File(path.join(tmp, 'memory.raw'), opts.signal),
    };
    const disk = { bytes: base.manifest.disk.bytes, sha256: await sha256File(path.join(tmp, 'disk.raw'), opts.signal) };
    const m = base.manifest;
    const manifest: BaseManifest = {
      ...m,
      name: path.basename(out),
      memory: { ...m.memory, file: 'memory.raw', ...memory },
      disk: { ...m.disk, file: 'disk.raw', ...disk },
      deviceState: { file: 'device.state', bytes: deviceState.length, sha256: overlay.body.deviceState.sha256 },
      vm: { ...m.vm, appPort: overlay.body.vm.appPort },
      created: {
        ...m.created,
        at: new Date().toISOString(),
        vmsynth: VMSYNTH_VERSION,
        source: {
          kind: 'synthesized',
          overlay: overlay.dir,
          keyId: overlay.keyId,
          base: base.name,
          overlayCreatedAt: overlay.body.createdAt,
        },
      },
    };
    await fsp.writeFile(path.join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
    if (opts.force) await fsp.rm(out, { recursive: true, force: true });
    await fsp.rename(tmp, out);
    const tEnd = performance.now();
    return {
      out,
      base: base.name,
      keyId: overlay.keyId,
      apply: { ...stats, mbps: stats.imageBytes / 1e6 / (stats.ms / 1000 || 1e-9) },
      memory,
      disk,
      ms: {
        verifyBase: verifyMs,
        copy: Math.round(tApply - tCopy),
        apply: Math.round(tHash - tApply),
        hash: Math.round(tEnd - tHash),
        total: Math.round(tEnd - t0),
      },
    };
  } catch (err) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

export interface VerifyOverlayOptions extends TrustOptions {
  overlay: string;
  base?: string;
  threads?: number;
  signal?: AbortSignal;
}

export interface VerifyOverlayResult {
  ok: true;
  overlay: string;
  keyId: string;
  base: string;
  segments: number;
  chunks: number;
  ms: number;
}

/** Signature by a trusted key, base match (re-hashed), every segment's SHA-256 and every digest its segments carry (BASE, XOR and RAW chunks). */
export async function verifyOverlay(opts: VerifyOverlayOptions): Promise<VerifyOverlayResult> {
  const t0 = performance.now();
  const overlay = await openTrusted(opts.overlay, opts);
  const base = await baseFor(overlay, opts.base);
  await verifyBase(base, opts.signal);
  overlay.deviceState();
  const stats = await verifyChunks(overlay, [base.file('memory'), base.file('disk')], {
    threads: opts.threads,
    signal: opts.signal,
  });
  return {
    ok: true,
    overlay: overlay.dir,
    keyId: overlay.keyId,
    base: base.name,
    segments: stats.segments,
    chunks: stats.chunks,
    ms: Math.round(performance.now() - t0),
  };
}
