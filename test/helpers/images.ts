/**
 * Generated base and custom images with known patterns, for overlay tests
 * and benches: a fake base directory (manifest.json, images, a dummy kernel
 * and initrd) and a custom VM that differs from it by zeroed chunks, copies
 * of base memory and base disk chunks, self duplicates, small edits and
 * random chunks.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { generateKey, loadSigningKey } from '../../lib/overlay/keys.js';
import { loadBase, type Base } from '../../lib/vm/base.js';
import type { BaseManifest } from '../../lib/vm/base-manifest.js';
import { BASE_FORMAT } from '../../lib/vm/base-manifest.js';

const CHUNK = 4096;

/** xorshift32: deterministic bytes. */
export function prng(seed: number): (buf: Buffer) => void {
  let s = seed >>> 0 || 1;
  return (buf: Buffer) => {
    for (let i = 0; i + 4 <= buf.length; i += 4) {
      s ^= s << 13;
      s >>>= 0;
      s ^= s >>> 17;
      s ^= s << 5;
      s >>>= 0;
      buf.writeUInt32LE(s, i);
    }
  };
}

export interface GeneratedPair {
  baseDir: string;
  custom: { memory: string; disk: string; deviceState: string };
  /** What was changed, by kind, in chunks. */
  planted: { zero: number; baseMem: number; baseDisk: number; selfDup: number; edit: number; random: number };
}

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

export async function writeBaseDir(dir: string, name: string, memory: Buffer, disk: Buffer): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  const state = Buffer.from('device state of ' + name);
  const files = {
    'memory.raw': memory,
    'disk.raw': disk,
    'device.state': state,
    vmlinuz: Buffer.from('kernel'),
    'initrd.img': Buffer.from('initrd'),
  };
  for (const [f, b] of Object.entries(files)) await fsp.writeFile(path.join(dir, f), b);
  const d = (file: string, b: Buffer) => ({ file, bytes: b.length, sha256: sha(b) });
  const m: BaseManifest = {
    format: BASE_FORMAT,
    name,
    chunkSize: CHUNK,
    disk: d('disk.raw', disk),
    memory: d('memory.raw', memory),
    deviceState: d('device.state', state),
    kernel: d('vmlinuz', files.vmlinuz),
    initrd: d('initrd.img', files['initrd.img']),
    vm: {
      accel: 'tcg',
      cpu: 'maximum',
      machine: 'pc-q35-7.2',
      vcpus: 1,
      memoryMiB: Math.max(1, memory.length >> 20),
      cmdline: 'x',
      mac: '52:54:00:00:00:01',
      appPort: 8000,
      devices: [],
    },
    created: {
      at: new Date(0).toISOString(),
      host: 'test',
      qemu: 'none',
      vmsynth: 'test',
      source: { kind: 'generated' },
      bootMs: 0,
    },
  };
  await fsp.writeFile(path.join(dir, 'manifest.json'), JSON.stringify(m, null, 2));
}

/**
 * Writes base `name` into `basesDir` and a custom VM into `customDir`.
 * Sizes in chunks; every change kind is planted `each` times (memory and disk).
 */
export async function generatePair(
  basesDir: string,
  name: string,
  customDir: string,
  opts: { memChunks: number; diskChunks: number; each: number; seed?: number },
): Promise<GeneratedPair> {
  const fill = prng(opts.seed ?? 7);
  const memory = Buffer.alloc(opts.memChunks * CHUNK);
  const disk = Buffer.alloc(opts.diskChunks * CHUNK);
  fill(memory);
  // The disk is half data, half zeros (as a fresh filesystem is).
  fill(disk.subarray(0, disk.length >> 1));
  const cm = Buffer.from(memory);
  const cd = Buffer.from(disk);
  const chunk = (b: Buffer, i: number) => b.subarray(i * CHUNK, (i + 1) * CHUNK);
  const planted = { zero: 0, baseMem: 0, baseDisk: 0, selfDup: 0, edit: 0, random: 0 };
  const rnd = Buffer.alloc(CHUNK);
  let m = 1;
  let k = 1;
  const nextMem = () => (m += 3) % opts.memChunks;
  const nextDisk = () => (k += 5) % (opts.diskChunks >> 1);
  for (let n = 0; n < opts.each; n++) {
    chunk(cm, nextMem()).fill(0);
    planted.zero++;
    chunk(cd, nextDisk()).fill(0);
    planted.zero++;
    chunk(memory, (n * 7 + 2) % opts.memChunks).copy(chunk(cm, nextMem()));
    planted.baseMem++;
    chunk(disk, (n * 11 + 3) % (opts.diskChunks >> 1)).copy(chunk(cm, nextMem()));
    planted.baseDisk++;
    chunk(memory, (n * 13 + 5) % opts.memChunks).copy(chunk(cd, nextDisk()));
    planted.baseMem++;
    fill(rnd);
    rnd.copy(chunk(cm, nextMem()));
    rnd.copy(chunk(cd, nextDisk()));
    planted.selfDup++;
    rnd.copy(chunk(cm, nextMem()));
    planted.selfDup++;
    const e = chunk(cm, nextMem());
    e.writeUInt8(e.readUInt8(100) ^ 0xff, 100);
    e.writeUInt8(e.readUInt8(2000) ^ 1, 2000);
    planted.edit++;
    fill(rnd);
    rnd.copy(chunk(cd, nextDisk()));
    planted.random++;
    // A brand new chunk in the zero half of the disk (XOR cannot help there).
    fill(rnd);
    rnd.copy(chunk(cd, (opts.diskChunks >> 1) + (n % (opts.diskChunks >> 1))));
    planted.random++;
  }
  await writeBaseDir(path.join(basesDir, name), name, memory, disk);
  await fsp.mkdir(customDir, { recursive: true });
  const custom = {
    memory: path.join(customDir, 'memory.raw'),
    disk: path.join(customDir, 'disk.raw'),
    deviceState: path.join(customDir, 'device.state'),
  };
  await fsp.writeFile(custom.memory, cm);
  await fsp.writeFile(custom.disk, cd);
  await fsp.writeFile(custom.deviceState, Buffer.from('device state of the custom VM ' + 'x'.repeat(5000)));
  return { baseDir: path.join(basesDir, name), custom, planted };
}

/**
 * A generated base `name` and custom VM (generatePair, the custom VM under
 * `customDir`), a signing key, and a builder of overlays over that base
 * (64 KiB segments), for tests that build several overlays over one base.
 */
export async function generatedOverlays(
  name: string,
  customDir: string,
  opts: { memChunks: number; diskChunks: number; each: number; seed?: number },
): Promise<{
  pair: GeneratedPair;
  base: Base;
  build(custom: GeneratedPair['custom'], out: string): Promise<unknown>;
}> {
  const pair = await generatePair(process.env.VMSYNTH_BASE_DIR!, name, customDir, opts);
  await generateKey();
  const key = await loadSigningKey();
  const base = await loadBase(name);
  const build = (custom: GeneratedPair['custom'], out: string) =>
    buildOverlay({ base: baseInput(base), custom, appPort: 8000, key, out, segmentBytes: 64 << 10 });
  return { pair, base, build };
}
