/**
 * The benchmark suite's output: its result types, the completeness check
 * the quick mode relies on, the text summary, docs/benchmarks.md (our
 * numbers beside Elijah's table); its two charts are in suite-charts.ts.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { SegmentSend } from '../../lib/client/client.js';
import { VmsynthError } from '../../lib/core/errors.js';
import { packageRoot } from '../../lib/core/paths.js';
import type { Link } from './link.js';
import { p50 } from './stats.js';

export const POLICIES = ['baseline', 'early-start', 'demand-only', 'remote-install'] as const;
export type SuitePolicyName = (typeof POLICIES)[number];

export interface Sample {
  firstResponseMs: number;
  resumedMs: number | null;
  finishedMs: number | null;
  /** Synthesis: segment bytes sent before the first response; remote install: the .debs' bytes. */
  bytesBeforeFirstResponse: number | null;
  demandRequests: number | null;
  /** Synthesis runs since 2026-12-02 (absent before): guest reads of a segment already asked for in the background (server), and how many of those the client still had queued and sent next (`hurry`). */
  outOfOrder?: number | null;
  hurried?: number;
  replyMatchesLocal: boolean;
  /** remote-install only: from the VM running to the app's first answer (download, install, start). */
  installMs?: number;
}

export interface CellSummary {
  n: number;
  failures: number;
  firstResponseMs: {
    p50: number | null;
    p90: number | null;
    min: number | null;
    max: number | null;
    mean: number | null;
  };
  bytesBeforeFirstResponse: number | null;
  resumedMs: number | null;
  repliesMatchingLocal: number;
}

export interface Timeline {
  sends: SegmentSend[];
  resumedMs: number | null;
  firstResponseMs: number | null;
  finishedMs: number | null;
}

export interface LinkResult {
  link: Link & { delay: string };
  summary: Record<SuitePolicyName, CellSummary>;
  floor: {
    neededBytes: number;
    manifestBytes: number;
    transferMs: number;
    localFirstResponseMs: number;
    floorMs: number;
  };
  ratios: {
    baselineOverEarlyStart: number | null;
    earlyStartOverFloor: number | null;
    remoteInstallOverEarlyStart: number | null;
    demandOnlyOverEarlyStart: number | null;
  };
  samples: Record<string, Sample[]>;
  failures: Record<string, string[]>;
  timeline: Timeline | null;
}

export interface AppResult {
  app: string;
  title: string;
  elijah: string;
  note: string;
  packages: string[];
  input: { description: string; bytes: number };
  sizes: {
    overlay: { total: number; segments: number; manifest: number; memory: number; disk: number };
    naive: { total: number; memory: number; disk: number };
    elijah: { total: number; xdeltaItems: number; rawItems: number };
    repo: { debs: number; bytes: number; installedBytes: number };
    ratioVsNaive: number;
    ratioVsElijah: number;
  };
  prep: {
    cached: boolean;
    createMs: number | null;
    customizeMs: number | null;
    profileMs: number | null;
    elijahMs: number | null;
  };
  overlay: { segments: number; segmentBytes: number; bytes: number; manifestBytes: number };
  local: { firstResponseMs: number[]; p50: number; reply: string };
  links: Record<string, LinkResult>;
}

export interface SuiteResult {
  bench: 'suite';
  version: 1;
  at: string;
  finishedAt: string;
  command: string;
  quick: boolean;
  accel: string;
  accelReason: string;
  cpus: number;
  host: { loadavgAtStart: number[]; loadavgAtEnd: number[]; memGiB: number };
  runs: number;
  base: { name: string; suite: string; memoryMiB: number; diskBytes: number; kernel: string; bootMs: number };
  policies: string[];
  links: string[];
  apps: AppResult[];
  /** Present when several runs were merged (mergeSuiteResults): which run measured which apps. */
  parts?: RunPart[];
}

