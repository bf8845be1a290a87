/**
 * The suite's two charts, as Vega-Lite specs rendered to SVG (chart.ts):
 * first response per app and policy (p50 bars, p90 ticks, the floor as a
 * dashed tick per app, one panel per link, log scale), and one early-start
 * run's segment timeline (bytes handed to the socket over time, background
 * and demand apart, with the VM's resume and the first response marked).
 */
import { renderSvg, VEGA_LITE_SCHEMA, type TopLevelSpec } from './chart.js';
import { POLICIES, type SuitePolicyName, type SuiteResult } from './suite-report.js';

const MB = 1e6;

const COLORS: Record<SuitePolicyName, string> = {
  baseline: '#c0504d',
  'early-start': '#2b7bb9',
  'demand-only': '#6a9a3a',
  'remote-install': '#8a8a8a',
};

export function firstResponseSpec(r: SuiteResult): TopLevelSpec {
  const linkName = (l: string) => `${l}: ${r.apps[0]?.links[l]?.link.rateMbit} Mbit/s`;
  const bars = r.apps.flatMap((a) =>
    r.links.flatMap((l) =>
      POLICIES.flatMap((p) => {
        const c = a.links[l]?.summary[p].firstResponseMs;
        if (!c || c.p50 === null) return [];
        return [
          { kind: 'bar', app: a.app, link: linkName(l), policy: p, p50: c.p50 / 1000, p90: (c.p90 ?? c.p50) / 1000 },
        ];
      }),
    ),
  );
  const floors = r.apps.flatMap((a) =>
    r.links.flatMap((l) => {
      const f = a.links[l]?.floor.floorMs;
      return f === undefined ? [] : [{ kind: 'floor', app: a.app, link: linkName(l), floor: f / 1000 }];
    }),
  );
  const xOffset = { field: 'policy', type: 'nominal' as const, scale: { domain: [...POLICIES] } };
  const y = (field: string) => ({
    field,
    type: 'quantitative' as const,
    scale: { type: 'log' as const },
    title: 'first response, s (log scale)',
  });
  const only = (kind: string) => [{ filter: `datum.kind === '${kind}'` }];
  return {
    $schema: VEGA_LITE_SCHEMA,
    title: {
      text: `first response per app and policy (${r.accel.toUpperCase()}, n=${r.runs})`,
      subtitle: 'bars p50, black ticks p90, dashed tick the floor (transfer + local resume)',
      anchor: 'start',
    },
    data: { values: [...bars, ...floors] },
    facet: { column: { field: 'link', type: 'nominal', title: null, sort: r.links.map(linkName) } },
    spec: {
      width: Math.max(220, 110 * r.apps.length),
      height: 260,
      encoding: { x: { field: 'app', type: 'nominal', title: null, axis: { labelAngle: 0 } } },
      layer: [
        {
          transform: only('bar'),
          mark: { type: 'bar' },
          encoding: {
            xOffset,
            // Not stacked: a log scale has no zero for a stack to start from.
            y: { ...y('p50'), stack: null },
            color: {
              field: 'policy',
              type: 'nominal',
              title: null,
              scale: { domain: [...POLICIES], range: POLICIES.map((p) => COLORS[p]) },
            },
            tooltip: [
              { field: 'app' },
              { field: 'policy' },
              { field: 'p50', format: '.2f' },
              { field: 'p90', format: '.2f' },
            ],
          },
        },
        { transform: only('bar'), mark: { type: 'tick', color: 'black' }, encoding: { xOffset, y: y('p90') } },
        {
          transform: only('bar'),
          mark: { type: 'text', dy: -6, fontSize: 9 },
          encoding: { xOffset, y: y('p50'), text: { field: 'p50', type: 'quantitative', format: '.1f' } },
        },
        {
          transform: only('floor'),
          mark: { type: 'tick', color: 'black', strokeDash: [5, 3], thickness: 1, size: 80 },
          encoding: { y: y('floor') },
        },
      ],
    },
  };
}

/** The app and link whose early-start timeline is drawn: the biggest overlay that has one, at wifi if it can. */
function pickTimeline(r: SuiteResult) {
  const pick =
    [...r.apps]
      .sort((a, b) => b.overlay.bytes - a.overlay.bytes)
      .find((a) => r.links.some((l) => a.links[l]?.timeline)) ?? r.apps[0];
  const link =
    r.links.includes('wifi') && pick?.links.wifi?.timeline ? 'wifi' : r.links.find((l) => pick?.links[l]?.timeline);
  const t = pick && link ? pick.links[link]!.timeline : null;
  return pick && link && t ? { pick, link, t } : null;
}

export function timelineSpec(r: SuiteResult): TopLevelSpec {
  const found = pickTimeline(r);
  if (!found)
    return {
      $schema: VEGA_LITE_SCHEMA,
      title: 'no early-start timeline',
      data: { values: [] },
      mark: 'point',
    };
  const { pick, link, t } = found;
  let sent = 0;
  const sends = t.sends.map((s) => {
    const from = sent / MB;
    sent += s.bytes;
    return { s: s.ms / 1000, from, to: sent / MB, lane: s.lane, segment: s.index };
  });
  const marks = (
    [
      [t.resumedMs, 'VM resumed'],
      [t.firstResponseMs, 'first response'],
    ] as const
  ).flatMap(([ms, what], i) =>
    ms === null ? [] : [{ s: ms / 1000, label: `${what} ${(ms / 1000).toFixed(2)} s`, px: 12 + 16 * i }],
  );
  const demand = t.sends.filter((s) => s.lane === 'demand').length;
  const x = { field: 's', type: 'quantitative' as const, title: 'seconds since the client started' };
  return {
    $schema: VEGA_LITE_SCHEMA,
    title: {
      text: `${pick.app}, early start at ${link} (${pick.links[link]!.link.rateMbit} Mbit/s): segments sent over time`,
      subtitle: `${t.sends.length} segments, ${demand} on the demand lane`,
      anchor: 'start',
    },
    width: 660,
    height: 280,
    layer: [
      {
        data: { values: sends },
        mark: { type: 'rule' },
        encoding: {
          x,
          strokeWidth: { condition: { test: "datum.lane === 'demand'", value: 4 }, value: 2 },
          y: { field: 'from', type: 'quantitative', title: 'MB of segments sent' },
          y2: { field: 'to' },
          color: {
            field: 'lane',
            type: 'nominal',
            title: null,
            scale: { domain: ['background', 'demand'], range: ['#2b7bb9', '#d62728'] },
          },
          tooltip: [{ field: 'segment' }, { field: 'lane' }, { field: 's', title: 'at (s)', format: '.3f' }],
        },
      },
      {
        // Demand segments are short strokes among many: a dot each makes them visible.
        data: { values: sends.filter((x) => x.lane === 'demand') },
        mark: { type: 'point', filled: true, size: 22, color: '#d62728' },
        encoding: { x, y: { field: 'to', type: 'quantitative' } },
      },
      {
        data: { values: marks },
        mark: { type: 'rule', strokeDash: [4, 3], color: 'black' },
        encoding: { x },
      },
      {
        data: { values: marks },
        mark: { type: 'text', align: 'left', dx: 4, dy: -4, fontSize: 11 },
        encoding: { x, y: { field: 'px', type: 'quantitative', scale: null }, text: { field: 'label' } },
      },
    ],
  };
}

export function svgFirstResponse(r: SuiteResult): Promise<string> {
  return renderSvg(firstResponseSpec(r));
}

export function svgTimeline(r: SuiteResult): Promise<string> {
  return renderSvg(timelineSpec(r));
}
