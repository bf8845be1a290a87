/**
 * `npm run bench -- suite [--quick]`: real offload apps in the Debian base,
 * measured the way Elijah's "VM Synthesis Baseline Performance" table was,
 * and beyond it.
 *
 * Per app (lib/guest/apps.ts: speech, ocr, face, compute):
 *   - the app's overlay over the Debian base (customized from a local apt
 *     repository of its .debs, access-order profiled), cached;
 *   - its size, disk and memory, against the naive diff (every modified
 *     chunk raw) and Elijah's scheme (bench/elijah.ts: xdelta3 + xz);
 * and per app, link (38 Mbit/s, 1 Gbit/s: tc tbf on a veth pair into a
 * network namespace the bench makes and removes) and policy, n runs each,
 * round-robin:
 *   - baseline: the whole overlay, applied, then resumed;
 *   - early-start: resumed at once, the rest streamed behind demand fetches;
 *   - demand-only: resumed at once, only what the guest reads;
 *   - remote-install: the base resumed, the same .debs installed with apt
 *     from a repository served inside the namespace, over the same link;
 * each timed to the app's first response to its real request (a WAV, a
 * PNG...), whose reply must equal the fully local VM's. The floor is the
 * bytes the first response needs at the link rate plus a local resume of the
 * fully synthesized VM, made once per app in every round beside the policies'
 * runs (so it sees the same host), p50 per link.
 *
 * Writes bench/results/suite-<time>.json (or --out DIR), two SVG plots
 * (first response per app and policy; one run's segment timeline, background
 * vs demand), and, for a full run, docs/benchmarks.md with the table beside
 * Elijah's. --quick: the compute app on the 1 Gbit/s link, one run per cell,
 * no docs; it checks that the output is complete and well formed.
 *
 * Options: --quick, --runs N (default 5; BENCH_RUNS), --apps a,b
 * (BENCH_APPS), --links wifi,lan (BENCH_LINKS), --policies a,b (default all
 * four; BENCH_POLICIES: an experiment on some policies skips, say, face's
 * 11-18 min remote installs), --out DIR, --no-docs,
 * --prepare-only (build and cache the overlays, print their sizes), --render
 * A.json[,B.json] (write docs/ again from a result, after editing
 * docs/benchmarks-notes.md, or from runs of different cells merged). Only a
 * run of every app on every link with every policy writes docs/ by itself. A
 * run that fails is kept and listed (its cell counts the others); the bench
 * then exits non-zero.
 */
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { SegmentSend } from '../lib/client/client.js';
import { VmsynthError } from '../lib/core/errors.js';
import { attachLogger } from '../lib/core/log.js';
import { packageRoot } from '../lib/core/paths.js';
import { abortReason, Scope, throwIfAborted } from '../lib/core/scope.js';
import type { AppName } from '../lib/guest/app-inputs.js';
import { APP_NAMES, APPS } from '../lib/guest/apps.js';
import type { Policy } from '../lib/protocol/messages.js';
import { SynthServer } from '../lib/server/server.js';
import { detectAccel } from '../lib/vm/accel.js';
import { runClient } from './lib/client-run.js';
import {
  checkLinkTools,
  createLinkPair,
  LINKS,
  netnsFor,
  removeStale,
  shape,
  tmpDirFor,
  type Link,
  type LinkNames,
} from './lib/link.js';
import { onSignals } from './lib/signals.js';
import { percentile } from './lib/stats.js';
import {
  checkSuiteResult,
  failedRuns,
  mergeSuiteResults,
  renderMarkdown,
  summaryText,
  type AppResult,
  type CellSummary,
  type Sample,
  type SuiteResult,
} from './lib/suite-report.js';
import { svgFirstResponse, svgTimeline } from './lib/suite-charts.js';
import { prepareApp, suiteBase, type PreparedApp } from './lib/suite-app.js';
import {
  localRound,
  prepareLocal,
  remoteInstall,
  sampleOf,
  serveRepoInNs,
  summarize,
  type Cell,
  type Local,
} from './lib/suite-measure.js';