/** One suite run inside a merged result. */
export interface RunPart {
  apps: string[];
  links: string[];
  at: string;
  finishedAt: string;
  command: string;
  host: SuiteResult['host'];
}

/** Elijah's "VM Synthesis Baseline Performance" table (seed 001), 802.11n at ~38 Mbit/s; MB as printed. */
export const ELIJAH: Record<string, { diskMB: number; memoryMB: number; installMB: number; baselineS: number }> = {
  OBJECT: { diskMB: 39.5, memoryMB: 92.8, installMB: 113.3, baselineS: 62.8 },
  FACE: { diskMB: 8.3, memoryMB: 21.8, installMB: 99.2, baselineS: 37.0 },
  SPEECH: { diskMB: 64.8, memoryMB: 106.2, installMB: 111.5, baselineS: 63.0 },
  AR: { diskMB: 97.5, memoryMB: 192.3, installMB: 287.9, baselineS: 140.2 },
  FLUID: { diskMB: 0.5, memoryMB: 1.8, installMB: 14.1, baselineS: 7.3 },
};

// ---------------------------------------------------------------- completeness

/**
 * Everything a run must hold to be reported; [] when complete. A run that
 * failed is not a gap: it is reported (failedRuns, the docs' "Failed runs"),
 * as long as every cell has at least one success and each of its runs is
 * accounted for, as a sample or as a failure with its error.
 */
export function checkSuiteResult(r: SuiteResult): string[] {
  const problems: string[] = [];
  const need = (ok: boolean, what: string) => {
    if (!ok) problems.push(what);
  };
  const pos = (v: unknown) => typeof v === 'number' && Number.isFinite(v) && v > 0;
  need(r.apps.length > 0, 'no apps');
  need(r.links.length > 0, 'no links');
  need(Number.isInteger(r.runs) && r.runs >= 1, 'runs is not a positive integer');
  for (const a of r.apps) {
    const at = `${a.app}:`;
    for (const k of ['total', 'segments', 'manifest'] as const)
      need(pos(a.sizes.overlay[k]), `${at} overlay ${k} size`);
    need(pos(a.sizes.naive.total), `${at} naive size`);
    need(pos(a.sizes.elijah.total), `${at} Elijah-scheme size`);
    need(pos(a.sizes.ratioVsNaive) && pos(a.sizes.ratioVsElijah), `${at} size ratios`);
    // The floor's local resumes: one per round and link (a failed one is left out; the floor then uses the others).
    need(a.local.firstResponseMs.length >= 1 && a.local.firstResponseMs.every(pos), `${at} local resume runs`);
    need(a.local.reply.length > 2, `${at} local reply`);
    for (const l of r.links) {
      const lr = a.links[l];
      if (!lr) {
        problems.push(`${at} no results for link ${l}`);
        continue;
      }
      for (const p of measured(r)) {
        const c = lr.summary[p];
        if (!c) {
          problems.push(`${at}${l}/${p}: no summary`);
          continue;
        }
        need(
          c.n >= 1 && c.n + c.failures === r.runs && (lr.failures[p]?.length ?? 0) === c.failures,
          `${at}${l}/${p}: ${c.n} of ${r.runs} runs succeeded${lr.failures[p]?.length ? ` (${lr.failures[p][0]!.slice(0, 200)})` : ''}, ${c.failures} failed`,
        );
        need(pos(c.firstResponseMs.p50), `${at}${l}/${p}: no first-response time`);
        need(
          c.repliesMatchingLocal === c.n,
          `${at}${l}/${p}: ${c.n - c.repliesMatchingLocal} replies differ from the local VM's`,
        );
        need((lr.samples[p]?.length ?? 0) === c.n, `${at}${l}/${p}: samples missing`);
      }
      need(pos(lr.floor.floorMs), `${at}${l}: floor`);
      need(lr.timeline !== null && lr.timeline.sends.length > 0, `${at}${l}: no early-start segment timeline`);
    }
  }
  return problems;
}

