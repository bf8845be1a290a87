/**
 * The FUSE rig of the early-start tests that need no VM: a generated base
 * "gen" with a signed overlay of small segments, and launch images over it
 * mounted through FUSE, torn down by the caller's scope.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Scope } from '../../lib/core/scope.js';
import { ImageMount } from '../../lib/fs/fuse-images.js';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { generateKey, loadSigningKey } from '../../lib/overlay/keys.js';
import { Overlay, type SegmentFile } from '../../lib/overlay/reader.js';
import { LaunchImages } from '../../lib/synth/launch-images.js';
import { loadBase } from '../../lib/vm/base.js';
import { generatePair, type GeneratedPair } from './images.js';

export interface GeneratedOverlay {
  pair: GeneratedPair;
  overlay: Overlay;
  segFile: SegmentFile;
}

/** Base "gen" (1024 memory and 512 disk chunks, every kind of change) and its overlay in 16 KiB segments, under `root`. */
export async function generatedOverlay(root: string): Promise<GeneratedOverlay> {
  const pair = await generatePair(process.env.VMSYNTH_BASE_DIR!, 'gen', path.join(root, 'custom'), {
    memChunks: 1024,
    diskChunks: 512,
    each: 24,
  });
  await generateKey();
  const out = path.join(root, 'ov');
  await buildOverlay({
    base: baseInput(await loadBase('gen')),
    custom: pair.custom,
    appPort: 8000,
    key: await loadSigningKey(),
    out,
    segmentBytes: 16 << 10,
  });
  const overlay = await Overlay.open(out, { trusted: null });
  return { pair, overlay, segFile: overlay.segmentFile() };
}

/** Launch images of `overlay` over base "gen" in `dir`, mounted at dir/mnt; held reads fail and the mount goes when `scope` closes. */
export async function mountLaunchImages(
  scope: Scope,
  dir: string,
  overlay: Overlay,
  demand: (segment: number) => void,
): Promise<{ launch: LaunchImages; mount: ImageMount }> {
  await fsp.mkdir(dir, { recursive: true });
  const base = await loadBase('gen');
  const launch = await LaunchImages.create(
    { body: overlay.body, base: [base.file('memory'), base.file('disk')], dir, demand, threads: 2 },
    scope,
  );
  const mount = await ImageMount.mount(path.join(dir, 'mnt'), [launch.memory, launch.disk]);
  scope.defer('unmount', () => mount.unmount());
  scope.defer('fail held reads', () => launch.failHeldReads());
  return { launch, mount };
}
