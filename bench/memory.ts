/**
 * `npm run bench -- memory`: a ~1 GB overlay must build and apply on a 2 GB
 * host. Each step runs in a child process confined to a memory cgroup of
 * BENCH_MEMORY_LIMIT_MIB (default 2048; cgroup v2 or v1, whichever this host
 * has), which counts page cache too. The overlay is BENCH_MEMORY_OVERLAY_MIB
 * (default 1024) of incompressible new disk data plus a rewritten eighth of
 * memory. Reported: whether each step finished inside the limit, its peak
 * RSS, and the ratio of peak RSS to overlay bytes (the baseline: a builder
 * or reader that holds the overlay, as Elijah's did, needs at least 1.0).
 */
import { spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, existsSync, openSync, promises as fsp, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { exec } from '../lib/core/exec.js';
import { sha256File } from '../lib/core/hash.js';
import { packageRoot } from '../lib/core/paths.js';
import { generateKey } from '../lib/overlay/keys.js';
import { BASE_FORMAT, type BaseManifest } from '../lib/vm/base-manifest.js';
import { fillChunky } from './fill.js';

const MIB = 1 << 20;
const LIMIT_MIB = Number(process.env.BENCH_MEMORY_LIMIT_MIB ?? 2048);
const OVERLAY_MIB = Number(process.env.BENCH_MEMORY_OVERLAY_MIB ?? 1024);

interface Cgroup {
  dir: string;
  version: 1 | 2;
  /** Peak usage, page cache included. */
  peakBytes(): Promise<number | null>;
  oomKills(): Promise<number | null>;
  remove(): Promise<void>;
}

async function readNumber(file: string): Promise<number | null> {
  const t = await fsp.readFile(file, 'utf8').catch(() => null);
  return t === null ? null : Number(t.trim());
}

async function statField(file: string, key: string): Promise<number | null> {
  const t = await fsp.readFile(file, 'utf8').catch(() => '');
  const m = new RegExp(`^${key} (\\d+)$`, 'm').exec(t);
  return m ? Number(m[1]) : null;
}

/** A fresh memory cgroup with the limit, under cgroup v2 if it has the memory controller, else v1. */
async function makeCgroup(limitBytes: number): Promise<Cgroup> {
  const name = `vmsynth-bench-${process.pid}`;
  for (const root of ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
    const controllers = await fsp.readFile(path.join(root, 'cgroup.controllers'), 'utf8').catch(() => '');
    if (!controllers.split(/\s+/).includes('memory')) continue;
    const dir = path.join(root, name);
    await fsp.mkdir(dir);
    await fsp.writeFile(path.join(dir, 'memory.max'), String(limitBytes));
    await fsp.writeFile(path.join(dir, 'memory.swap.max'), '0').catch(() => undefined);
    return {
      dir,
      version: 2,
      peakBytes: () => readNumber(path.join(dir, 'memory.peak')),
      oomKills: () => statField(path.join(dir, 'memory.events'), 'oom_kill'),
      remove: () => fsp.rmdir(dir),
    };
  }
  const v1 = '/sys/fs/cgroup/memory';
  if (!existsSync(path.join(v1, 'memory.limit_in_bytes')))
    throw new Error('no memory cgroup controller on this host (neither cgroup v2 nor v1): cannot confine the bench');
  const dir = path.join(v1, name);
  await fsp.mkdir(dir);
  await fsp.writeFile(path.join(dir, 'memory.limit_in_bytes'), String(limitBytes));
  await fsp.writeFile(path.join(dir, 'memory.memsw.limit_in_bytes'), String(limitBytes)).catch(() => undefined);
  return {
    dir,
    version: 1,
    peakBytes: () => readNumber(path.join(dir, 'memory.max_usage_in_bytes')),
    oomKills: () => statField(path.join(dir, 'memory.oom_control'), 'oom_kill'),
    remove: () => fsp.rmdir(dir),
  };
}

/** Runs the child step inside the cgroup: the shell moves itself in, then execs node. */
function confined(
  cg: Cgroup,
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  const child = path.join(path.dirname(fileURLToPath(import.meta.url)), 'memory-child.js');
  return new Promise((resolve, reject) => {
    const p = spawn(
      'sh',
      ['-c', `echo $$ > "${cg.dir}/cgroup.procs" && exec "$0" "$@"`, process.execPath, child, ...args],
      { env, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

function writeData(fd: number, fromMib: number, mib: number, fill: (b: Buffer) => void): void {
  const block = Buffer.allocUnsafe(MIB);
  for (let m = 0; m < mib; m++) {
    fill(block);
    writeSync(fd, block, 0, MIB, (fromMib + m) * MIB);
  }
}

async function describe(file: string, name: string) {
  return { file: name, bytes: (await fsp.stat(file)).size, sha256: await sha256File(file) };
}

async function generate(tmp: string) {
  const memMib = 256;
  const diskMib = Math.max(512, OVERLAY_MIB * 2);
  const baseDir = path.join(tmp, 'base');
  const customDir = path.join(tmp, 'custom');
  await fsp.mkdir(baseDir);
  await fsp.mkdir(customDir);
  process.stderr.write(
    `memory bench: generating a base (${memMib} MiB memory, ${diskMib} MiB disk) and a custom VM with ${OVERLAY_MIB} MiB of new disk data\n`,
  );
  let fd = openSync(path.join(baseDir, 'memory.raw'), 'w');
  writeData(fd, 0, memMib, fillChunky);
  closeSync(fd);
  fd = openSync(path.join(baseDir, 'disk.raw'), 'w');
  writeData(fd, 0, 128, fillChunky);
  closeSync(fd);
  await fsp.truncate(path.join(baseDir, 'disk.raw'), diskMib * MIB);
  await fsp.writeFile(path.join(baseDir, 'device.state'), Buffer.alloc(300 << 10, 7));
  await fsp.writeFile(
    path.join(baseDir, 'vmlinuz'),
    'not a kernel: this base only feeds the overlay builder and applier',
  );
  await fsp.writeFile(path.join(baseDir, 'initrd.img'), 'not an initrd');
  const manifest: BaseManifest = {
    format: BASE_FORMAT,
    name: 'membench',
    chunkSize: 4096,
    disk: await describe(path.join(baseDir, 'disk.raw'), 'disk.raw'),
    memory: await describe(path.join(baseDir, 'memory.raw'), 'memory.raw'),
    deviceState: await describe(path.join(baseDir, 'device.state'), 'device.state'),
    kernel: await describe(path.join(baseDir, 'vmlinuz'), 'vmlinuz'),
    initrd: await describe(path.join(baseDir, 'initrd.img'), 'initrd.img'),
    vm: {
      accel: 'tcg',
      cpu: 'maximum',
      machine: 'pc-q35-7.2',
      vcpus: 1,
      memoryMiB: memMib,
      cmdline: 'x',
      mac: '52:54:00:00:00:01',
      appPort: 8000,
      devices: [],
    },
    created: {
      at: new Date().toISOString(),
      host: os.hostname(),
      qemu: 'none',
      vmsynth: 'bench',
      source: { kind: 'generated' },
      bootMs: 0,
    },
  };
  await fsp.writeFile(path.join(baseDir, 'manifest.json'), JSON.stringify(manifest, null, 2));

  const custom = {
    memory: path.join(customDir, 'memory.raw'),
    disk: path.join(customDir, 'disk.raw'),
    deviceState: path.join(customDir, 'device.state'),
  };
  for (const k of ['memory', 'disk'] as const)
    await exec('cp', ['--sparse=always', path.join(baseDir, `${k}.raw`), custom[k]]);
  await fsp.writeFile(custom.deviceState, Buffer.alloc(300 << 10, 9));
  fd = openSync(custom.memory, 'r+');
  for (let m = 0; m < memMib; m += 8) writeData(fd, m, 1, fillChunky);
  closeSync(fd);
  fd = openSync(custom.disk, 'r+');
  writeData(fd, diskMib - OVERLAY_MIB, OVERLAY_MIB, (b) => randomFillSync(b));
  closeSync(fd);
  return { baseDir, custom };
}

export async function benchMemory(): Promise<void> {
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-bench-memory-'));
  let cg: Cgroup | null = null;
  try {
    const env = { ...process.env, VMSYNTH_KEY_DIR: path.join(tmp, 'keys') };
    const saved = process.env.VMSYNTH_KEY_DIR;
    process.env.VMSYNTH_KEY_DIR = env.VMSYNTH_KEY_DIR;
    await generateKey().finally(() => {
      process.env.VMSYNTH_KEY_DIR = saved;
    });
    const { baseDir, custom } = await generate(tmp);
    const overlay = path.join(tmp, 'overlay');
    const steps: Record<
      string,
      {
        ok: boolean;
        ms?: number;
        maxRssMiB?: number;
        cgroupPeakMiB: number | null;
        oomKills: number | null;
        error?: string;
        [k: string]: unknown;
      }
    > = {};
    let overlayBytes = 0;
    for (const op of ['build', 'apply'] as const) {
      cg = await makeCgroup(LIMIT_MIB * MIB);
      process.stderr.write(`memory bench: ${op} inside a ${LIMIT_MIB} MiB memory cgroup (v${cg.version})\n`);
      const r = await confined(
        cg,
        [op, JSON.stringify({ base: baseDir, custom, overlay, out: path.join(tmp, 'synth') })],
        env,
      );
      const peak = await cg.peakBytes();
      const step = {
        ok: r.code === 0,
        cgroupPeakMiB: peak === null ? null : Math.round(peak / MIB),
        oomKills: await cg.oomKills(),
      };
      await cg.remove();
      cg = null;
      if (r.code !== 0) {
        steps[op] = {
          ...step,
          error: r.signal
            ? `killed by ${r.signal}`
            : `exit ${r.code}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`,
        };
        break;
      }
      const out = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as {
        ms: number;
        maxRssMiB: number;
        overlayBytes?: number;
      };
      if (out.overlayBytes) overlayBytes = out.overlayBytes;
      steps[op] = { ...step, ...out };
    }
    const identical = steps.apply?.ok
      ? (await exec('cmp', [path.join(tmp, 'synth', 'disk.raw'), custom.disk]).then(
          () => true,
          () => false,
        )) &&
        (await exec('cmp', [path.join(tmp, 'synth', 'memory.raw'), custom.memory]).then(
          () => true,
          () => false,
        ))
      : false;
    const ratio = (s?: { maxRssMiB?: number }) =>
      s?.maxRssMiB && overlayBytes ? +((s.maxRssMiB * MIB) / overlayBytes).toFixed(3) : null;
    const result = {
      bench: 'memory',
      at: new Date().toISOString(),
      limitMiB: LIMIT_MIB,
      overlayMiB: +(overlayBytes / MIB).toFixed(1),
      buildWithinLimit: !!steps.build?.ok,
      applyWithinLimit: !!steps.apply?.ok,
      applyIdentical: identical,
      peakRssVsOverlay: { build: ratio(steps.build), apply: ratio(steps.apply) },
      steps,
    };
    const outDir = path.join(packageRoot(), 'bench', 'results');
    await fsp.mkdir(outDir, { recursive: true });
    const file = path.join(outDir, `memory-${result.at.replace(/[:.]/g, '-')}.json`);
    await fsp.writeFile(file, JSON.stringify(result, null, 2) + '\n');
    console.log(`memory benchmark: a ${result.overlayMiB} MiB overlay under a ${LIMIT_MIB} MiB memory cgroup`);
    for (const [op, s] of Object.entries(steps)) {
      console.log(
        s.ok
          ? `  ${op.padEnd(5)} ok in ${((s.ms ?? 0) / 1000).toFixed(1)} s, peak RSS ${s.maxRssMiB} MiB (${op === 'build' ? result.peakRssVsOverlay.build : result.peakRssVsOverlay.apply} of the overlay; baseline holding it: >= 1.0), cgroup peak with page cache ${s.cgroupPeakMiB} MiB`
          : `  ${op.padEnd(5)} FAILED (${s.error}), oom kills ${s.oomKills}`,
      );
    }
    console.log(`  applied images identical to the custom images: ${identical}`);
    console.log(`results: ${file}`);
  } finally {
    if (cg) await cg.remove().catch(() => undefined);
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}