const NAMES: LinkNames = { ns: 'vmsst-', dev: 'vst', tmp: 'vmsynth-bench-suite-', bench: 'suite', octet: 202 };
const SYNTH_POLICIES: Policy[] = ['baseline', 'early-start', 'demand-only'];
export const SUITE_POLICIES = [...SYNTH_POLICIES, 'remote-install'] as const;
export type SuitePolicy = (typeof SUITE_POLICIES)[number];
const CLIENT_TIMEOUT_S = 1800;
const progress = (msg: string) => process.stderr.write(`suite: ${msg}\n`);

export interface SuiteArgs {
  quick: boolean;
  runs: number;
  apps: AppName[];
  links: Link[];
  /** The policies measured, in SUITE_POLICIES order. */
  policies: SuitePolicy[];
  out: string;
  docs: boolean;
  /** Build and cache the overlays (and their sizes), print the sizes, measure nothing. */
  prepareOnly: boolean;
  /** Measure nothing: write docs/ again from these result files, comma-separated (merged when several). */
  render: string | null;
}

export const SUITE_USAGE = `npm run bench -- suite [options]

Real offload apps (${APP_NAMES.join(', ')}) in a Debian guest, per link and
policy, timed to each app's first response; the table beside Elijah's.
  --quick              the compute app on the lan link, one run per cell, no docs
  --runs N             runs per cell (default 5; BENCH_RUNS)
  --apps a,b           apps (default all; BENCH_APPS)
  --links a,b          links: ${Object.keys(LINKS).join(', ')} (default all; BENCH_LINKS)
  --policies a,b       ${SUITE_POLICIES.join(', ')} (default all; BENCH_POLICIES)
  --out DIR            where results go (default bench/results; BENCH_OUT)
  --no-docs            do not write docs/ even after a full run
  --prepare-only       build and cache the overlays, print their sizes
  --render A.json,...  write docs/ again from results (runs of different cells merge)
Only a run of every app on every link with every policy writes docs/ by itself.
`;

function parseArgs(argv: string[]): SuiteArgs | 'help' {
  if (argv.includes('--help') || argv.includes('-h')) return 'help';
  const quick = argv.includes('--quick');
  const value = (flag: string, env: string): string | undefined => {
    const i = argv.indexOf(flag);
    if (i >= 0) {
      const v = argv[i + 1];
      if (v === undefined || v.startsWith('--')) throw new VmsynthError('VMS_USAGE', `${flag} needs a value`);
      return v;
    }
    return process.env[env];
  };
  const known = new Set([
    '--quick',
    '--runs',
    '--apps',
    '--links',
    '--policies',
    '--out',
    '--no-docs',
    '--prepare-only',
    '--render',
  ]);
  argv.forEach((a, i) => {
    if (a.startsWith('--') && !known.has(a))
      throw new VmsynthError(
        'VMS_USAGE',
        `suite: unknown option ${a}; options: ${[...known].join(' ')} (npm run bench -- suite --help)`,
      );
    if (
      !a.startsWith('--') &&
      !['--runs', '--apps', '--links', '--policies', '--out', '--render'].includes(argv[i - 1] ?? '')
    )
      throw new VmsynthError('VMS_USAGE', `suite: unexpected argument "${a}"`);
  });
  const runsText = value('--runs', 'BENCH_RUNS') ?? (quick ? '1' : '5');
  const runs = Number(runsText);
  if (!Number.isSafeInteger(runs) || runs < 1)
    throw new VmsynthError('VMS_USAGE', `--runs must be a positive integer, got "${runsText}"`);
  const apps = (value('--apps', 'BENCH_APPS') ?? (quick ? 'compute' : APP_NAMES.join(',')))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const a of apps)
    if (!(a in APPS)) throw new VmsynthError('VMS_USAGE', `unknown app "${a}"; choose from ${APP_NAMES.join(', ')}`);
  const links = (value('--links', 'BENCH_LINKS') ?? (quick ? 'lan' : 'wifi,lan'))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((n) => {
      const l = LINKS[n];
      if (!l) throw new VmsynthError('VMS_USAGE', `unknown link "${n}"; choose from ${Object.keys(LINKS).join(', ')}`);
      return l;
    });
  const policies = (value('--policies', 'BENCH_POLICIES') ?? SUITE_POLICIES.join(','))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const p of policies)
    if (!(SUITE_POLICIES as readonly string[]).includes(p))
      throw new VmsynthError('VMS_USAGE', `unknown policy "${p}"; choose from ${SUITE_POLICIES.join(', ')}`);
  const out = path.resolve(value('--out', 'BENCH_OUT') ?? path.join(packageRoot(), 'bench', 'results'));
  const everything =
    APP_NAMES.every((a) => apps.includes(a)) &&
    Object.keys(LINKS).every((l) => links.some((x) => x.name === l)) &&
    SUITE_POLICIES.every((p) => policies.includes(p));
  return {
    quick,
    runs,
    apps: apps as AppName[],
    links,
    policies: SUITE_POLICIES.filter((p) => policies.includes(p)),
    out,
    docs: !quick && !argv.includes('--no-docs') && everything,
    prepareOnly: argv.includes('--prepare-only'),
    render: value('--render', 'BENCH_RENDER') ?? null,
  };
}

