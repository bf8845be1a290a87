/**
 * The handoff bench's report: the summary per app, link and mode (p50 and
 * p90 of downtime, the stop, the whole move, bytes over A-B against the
 * compressed delta), its lines on the console with the ratios against the
 * baselines, and the plot of the request stream across one handoff of each.
 */
import { VEGA_LITE_SCHEMA, type TopLevelSpec } from './chart.js';
import type { Link } from './link.js';
import type { Mode, RunResult } from './handoff-run.js';
import { percentile, round } from './stats.js';

export const MODE_NAMES: Record<Mode, string> = {
  early: 'vmsynth handoff, early start',
  whole: 'vmsynth handoff, safe mode (--whole)',
  migrate: "QEMU's live migration with its disk (libvirt's way)",
};

export interface Failure {
  app: string;
  link: string;
  mode: Mode;
  run: number;
  error: string;
}

export interface SummaryRow {
  app: string;
  link: string;
  rateMbit: number;
  mode: Mode;
  n: number;
  failed: number;
  /** (null: no run of the cell succeeded.) */
  downtimeMs: { p50: number | null; p90: number | null };
  stoppedMs: number | null;
  totalMs: number | null;
  bytesOverAB: number | null;
  deltaBytes: number | null;
  bytesOverDelta: number | null;
  /** (null: no run of the cell succeeded.) */
  countedOnce: boolean | null;
}

export function summarize(
  results: RunResult[],
  failures: Failure[],
  apps: string[],
  links: Link[],
  modes: readonly Mode[],
): SummaryRow[] {
  return apps.flatMap((app) =>
    links.flatMap((l) =>
      modes.flatMap((mode) => {
        const rs = results.filter((r) => r.app === app && r.link === l.name && r.mode === mode);
        const failed = failures.filter((f) => f.app === app && f.link === l.name && f.mode === mode).length;
        if (rs.length + failed === 0) return [];
        const q = (f: (r: RunResult) => number, pct = 0.5) => round(percentile(rs.map(f), pct));
        return [
          {
            app,
            link: l.name,
            rateMbit: l.rateMbit,
            mode,
            n: rs.length,
            failed,
            downtimeMs: { p50: q((r) => r.downtimeMs), p90: q((r) => r.downtimeMs, 0.9) },
            stoppedMs: q((r) => r.stoppedMs),
            totalMs: q((r) => r.totalMs),
            bytesOverAB: q((r) => r.bytesOverAB),
            deltaBytes: q((r) => r.deltaBytes),
            bytesOverDelta: round(
              percentile(
                rs.map((r) => r.bytesOverAB / r.deltaBytes),
                0.5,
              ),
              3,
            ),
            countedOnce: rs.length ? rs.every((r) => r.countedOnce) : null,
          },
        ];
      }),
    ),
  );
}

/** The summary on the console, with the ratios the targets are stated in. */
export function printSummary(summary: SummaryRow[], apps: string[], links: Link[]): void {
  for (const app of apps)
    for (const l of links) {
      const rows = summary.filter((x) => x.app === app && x.link === l.name);
      if (rows.length === 0) continue;
      console.log(`\n${app}, ${l.name} (${l.rateMbit} Mbit/s A-B)`);
      for (const s of rows)
        console.log(
          `  ${s.mode.padEnd(7)} downtime p50 ${s.downtimeMs.p50} ms (p90 ${s.downtimeMs.p90}), stop ${s.stoppedMs} ms, total ${s.totalMs} ms, over A-B ${s.bytesOverAB} bytes` +
            (s.mode === 'migrate'
              ? ` (QEMU counted ${s.deltaBytes} for RAM, devices and disk), the app's state went on: ${s.countedOnce}; failed (the guest dead on B, or no convergence) in ${s.failed} of ${s.n + s.failed} runs`
              : ` = ${s.bytesOverDelta}x the compressed delta (target ≤ 1.2), every request once: ${s.countedOnce}` +
                (s.failed ? `; ${s.failed} run(s) failed` : '')),
        );
      const e = rows.find((x) => x.mode === 'early');
      const w = rows.find((x) => x.mode === 'whole');
      const m = rows.find((x) => x.mode === 'migrate');
      if (e?.downtimeMs.p50 && w?.downtimeMs.p50)
        console.log(
          `  early start / safe mode downtime: ${round(e.downtimeMs.p50 / w.downtimeMs.p50, 2)}x (target downtime ≤ 1000 ms)`,
        );
      if (m?.bytesOverAB && e?.bytesOverAB && m.totalMs && e.totalMs && m.downtimeMs.p50 && e.downtimeMs.p50)
        console.log(
          `  QEMU's migration / early start: ${round(m.bytesOverAB / e.bytesOverAB, 1)}x the bytes, ${round(m.totalMs / e.totalMs, 1)}x the time, ${round(m.downtimeMs.p50 / e.downtimeMs.p50, 2)}x the downtime (target ≥ 10x bytes and time at 38 Mbit/s)`,
        );
    }
}

/**
 * The request stream across the first handoff of each app, link and mode (the safe mode left out:
 * its stream looks like early start's): reply latency against time.
 */
export function handoffChart(all: Array<Pick<RunResult, 'app' | 'link' | 'mode' | 'samples'>>): TopLevelSpec {
  const runs = all.filter((r) => r.mode !== 'whole');
  const first = runs.filter(
    (r, i) => runs.findIndex((x) => x.app === r.app && x.link === r.link && x.mode === r.mode) === i,
  );
  const values = first.flatMap((r) =>
    r.samples
      .filter((s) => s.at > -1000 && s.at < (r.samples.find((x) => x.on === 'B')?.at ?? 4500) + 1500)
      .map((s) => ({
        at: s.at,
        latencyMs: s.latencyMs,
        on: s.on,
        run: `${r.app}, A-B ${r.link}, ${MODE_NAMES[r.mode]}`,
      })),
  );
  return {
    $schema: VEGA_LITE_SCHEMA,
    title: {
      text: 'Requests across a handoff (one at a time): each reply, when it came and how long it took',
      anchor: 'start',
    },
    data: { values },
    // Each run on its own time axis: QEMU's migration takes far longer than a handoff.
    resolve: { scale: { x: 'independent' } },
    facet: {
      row: {
        field: 'run',
        type: 'nominal',
        title: null,
        sort: null,
        header: { labelAngle: 0, labelAlign: 'left', labelOrient: 'top', labelFontSize: 11 },
      },
    },
    spec: {
      width: 640,
      height: 90,
      mark: { type: 'line', strokeWidth: 1 },
      encoding: {
        x: { field: 'at', type: 'quantitative', title: 'ms since the handoff was asked for' },
        y: { field: 'latencyMs', type: 'quantitative', title: 'reply ms', scale: { type: 'log' } },
        color: { field: 'on', type: 'nominal', title: 'served by', scale: { domain: ['A', 'B'] } },
      },
    },
  };
}