/** The policies a run measured (`--policies`; a run may leave some out), in table order. */
export function measured(r: SuiteResult): SuitePolicyName[] {
  return POLICIES.filter((p) => r.policies.includes(p));
}

/** Each run that failed, as "app:link/policy: error", in table order. */
export function failedRuns(r: SuiteResult): string[] {
  const out: string[] = [];
  for (const a of r.apps) {
    for (const l of r.links) {
      for (const p of measured(r)) for (const e of a.links[l]?.failures[p] ?? []) out.push(`${a.app}:${l}/${p}: ${e}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------- merging

/** The runs a result is made of: its parts when merged, else itself. */
export function partsOf(r: SuiteResult): RunPart[] {
  return (
    r.parts ?? [
      {
        apps: r.apps.map((a) => a.app),
        links: [...r.links],
        at: r.at,
        finishedAt: r.finishedAt,
        command: r.command,
        host: r.host,
      },
    ]
  );
}

/**
 * Several full runs as one result, for when the cells were measured in
 * separate runs: other apps, or the same app (the same overlay) on other
 * links. The runs must share the host, base, policies and runs per cell, or
 * their numbers do not belong in one table; no cell may be measured twice.
 * Each run stays named in `parts`, with its command, time and cells. An app
 * measured in several runs keeps the local resumes of its earliest run;
 * each link's floor keeps its own run's.
 */
export function mergeSuiteResults(rs: SuiteResult[]): SuiteResult {
  if (rs.length === 0) throw new VmsynthError('VMS_USAGE', 'nothing to merge');
  if (rs.length === 1) return rs[0]!;
  const sorted = [...rs].sort((a, b) => a.at.localeCompare(b.at));
  const first = sorted[0]!;
  const same = (what: string, want: unknown, got: unknown) => {
    if (JSON.stringify(got) !== JSON.stringify(want))
      throw new VmsynthError(
        'VMS_USAGE',
        `the results differ in ${what} (${JSON.stringify(want)} vs ${JSON.stringify(got)}): merge only runs made on the same host and base with the same options`,
      );
  };
  for (const r of sorted) {
    same('quick mode', first.quick, r.quick);
    same('accelerator', first.accel, r.accel);
    same('CPUs', first.cpus, r.cpus);
    same('runs per cell', first.runs, r.runs);
    same('base VM', first.base, r.base);
    same('policies', first.policies, r.policies);
  }
  const apps = new Map<string, AppResult>();
  for (const r of sorted) {
    for (const a of r.apps) {
      const had = apps.get(a.app);
      if (!had) {
        apps.set(a.app, { ...a, links: { ...a.links } });
        continue;
      }
      same(`${a.app}'s overlay`, { sizes: had.sizes, overlay: had.overlay }, { sizes: a.sizes, overlay: a.overlay });
      for (const [l, lr] of Object.entries(a.links)) {
        if (had.links[l])
          throw new VmsynthError(
            'VMS_USAGE',
            `${a.app} at ${l} is in more than one result: merge runs of different cells`,
          );
        had.links[l] = lr;
      }
    }
  }
  const parts = sorted.flatMap(partsOf).sort((a, b) => a.at.localeCompare(b.at));
  return {
    ...first,
    at: parts[0]!.at,
    finishedAt: parts
      .map((p) => p.finishedAt)
      .sort()
      .at(-1)!,
    command: parts.map((p) => p.command).join(' && '),
    host: {
      loadavgAtStart: parts[0]!.host.loadavgAtStart,
      loadavgAtEnd: parts.at(-1)!.host.loadavgAtEnd,
      memGiB: first.host.memGiB,
    },
    links: [...new Set(sorted.flatMap((r) => r.links))],
    apps: [...apps.values()],
    parts,
  };
}

// ---------------------------------------------------------------- text

const MB = 1e6;
const mb = (b: number | null | undefined, digits = 1) => (b == null ? '—' : (b / MB).toFixed(digits));
const s1 = (ms: number | null | undefined) => (ms == null ? '—' : (ms / 1000).toFixed(ms < 10_000 ? 2 : 1));
const x = (v: number | null | undefined) => (v == null ? '—' : `${v}×`);

export function summaryText(r: SuiteResult): string {
  const lines = [
    `benchmark suite (${r.accel.toUpperCase()}, ${r.cpus} CPUs, n=${r.runs} per cell${r.quick ? ', quick' : ''})`,
  ];
  for (const a of r.apps) {
    lines.push(
      `${a.app}: overlay ${mb(a.sizes.overlay.total, 2)} MB (disk ${mb(a.sizes.overlay.disk, 2)} + memory ${mb(a.sizes.overlay.memory, 2)}), naive ${mb(a.sizes.naive.total, 2)} MB (${a.sizes.ratioVsNaive}), Elijah's scheme ${mb(a.sizes.elijah.total, 2)} MB (${a.sizes.ratioVsElijah}); local first response p50 ${s1(a.local.p50)} s`,
    );
    for (const l of r.links) {
      const lr = a.links[l]!;
      const cells = POLICIES.map((p) => `${p} ${s1(lr.summary[p].firstResponseMs.p50)} s`).join(', ');
      lines.push(
        `  ${l}: ${cells}; floor ${s1(lr.floor.floorMs)} s; baseline/early ${x(lr.ratios.baselineOverEarlyStart)}, early/floor ${x(lr.ratios.earlyStartOverFloor)}, install/early ${x(lr.ratios.remoteInstallOverEarlyStart)}`,
      );
    }
  }
  return lines.join('\n');
}

/** docs/benchmarks.md: the tables, generated; docs/benchmarks-notes.md (hand-written analysis) is appended when present. */
/** Appends a markdown section holding one table. */
function table(out: string[], heading: string, header: string[], rows: string[][]): void {
  out.push(`## ${heading}`, '');
  out.push(`| ${header.join(' | ')} |`, `|${header.map(() => '---|').join('')}`);
  for (const row of rows) out.push(`| ${row.join(' | ')} |`);
}

/** One row per app and link, in the result's order. */
function cells(
  r: SuiteResult,
  row: (a: AppResult, link: string, lr: AppResult['links'][string]) => string[],
): string[][] {
  return r.apps.flatMap((a) => r.links.map((l) => row(a, l, a.links[l]!)));
}

export function renderMarkdown(r: SuiteResult, where: { json: string; plots: string[] }): string {
  const out: string[] = [];
  out.push("# Benchmarks: real apps against Elijah's table", '');
  const when = (p: RunPart) =>
    `${p.at.slice(0, 16).replace('T', ' ')} UTC to ${p.finishedAt.slice(0, 16).replace('T', ' ')} UTC`;
  const load = (p: RunPart) =>
    `${p.host.loadavgAtStart.join(' / ')} at the start, ${p.host.loadavgAtEnd.join(' / ')} at the end`;
  const parts = partsOf(r);
  if (parts.length > 1) {
    out.push(
      `Generated by bench/suite.ts from ${parts.length} runs, merged by \`npm run bench -- suite --render A.json,B.json\`; raw results: \`${where.json}\`. Do not edit by hand: re-run the suite. The analysis below the tables comes from docs/benchmarks-notes.md.`,
      '',
    );
    for (const p of parts)
      out.push(
        `- ${p.apps.join(', ')} at ${p.links.join(', ')}: \`${p.command}\`, ${when(p)}; load average ${load(p)}.`,
      );
    out.push('');
  } else {
    out.push(
      `Generated by \`${r.command}\` (bench/suite.ts) from the run of ${when(parts[0]!)}; raw results: \`${where.json}\`. Do not edit by hand: re-run the suite. The analysis below the tables comes from docs/benchmarks-notes.md.`,
      '',
    );
  }
  out.push('## Setup', '');
  out.push(
    `- Host: ${r.cpus} CPUs, ${r.host.memGiB} GiB, ${r.accel.toUpperCase()} (${r.accelReason}).${parts.length > 1 ? '' : ` Load average ${load(parts[0]!)}.`}`,
  );
  out.push(
    `- Base VM: Debian ${r.base.suite} minbase + python3 + iproute2 (\`vmsynth base create debian --debian\`), ${r.base.memoryMiB} MiB of memory, ${(r.base.diskBytes / 2 ** 30).toFixed(0)} GiB ext4 disk, kernel ${r.base.kernel}; boots to its placeholder app in ${s1(r.base.bootMs)} s. Elijah's bases: Ubuntu 12.04 / Windows 7, 8 GB disk, 1 GB memory.`,
  );
  out.push(
    '- Each app is installed from Debian packages (`--no-install-recommends`) from a local apt repository of exactly those .debs, started behind guest/apps/offload-server.py and warmed with one request; the custom VM is saved and built into an overlay, then re-packed in the access order of its first request (`vmsynth overlay profile`).',
  );
  out.push(
    `- Links: a veth pair into a network namespace, both directions shaped by tc tbf; ${r.links.map((l) => `${l} ${r.apps[0]?.links[l]?.link.rateMbit ?? '?'} Mbit/s`).join(', ')}; no added delay (this kernel has no netem).`,
  );
  out.push("- Policies, each timed from the client starting to the app's reply to its real first request:");
  out.push(
    "  - **baseline**: the whole overlay is sent, verified, applied, then the VM is resumed (Elijah's baseline synthesis, to first response);",
  );
  out.push(
    "  - **early-start**: vmsynth's default: the VM resumes at once over FUSE; segments stream in access order and demand fetches jump the queue;",
  );
  out.push('  - **demand-only**: the VM resumes at once and only what it reads is sent;');
  out.push(
    '  - **remote-install**: the base VM is resumed and the same .debs are installed with apt from a repository served inside the namespace, over the same link; then the server starts and answers. The request itself is sent from the host, not over the link.',
  );
  out.push(
    `- Floor: the bytes the first response needs (demand-only's segment bytes before it, plus the manifest) at the link rate, plus a local resume of the fully synthesized VM to its first response. n = ${r.runs} per cell, round-robin over policies; p50 shown.`,
    '',
  );

  out.push("## Elijah's table, and ours", '');
  out.push(
    "Sizes in MB (10^6 bytes); synthesis at about 38 Mbit/s. Ours: overlay disk + memory (the split shares each segment's compressed bytes by its chunks' image), the app's install size (Installed-Size of its .debs), baseline synthesis to first response, and early start's first response.",
    '',
  );
  out.push(
    "| app (Elijah's) | Elijah: disk + memory | Elijah: install | Elijah: baseline | ours: disk + memory | ours: install (.debs) | ours: baseline | ours: early start |",
  );
  out.push('|---|---|---|---|---|---|---|---|');
  const wifi = r.links.includes('wifi') ? 'wifi' : r.links[0]!;
  for (const a of r.apps) {
    const e = ELIJAH[a.elijah];
    const lr = a.links[wifi]!;
    out.push(
      `| ${a.app} (${a.elijah}) | ${e ? `${e.diskMB} + ${e.memoryMB}` : '—'} | ${e?.installMB ?? '—'} | ${e ? `${e.baselineS} s` : '—'} | ${mb(a.sizes.overlay.disk)} + ${mb(a.sizes.overlay.memory)} | ${mb(a.sizes.repo.installedBytes)} (${mb(a.sizes.repo.bytes)}) | ${s1(lr.summary.baseline.firstResponseMs.p50)} s | ${s1(lr.summary['early-start'].firstResponseMs.p50)} s |`,
    );
  }
  out.push(
    '',
    `Our baseline and early-start columns are at ${wifi} (${r.apps[0]?.links[wifi]?.link.rateMbit} Mbit/s). Apps: ${r.apps.map((a) => `**${a.app}**: ${a.title}; ${a.note}`).join('. ')}.`,
    '',
  );

  table(
    out,
    'Overlay size',
    [
      'app',
      'naive (modified chunks raw)',
      "Elijah's scheme (xdelta3 + xz)",
      'vmsynth (zstd, signed, per-chunk SHA-256)',
      'vs naive',
      'vs Elijah',
    ],
    r.apps.map((a) => [
      a.app,
      mb(a.sizes.naive.total),
      mb(a.sizes.elijah.total),
      mb(a.sizes.overlay.total),
      String(a.sizes.ratioVsNaive),
      String(a.sizes.ratioVsElijah),
    ]),
  );
  out.push(
    '',
    "Elijah's scheme is re-run on our chunks (bench/elijah.ts); its metadata is not counted, ours (manifest, per-chunk hashes and the signature) is.",
    '',
  );

  table(
    out,
    'First response (s, p50 [p90])',
    [
      'app',
      'link',
      'baseline',
      'early-start',
      'demand-only',
      'remote-install',
      'floor',
      'baseline / early',
      'early / floor',
      'install / early',
      'replies = local',
    ],
    cells(r, (a, l, lr) => {
      const cell = (p: SuitePolicyName) =>
        `${s1(lr.summary[p].firstResponseMs.p50)} [${s1(lr.summary[p].firstResponseMs.p90)}]${lr.summary[p].failures ? ` (${lr.summary[p].failures} failed)` : ''}`;
      const ok = POLICIES.reduce((sum, p) => sum + lr.summary[p].repliesMatchingLocal, 0);
      const n = POLICIES.reduce((sum, p) => sum + lr.summary[p].n, 0);
      return [
        a.app,
        l,
        cell('baseline'),
        cell('early-start'),
        cell('demand-only'),
        cell('remote-install'),
        s1(lr.floor.floorMs),
        x(lr.ratios.baselineOverEarlyStart),
        x(lr.ratios.earlyStartOverFloor),
        x(lr.ratios.remoteInstallOverEarlyStart),
        `${ok}/${n}`,
      ];
    }),
  );
  out.push('');
  table(
    out,
    'Where the time goes (p50)',
    [
      'app',
      'link',
      'overlay',
      'early-start: VM running',
      'early-start: MB sent before reply',
      'demand-only: MB before reply',
      'floor: transfer + local resume',
      'remote install: VM running + install',
    ],
    cells(r, (a, l, lr) => {
      const inst = p50((lr.samples['remote-install'] ?? []).map((s) => s.installMs ?? 0));
      return [
        a.app,
        l,
        `${mb(a.overlay.bytes)} MB, ${a.overlay.segments} segments`,
        `${s1(lr.summary['early-start'].resumedMs)} s`,
        mb(lr.summary['early-start'].bytesBeforeFirstResponse),
        mb(lr.summary['demand-only'].bytesBeforeFirstResponse),
        `${s1(lr.floor.transferMs)} + ${s1(lr.floor.localFirstResponseMs)} s`,
        `${s1(lr.summary['remote-install'].resumedMs)} + ${s1(inst)} s`,
      ];
    }),
  );
  out.push('');
  const failed = failedRuns(r);
  if (failed.length) {
    out.push('## Failed runs', '');
    out.push(
      `${failed.length} of ${r.apps.length * r.links.length * measured(r).length * r.runs} runs failed; their cells above are summarized over the runs that succeeded.`,
      '',
    );
    for (const f of failed) out.push(`- ${f}`);
    out.push('');
  }
  if (where.plots.length) {
    out.push('## Plots', '');
    for (const p of where.plots) out.push(`![${p}](${p})`, '');
  }
  let notes = '';
  try {
    notes = readFileSync(path.join(packageRoot(), 'docs', 'benchmarks-notes.md'), 'utf8');
  } catch {
    // no hand-written notes
  }
  if (notes) out.push(notes.trim(), '');
  return out.join('\n');
}