// ---------------------------------------------------------------- the bench

export async function benchSuite(argv: string[] = []): Promise<void> {
  const args = parseArgs(argv);
  if (args === 'help') {
    process.stdout.write(SUITE_USAGE);
    return;
  }
  if (args.render) return renderDocs(args.render);
  const detach = attachLogger({ level: process.env.LOG_LEVEL ?? 'warn' });
  const controller = new AbortController();
  const signal = controller.signal;
  const offSignals = onSignals(controller, 'suite');
  const scope = new Scope();
  try {
    const startedAt = new Date();
    const loadAtStart = os.loadavg().map((x) => +x.toFixed(2));
    await checkLinkTools(NAMES);
    await removeStale(NAMES);
    const { accel, reason } = await detectAccel();
    progress(
      `accelerator ${accel.toUpperCase()} (${reason}); apps ${args.apps.join(', ')}; links ${args.links.map((l) => l.name).join(', ')}; ${args.runs} run(s) per cell`,
    );
    const { guest, base, key } = await suiteBase(signal);
    const apps: PreparedApp[] = [];
    for (const name of args.apps) {
      const a = await prepareApp(name, guest, base, key, args.quick, signal);
      apps.push(a);
      const z = a.sizes;
      progress(
        `${name}: overlay ${(z.overlay.total / 1e6).toFixed(2)} MB (disk ${(z.overlay.disk / 1e6).toFixed(2)} + memory ${(z.overlay.memory / 1e6).toFixed(2)}), naive ${(z.naive.total / 1e6).toFixed(2)} MB, Elijah's scheme ${(z.elijah.total / 1e6).toFixed(2)} MB; ${z.repo.debs} .debs, ${(z.repo.bytes / 1e6).toFixed(1)} MB (${(z.repo.installedBytes / 1e6).toFixed(1)} MB installed)${a.prep.cached ? ' (cached)' : a.prep.createMs === null ? ' (from a kept custom VM)' : `; made in ${(a.prep.createMs / 1000).toFixed(0)} s`}`,
      );
    }
    if (args.prepareOnly) return;

    const tmp = tmpDirFor(process.pid, NAMES);
    await fsp.mkdir(tmp, { recursive: true });
    scope.defer(`remove ${tmp}`, () => fsp.rm(tmp, { recursive: true, force: true }));
    const locals = new Map<AppName, Local>();
    for (const a of apps) locals.set(a.spec.name, await prepareLocal(a, tmp, key, signal));

    const n = netnsFor(process.pid, NAMES);
    await createLinkPair(scope, n);
    const server = await SynthServer.listen({
      host: n.hostAddr,
      port: 0,
      trust: [key.pubFile],
      verifyBases: true,
      maxSessions: 4,
    });
    scope.defer('close the synthesis server', () => server.close());
    const port = server.address().port;
    const repoPorts = new Map<AppName, number>();
    for (const a of apps) if (a.spec.packages.length) repoPorts.set(a.spec.name, await serveRepoInNs(scope, n, a.repo));

    const cells = new Map<string, Cell>();
    const cellOf = (app: string, link: string, policy: string) => {
      const k = `${app}/${link}/${policy}`;
      if (!cells.has(k)) cells.set(k, { samples: [], failures: [] });
      return cells.get(k)!;
    };
    const timelineOf = new Map<
      string,
      { sends: SegmentSend[]; resumedMs: number | null; firstResponseMs: number | null; finishedMs: number | null }
    >();
    for (const link of args.links) {
      await shape(n, link);
      for (let i = 0; i < args.runs; i++) {
        for (const a of apps) {
          const local = locals.get(a.spec.name)!;
          for (let k = 0; k < args.policies.length; k++) {
            const policy = args.policies[(i + k) % args.policies.length]!;
            throwIfAborted(signal);
            const cell = cellOf(a.spec.name, link.name, policy);
            const label = `${link.name} ${a.spec.name} ${policy} ${i + 1}/${args.runs}`;
            try {
              let s: Sample;
              if (policy === 'remote-install') {
                const p = repoPorts.get(a.spec.name);
                s = await remoteInstall(a, p ? `http://${n.nsAddr}:${p}` : null, local, signal);
              } else {
                const r = await runClient(
                  n.ns,
                  `${n.hostAddr}:${port}`,
                  a.profiled.dir,
                  policy,
                  { path: a.request.path, method: 'POST', bodyFile: a.input.file },
                  CLIENT_TIMEOUT_S,
                  signal,
                  label,
                );
                s = sampleOf(r, local);
                const tk = `${a.spec.name}/${link.name}`;
                if (policy === 'early-start' && !timelineOf.has(tk))
                  timelineOf.set(tk, {
                    sends: r.sends,
                    resumedMs: r.timeline.resumed,
                    firstResponseMs: r.timeline.firstResponse,
                    finishedMs: r.timeline.finished,
                  });
              }
              cell.samples.push(s);
              progress(
                `${label}: first response ${s.firstResponseMs} ms${s.replyMatchesLocal ? '' : ' (REPLY DIFFERS from the local VM)'}`,
              );
            } catch (err) {
              if (signal.aborted) throw abortReason(signal);
              const message = err instanceof Error ? err.message : String(err);
              cell.failures.push(message);
              progress(`${label}: FAILED: ${message}`);
            }
          }
          await localRound(a, local, link.name, `${link.name} ${a.spec.name} ${i + 1}/${args.runs}`, signal);
        }
      }
    }

    const appResults: AppResult[] = apps.map((a) => {
      const local = locals.get(a.spec.name)!;
      const localRuns = args.links.flatMap((l) => local.byLink.get(l.name) ?? []);
      return {
        app: a.spec.name,
        title: a.spec.title,
        elijah: a.spec.elijah,
        note: a.spec.note,
        packages: a.spec.packages,
        input: { description: a.input.description, bytes: a.input.bytes },
        sizes: a.sizes,
        prep: a.prep,
        overlay: {
          segments: a.profiled.body.segments.length,
          segmentBytes: a.profiled.body.segmentBytes,
          bytes: a.profiled.segmentsBytes + a.profiled.manifestBytes,
          manifestBytes: a.profiled.manifestBytes,
        },
        local: {
          firstResponseMs: localRuns,
          p50: Math.round(percentile(localRuns, 0.5) ?? local.referenceMs),
          reply: local.reply,
        },
        links: Object.fromEntries(
          args.links.map((link) => {
            const localP50 = percentile(local.byLink.get(link.name) ?? [], 0.5) ?? local.referenceMs;
            const summary = Object.fromEntries(
              SUITE_POLICIES.map((p) => [p, summarize(cellOf(a.spec.name, link.name, p))]),
            ) as Record<SuitePolicy, CellSummary>;
            const needed =
              summary['demand-only'].bytesBeforeFirstResponse ?? summary['early-start'].bytesBeforeFirstResponse ?? 0;
            const transferMs = ((needed + a.profiled.manifestBytes) * 8) / (link.rateMbit * 1e3);
            const floorMs = Math.round(transferMs + localP50);
            const es = summary['early-start'].firstResponseMs.p50;
            const ratio = (x: number | null, y: number | null) =>
              x === null || y === null || y === 0 ? null : +(x / y).toFixed(2);
            return [
              link.name,
              {
                link: { ...link, delay: 'none (no netem in this kernel)' },
                summary,
                floor: {
                  neededBytes: needed,
                  manifestBytes: a.profiled.manifestBytes,
                  transferMs: Math.round(transferMs),
                  localFirstResponseMs: Math.round(localP50),
                  floorMs,
                },
                ratios: {
                  baselineOverEarlyStart: ratio(summary.baseline.firstResponseMs.p50, es),
                  earlyStartOverFloor: ratio(es, floorMs),
                  remoteInstallOverEarlyStart: ratio(summary['remote-install'].firstResponseMs.p50, es),
                  demandOnlyOverEarlyStart: ratio(summary['demand-only'].firstResponseMs.p50, es),
                },
                samples: Object.fromEntries(SUITE_POLICIES.map((p) => [p, cellOf(a.spec.name, link.name, p).samples])),
                failures: Object.fromEntries(
                  SUITE_POLICIES.filter((p) => cellOf(a.spec.name, link.name, p).failures.length).map((p) => [
                    p,
                    cellOf(a.spec.name, link.name, p).failures,
                  ]),
                ),
                timeline: timelineOf.get(`${a.spec.name}/${link.name}`) ?? null,
              },
            ];
          }),
        ),
      };
    });

    const result: SuiteResult = {
      bench: 'suite',
      version: 1,
      at: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      command: `npm run bench -- suite ${argv.join(' ')}`.trim(),
      quick: args.quick,
      accel,
      accelReason: reason,
      cpus: os.cpus().length,
      host: {
        loadavgAtStart: loadAtStart,
        loadavgAtEnd: os.loadavg().map((x) => +x.toFixed(2)),
        memGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
      },
      runs: args.runs,
      base: {
        name: base.name,
        suite: guest.suite,
        memoryMiB: base.manifest.vm.memoryMiB,
        diskBytes: base.manifest.disk.bytes,
        kernel: guest.kernelPackage,
        bootMs: base.manifest.created.bootMs,
      },
      policies: [...args.policies],
      links: args.links.map((l) => l.name),
      apps: appResults,
    };
    const problems = checkSuiteResult(result);
    const failed = failedRuns(result);
    await writeOutputs(result, args);
    if (problems.length)
      throw new VmsynthError('VMS_INTERNAL', `the suite's output is incomplete:\n  ${problems.join('\n  ')}`);
    // Written and renderable (the docs list failed runs), but a run that failed fails the bench.
    if (failed.length)
      throw new VmsynthError(
        'VMS_INTERNAL',
        `${failed.length} run(s) failed (the results above count only the others):\n  ${failed.join('\n  ')}`,
      );
  } catch (err) {
    // An interrupted run says so, whichever await the abort reached first.
    throw signal.aborted ? abortReason(signal) : err;
  } finally {
    await scope.close();
    offSignals();
    detach();
  }
}

