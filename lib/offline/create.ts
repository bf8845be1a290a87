/**
 * `vmsynth overlay create`: customize a base into a custom VM, then build
 * the overlay from it. The custom VM's images live in a work directory next
 * to the output, removed at the end (or kept, with keepCustom, for tests and
 * for re-packing later).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { VmsynthError } from '../core/errors.js';
import { customizeBase, type Copy, type CustomVm } from '../vm/customize.js';
import { baseInput, buildOverlay, type BuildOrder, type BuildResult } from '../overlay/builder.js';
import { loadSigningKey } from '../overlay/keys.js';
import { claimOutput } from '../core/stale.js';

export interface CreateOverlayOptions {
  base: string;
  out: string;
  script?: string;
  copies?: Copy[];
  /** Key file or id (default: the only key in the key directory). */
  key?: string;
  segmentBytes?: number;
  zstdLevel?: number;
  order?: BuildOrder;
  dropCaches?: boolean;
  reportFreePages?: boolean;
  /** Keep the custom VM's images (memory.raw, disk.raw, device.state) in this directory. */
  keepCustom?: string;
  force?: boolean;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface CreateOverlayResult extends BuildResult {
  custom: Pick<CustomVm, 'domain' | 'trimmed' | 'ms' | 'scriptOutput' | 'freePages'> & { kept: string | null };
}

export async function createOverlay(opts: CreateOverlayOptions): Promise<CreateOverlayResult> {
  const key = await loadSigningKey(opts.key);
  const out = path.resolve(opts.out);
  if (opts.keepCustom && (await fsp.stat(opts.keepCustom).catch(() => null)))
    throw new VmsynthError('VMS_OVERLAY_EXISTS', `${opts.keepCustom} already exists`);
  const work = await claimOutput(out, 'work', opts.force);
  try {
    const custom = await customizeBase({
      base: opts.base,
      script: opts.script,
      copies: opts.copies,
      workDir: work,
      dropCaches: opts.dropCaches,
      reportFreePages: opts.reportFreePages,
      timeoutMs: opts.timeoutMs,
      signal: opts.signal,
    });
    const built = await buildOverlay({
      base: baseInput(custom.base),
      custom,
      appPort: custom.base.manifest.vm.appPort,
      trimmed: custom.trimmed,
      order: opts.order,
      segmentBytes: opts.segmentBytes,
      zstdLevel: opts.zstdLevel,
      key,
      out,
      force: opts.force,
      signal: opts.signal,
    });
    let kept: string | null = null;
    if (opts.keepCustom) {
      kept = path.resolve(opts.keepCustom);
      await fsp.rename(work, kept);
    }
    return {
      ...built,
      custom: {
        domain: custom.domain,
        trimmed: custom.trimmed,
        ms: custom.ms,
        scriptOutput: custom.scriptOutput,
        freePages: custom.freePages,
        kept,
      },
    };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}
