/**
 * Benchmark: resume over FUSE (memory demand-paged from the base image)
 * against the classic full-memory restore (a migration stream carrying all of
 * RAM, loaded before the guest runs), for the same guest in the same run.
 *
 * Both read local files, so the difference is what each must move before the
 * first reply: the whole RAM, or only what the guest touches.
 *
 * Parameters (environment): BENCH_RUNS (default 5), BENCH_MEM_MB (default 8),
 * BENCH_DISK_MB (default 4): the app's work for the first request.
 * Prints a table and the ratio classic/FUSE; writes bench/results/resume-<time>.json.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { attachLogger } from '../lib/core/log.js';
import { packageRoot } from '../lib/core/paths.js';
import { withScope } from '../lib/core/scope.js';
import { buildGuest } from '../lib/guest/build.js';
import { ensureGuestBase } from '../lib/cli/demo.js';
import { detectAccel } from '../lib/vm/accel.js';
import type { Base } from '../lib/vm/base.js';
import { waitForApp, workPath, type AppWork } from '../lib/vm/guest-app.js';
import { Libvirt } from '../lib/vm/libvirt.js';
import { saveState } from '../lib/vm/migration.js';
import { resumeBase } from '../lib/vm/base-resume.js';
import { restoreVm } from '../lib/vm/restore.js';
import { RunDir } from '../lib/vm/run-dir.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const WORK: AppWork = { memMb: Number(process.env.BENCH_MEM_MB ?? 8), diskMb: Number(process.env.BENCH_DISK_MB ?? 4) };

interface Sample {
  resumeMs: number;
  firstResponseMs: number;
  bytesBeforeFirstResponse: number;
}

/** Saves the base VM, resumed, as a full migration stream (device state + all RAM). */
async function captureFullStream(base: Base, file: string): Promise<number> {
  let bytes = 0;
  await resumeBase({
    base: base.name,
    verify: false,
    whileRunning: async ({ vm, run }) => {
      bytes = await saveState(vm.qmp, file, run.file('full.sock'), { ignoreShared: false });
    },
  });
  return bytes;
}

/** Classic restore: anonymous RAM, the whole stream loaded, then the first request. */
async function classicRestore(base: Base, stream: string, streamBytes: number): Promise<Sample> {
  return withScope(async (scope) => {
    const lv = await Libvirt.connect();
    scope.defer('close libvirt', () => lv.close());
    const run = await RunDir.create(scope);
    const t0 = performance.now();
    const vm = await restoreVm(
      lv,
      { base, run, memory: { path: null, share: false }, disk: { path: base.file('disk') }, deviceState: stream },
      scope,
    );
    const resumeMs = performance.now() - t0;
    await waitForApp(vm.hostPort, { timeoutMs: 60_000, alive: vm.alive, path: workPath(WORK) });
    return { resumeMs, firstResponseMs: performance.now() - t0, bytesBeforeFirstResponse: streamBytes };
  });
}

async function fuseResume(base: Base): Promise<Sample> {
  const r = await resumeBase({ base: base.name, verify: false, work: WORK });
  return {
    resumeMs: r.resumeMs,
    firstResponseMs: r.firstResponseMs,
    bytesBeforeFirstResponse: r.fuseBytesReadBeforeFirstResponse + r.deviceStateBytes,
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

export async function benchResume(): Promise<void> {
  const detach = attachLogger({ level: process.env.LOG_LEVEL ?? 'warn' });
  const { accel } = await detectAccel();
  const guest = await buildGuest();
  const { base } = await ensureGuestBase(guest, 'bench');
  const outDir = path.join(packageRoot(), 'bench', 'results');
  await fsp.mkdir(outDir, { recursive: true });
  const stream = path.join(outDir, `.full-stream-${process.pid}`);
  try {
    const streamBytes = await captureFullStream(base, stream);
    const fuse: Sample[] = [];
    const classic: Sample[] = [];
    for (let i = 0; i < RUNS; i++) {
      // Alternate the order so neither side always runs with a warmer host cache.
      if (i % 2 === 0) {
        fuse.push(await fuseResume(base));
        classic.push(await classicRestore(base, stream, streamBytes));
      } else {
        classic.push(await classicRestore(base, stream, streamBytes));
        fuse.push(await fuseResume(base));
      }
      process.stderr.write(
        `run ${i + 1}/${RUNS}: FUSE ${Math.round(fuse.at(-1)!.firstResponseMs)} ms, classic ${Math.round(classic.at(-1)!.firstResponseMs)} ms\n`,
      );
    }
    const summary = (xs: Sample[]) => ({
      resumeMs: Math.round(median(xs.map((s) => s.resumeMs))),
      firstResponseMs: Math.round(median(xs.map((s) => s.firstResponseMs))),
      bytesBeforeFirstResponse: Math.round(median(xs.map((s) => s.bytesBeforeFirstResponse))),
    });
    const result = {
      bench: 'resume',
      at: new Date().toISOString(),
      accel,
      runs: RUNS,
      work: WORK,
      memoryBytes: base.manifest.memory.bytes,
      fullStreamBytes: streamBytes,
      fuse: { ...summary(fuse), samples: fuse },
      classic: { ...summary(classic), samples: classic },
      ratio: {
        firstResponse: +(
          median(classic.map((s) => s.firstResponseMs)) / median(fuse.map((s) => s.firstResponseMs))
        ).toFixed(2),
        resume: +(median(classic.map((s) => s.resumeMs)) / median(fuse.map((s) => s.resumeMs))).toFixed(2),
      },
    };
    const file = path.join(outDir, `resume-${result.at.replace(/[:.]/g, '-')}.json`);
    await fsp.writeFile(file, JSON.stringify(result, null, 2) + '\n');
    const row = (name: string, s: ReturnType<typeof summary>) =>
      `${name.padEnd(24)} ${String(s.resumeMs).padStart(10)} ${String(s.firstResponseMs).padStart(16)} ${(s.bytesBeforeFirstResponse / 2 ** 20).toFixed(1).padStart(14)}`;
    console.log(
      `resume benchmark (${accel.toUpperCase()}, ${RUNS} runs, medians, ${base.manifest.memory.bytes / 2 ** 20} MiB guest RAM)`,
    );
    console.log(
      `${'method'.padEnd(24)} ${'running ms'.padStart(10)} ${'first reply ms'.padStart(16)} ${'MiB moved'.padStart(14)}`,
    );
    console.log(row('classic full restore', result.classic));
    console.log(row('resume over FUSE', result.fuse));
    console.log(`ratio classic/FUSE: first reply ${result.ratio.firstResponse}x, to running ${result.ratio.resume}x`);
    console.log(`results: ${file}`);
  } finally {
    await fsp.rm(stream, { force: true });
    detach();
  }
}