async function writeOutputs(result: SuiteResult, args: SuiteArgs): Promise<void> {
  await fsp.mkdir(args.out, { recursive: true });
  const stamp = result.at.replace(/[:.]/g, '-');
  const name = `suite${result.quick ? '-quick' : ''}-${stamp}`;
  const json = path.join(args.out, `${name}.json`);
  const plot = path.join(args.out, `${name}-first-response.svg`);
  const timeline = path.join(args.out, `${name}-timeline.svg`);
  await fsp.writeFile(json, JSON.stringify(result, null, 2) + '\n');
  await fsp.writeFile(plot, await svgFirstResponse(result));
  await fsp.writeFile(timeline, await svgTimeline(result));
  console.log(summaryText(result));
  console.log(`results: ${json}\nplots: ${plot}\n       ${timeline}`);
  if (args.docs) await writeDocs(result);
  else if (!result.quick)
    console.log(
      `docs/benchmarks.md not written: this run has ${result.apps.map((a) => a.app).join(', ')} at ${result.links.join(', ')} with ${result.policies.join(', ')}, not every app (${APP_NAMES.join(', ')}) on every link (${Object.keys(LINKS).join(', ')}) with every policy. Merge runs of different cells into the docs with --render A.json,B.json`,
    );
}

/** docs/benchmarks.md, its plots and the result it was made from (docs/benchmarks.json, kept in the repository). */
async function writeDocs(result: SuiteResult): Promise<void> {
  const docs = path.join(packageRoot(), 'docs');
  await fsp.writeFile(path.join(docs, 'benchmarks.json'), JSON.stringify(result, null, 2) + '\n');
  await fsp.writeFile(path.join(docs, 'benchmarks-first-response.svg'), await svgFirstResponse(result));
  await fsp.writeFile(path.join(docs, 'benchmarks-timeline.svg'), await svgTimeline(result));
  await fsp.writeFile(
    path.join(docs, 'benchmarks.md'),
    renderMarkdown(result, {
      json: 'docs/benchmarks.json',
      plots: ['benchmarks-first-response.svg', 'benchmarks-timeline.svg'],
    }),
  );
  console.log(`docs: ${path.join(docs, 'benchmarks.md')}`);
}

