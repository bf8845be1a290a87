/**
 * The benches' charts: Vega-Lite specs (declarative JSON: data, marks,
 * encodings) compiled and rendered to SVG in Node by Vega's headless view,
 * with no browser and no canvas. Vega-Lite replaced hand-drawn SVG: it
 * lays out axes, legends, labels and panels itself, and a spec can be
 * pasted into the Vega editor to explore a result.
 *
 * `groupedBars` is the one shape the benches draw: bars grouped along x,
 * one colour per series, each bar labelled with its value.
 */
import { parse, View } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

export type { TopLevelSpec } from 'vega-lite';

/** The Vega-Lite schema every chart's spec names. */
export const VEGA_LITE_SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';

/** Renders a Vega-Lite spec to an SVG document (ending in a newline, as a text file should). */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new View(parse(compile(spec).spec), { renderer: 'none' });
  try {
    return `${await view.toSVG()}\n`;
  } finally {
    view.finalize();
  }
}

export interface Bar {
  /** The x group the bar stands in (a link, an app pair). */
  group: string;
  /** The series: its colour and legend entry. */
  series: string;
  value: number;
}

export interface BarsOptions {
  title: string;
  yTitle: string;
  bars: Bar[];
  /** Series in legend order, with their colours. */
  series: { name: string; color: string }[];
  /** Digits after the point in the bar labels (default 0). */
  digits?: number;
  width?: number;
  height?: number;
}

/** A grouped bar panel (a unit spec: put several in a `vconcat`/`hconcat`). */
export function groupedBars(o: BarsOptions) {
  const names = o.series.map((s) => s.name);
  const groups = [...new Set(o.bars.map((b) => b.group))];
  // A group label "a, b" is drawn on two lines.
  const x = {
    field: 'group',
    type: 'nominal' as const,
    title: null,
    sort: groups,
    scale: { paddingInner: 0.25 },
    axis: { labelAngle: 0, labelExpr: "split(datum.label, ', ')" },
  };
  const xOffset = { field: 'series', type: 'nominal' as const, scale: { domain: names, paddingInner: 0.08 } };
  const y = { field: 'value', type: 'quantitative' as const, title: o.yTitle };
  return {
    title: o.title,
    width: o.width ?? Math.max(240, groups.length * names.length * 46),
    height: o.height ?? 220,
    data: { values: o.bars },
    encoding: { x, xOffset, y },
    layer: [
      {
        mark: { type: 'bar' as const },
        encoding: {
          color: {
            field: 'series',
            type: 'nominal' as const,
            title: null,
            scale: { domain: names, range: o.series.map((s) => s.color) },
          },
        },
      },
      {
        mark: { type: 'text' as const, dy: -6, fontSize: 9 },
        encoding: { text: { field: 'value', type: 'quantitative' as const, format: `.${o.digits ?? 0}f` } },
      },
    ],
  };
}

/** Panels stacked one above the other, as one chart. */
export function stacked(title: string, panels: ReturnType<typeof groupedBars>[]): TopLevelSpec {
  return {
    $schema: VEGA_LITE_SCHEMA,
    title: { text: title, anchor: 'start', fontSize: 14 },
    vconcat: panels,
    resolve: { scale: { color: 'independent', xOffset: 'independent' } },
    config: { font: 'sans-serif', view: { stroke: null } },
  };
}
