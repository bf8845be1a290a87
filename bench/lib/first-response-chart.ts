/**
 * The first-response bench's chart (a Vega-Lite spec, rendered by chart.ts):
 * one panel per link, p50 bars and p90 ticks per variant, and the floor and
 * the overlapped bound as rules.
 */
import { VEGA_LITE_SCHEMA, type TopLevelSpec } from './chart.js';

/** What the chart reads of one link's results. */
export interface PlottedLink {
  link: { name: string; rateMbit: number };
  summary: Record<string, { firstResponseMs: { p50: number | null; p90: number | null } }>;
  floor: { floorMs: number; overlappedFloorMs: number };
}

const COLORS: Record<string, string> = {
  'early-start': '#2b7bb9',
  baseline: '#c0504d',
  'demand-only': '#6a9a3a',
  'early-start+profile': '#8064a2',
};

/** One panel per link: p50 bars and p90 ticks per variant, the floor dashed, the overlapped bound dotted. */
export function firstResponseChart(title: string, perLink: PlottedLink[]): TopLevelSpec {
  const linkName = (l: PlottedLink['link']) => `${l.name}: ${l.rateMbit} Mbit/s`;
  const variants = [...new Set(perLink.flatMap((p) => Object.keys(p.summary)))];
  const rows = perLink.flatMap((p) => [
    ...Object.entries(p.summary).flatMap(([variant, s]) =>
      s.firstResponseMs.p50 === null
        ? []
        : [
            {
              kind: 'bar',
              link: linkName(p.link),
              variant,
              p50: s.firstResponseMs.p50,
              p90: s.firstResponseMs.p90 ?? s.firstResponseMs.p50,
            },
          ],
    ),
    { kind: 'bound', link: linkName(p.link), bound: 'floor', ms: p.floor.floorMs },
    { kind: 'bound', link: linkName(p.link), bound: 'overlapped bound', ms: p.floor.overlappedFloorMs },
  ]);
  const x = { field: 'variant', type: 'nominal' as const, title: null, sort: variants, axis: { labelAngle: -20 } };
  const y = (field: string) => ({ field, type: 'quantitative' as const, title: 'first response, ms' });
  const bars = [{ filter: "datum.kind === 'bar'" }];
  return {
    $schema: VEGA_LITE_SCHEMA,
    title: {
      text: title,
      subtitle: 'bars p50, ticks p90; dashed: floor (transfer + local resume), dotted: overlapped bound',
      anchor: 'start',
    },
    data: { values: rows },
    facet: { column: { field: 'link', type: 'nominal', title: null, sort: perLink.map((p) => linkName(p.link)) } },
    spec: {
      width: Math.max(200, 70 * variants.length),
      height: 240,
      layer: [
        {
          transform: bars,
          mark: { type: 'bar' },
          encoding: {
            x,
            y: y('p50'),
            color: {
              field: 'variant',
              type: 'nominal',
              title: null,
              scale: { domain: variants, range: variants.map((v) => COLORS[v] ?? '#888888') },
            },
          },
        },
        { transform: bars, mark: { type: 'tick', color: 'black' }, encoding: { x, y: y('p90') } },
        {
          transform: bars,
          mark: { type: 'text', dy: -6, fontSize: 9 },
          encoding: { x, y: y('p50'), text: { field: 'p50', type: 'quantitative' } },
        },
        {
          transform: [{ filter: "datum.kind === 'bound'" }],
          mark: { type: 'rule', color: 'black' },
          encoding: {
            y: y('ms'),
            strokeDash: {
              field: 'bound',
              type: 'nominal',
              title: null,
              scale: {
                domain: ['floor', 'overlapped bound'],
                range: [
                  [6, 4],
                  [2, 3],
                ],
              },
            },
          },
        },
      ],
    },
  };
}