/** --render A.json[,B.json...]: docs from one full run, or from runs of different cells (apps, or an app's links) merged into one table. */
async function renderDocs(files: string): Promise<void> {
  const results: SuiteResult[] = [];
  for (const file of files.split(',').filter(Boolean)) {
    let result: SuiteResult;
    try {
      result = JSON.parse(await fsp.readFile(file, 'utf8')) as SuiteResult;
    } catch (err) {
      throw new VmsynthError(
        'VMS_USAGE',
        `--render: cannot read ${file} as JSON: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
    if (result.bench !== 'suite' || result.version !== 1)
      throw new VmsynthError('VMS_USAGE', `${file} is not a suite result (version 1)`);
    if (result.quick)
      throw new VmsynthError('VMS_USAGE', `${file} is a --quick result: docs/benchmarks.md comes from full runs`);
    const problems = checkSuiteResult(result);
    if (problems.length) throw new VmsynthError('VMS_USAGE', `${file} is incomplete:\n  ${problems.join('\n  ')}`);
    results.push(result);
  }
  const merged = mergeSuiteResults(results);
  const problems = checkSuiteResult(merged);
  if (problems.length)
    throw new VmsynthError('VMS_USAGE', `the merged result is incomplete:\n  ${problems.join('\n  ')}`);
  const failed = failedRuns(merged);
  if (failed.length)
    progress(
      `${failed.length} failed run(s), listed under "Failed runs" in docs/benchmarks.md:\n  ${failed.join('\n  ')}`,
    );
  await writeDocs(merged);
}
