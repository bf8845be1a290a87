/**
 * The benches' charts: a grouped bar chart renders to SVG with one bar per
 * value, in its series' colour, labelled with its value; and the store
 * bench's --plot draws a saved result (with partial rows) again, refusing
 * other options; the first-response bench's chart has a bar per link and
 * variant, and its floor and overlapped bound.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { groupedBars, renderSvg, stacked } from '../../bench/lib/chart.js';
import { firstResponseChart } from '../../bench/lib/first-response-chart.js';

const run = promisify(execFile);
const MAIN = fileURLToPath(new URL('../../dist/bench/entry.cjs', import.meta.url));

/** The bars of an SVG: their aria labels and fills. */
function bars(svg: string): { label: string; fill: string }[] {
  return [...svg.matchAll(/<path aria-label="([^"]*)"[^>]*aria-roledescription="bar"[^>]*fill="([^"]*)"/g)].map(
    (m) => ({ label: m[1]!, fill: m[2]! }),
  );
}

t.test('grouped bars: one bar per value, in its series colour, labelled', async (t) => {
  const svg = await renderSvg(
    stacked('a title', [
      groupedBars({
        title: 'panel',
        yTitle: 'ms',
        series: [
          { name: 'cold', color: '#d62728' },
          { name: 'warm', color: '#2ca02c' },
        ],
        bars: [
          { group: 'wifi', series: 'cold', value: 1762 },
          { group: 'wifi', series: 'warm', value: 1590 },
          { group: 'lan', series: 'cold', value: 1611 },
          { group: 'lan', series: 'warm', value: 1540 },
        ],
      }),
    ]),
  );
  t.match(svg, /^<svg [\s\S]*<\/svg>\n$/, 'a whole SVG document, ending in a newline');
  t.same(bars(svg), [
    { label: 'group: wifi; ms: 1762; series: cold', fill: '#d62728' },
    { label: 'group: wifi; ms: 1590; series: warm', fill: '#2ca02c' },
    { label: 'group: lan; ms: 1611; series: cold', fill: '#d62728' },
    { label: 'group: lan; ms: 1540; series: warm', fill: '#2ca02c' },
  ]);
  for (const v of ['1762', '1590', '1611', '1540', 'a title', 'panel']) t.match(svg, `>${v}<`, `"${v}" is drawn`);
});

t.test('store --plot draws a saved result again; other options are refused', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-test-chart-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const summary = (fr: number) => ({ firstResponseMs: { p50: fr } });
  const link = { name: 'wifi', rateMbit: 38 };
  const side = (fr: number, bytes: number) => ({ firstResponseMs: fr, linkBytes: bytes });
  const result = {
    accel: 'tcg',
    runs: 3,
    overlay: { segmentsBytes: 18 << 20 },
    localResume: { firstResponseMs: { p50: 1241 } },
    links: [{ link, summary: { cold: summary(1762), warm: summary(1590), s3: summary(1711) } }],
    partial: [
      {
        pair: 'demo',
        link: 'wifi',
        cold: side(2210, 20.7e6),
        partial: side(2060, 20.8e6),
        share: { unsharedBytes: 19.4e6 },
      },
    ],
  };
  const file = path.join(dir, 'store-x.json');
  await fsp.writeFile(file, JSON.stringify(result));
  const { stdout } = await run(process.execPath, [MAIN, 'store', '--plot', file]);
  t.match(stdout, `plot: ${path.join(dir, 'store-x.svg')}`);
  const drawn = bars(await fsp.readFile(path.join(dir, 'store-x.svg'), 'utf8'));
  t.same(
    drawn.map((b) => b.label.replace(/^group: [^;]*; /, '').replace(/; series: .*/, '')),
    [
      ...['1241', '1762', '1590', '1711'].map((v) => `first response p50, ms: ${v}`),
      ...['20.7', '20.8', '19.4'].map((v) => `bytes over the client's link, MB: ${v}`),
      ...['2.21', '2.06'].map((v) => `first response p50, s: ${v}`),
    ],
    'local, cold, warm, s3; then partial bytes and first responses',
  );
  const refused = await run(process.execPath, [MAIN, 'store', '--plt', file]).then(
    () => null,
    (e: { code: number; stderr: string }) => e,
  );
  t.equal(refused?.code, 1);
  t.match(refused?.stderr, /takes no options but --plot RESULT\.json/);
});

t.test('the first-response chart: a bar per link and variant, and the two bounds per link', async (t) => {
  const summary = (p50: number) => ({ firstResponseMs: { p50, p90: p50 + 100 } });
  const svg = await renderSvg(
    firstResponseChart('fr', [
      {
        link: { name: 'wifi', rateMbit: 38 },
        summary: { 'early-start': summary(2000), baseline: summary(5000) },
        floor: { floorMs: 1800, overlappedFloorMs: 1500 },
      },
      {
        link: { name: 'lan', rateMbit: 1000 },
        summary: { 'early-start': summary(1500), baseline: summary(2500) },
        floor: { floorMs: 1300, overlappedFloorMs: 1250 },
      },
    ]),
  );
  t.same(
    bars(svg).map((b) => b.label.replace(/; first response, ms: \d+/, '')),
    ['variant: early-start', 'variant: baseline', 'variant: early-start', 'variant: baseline'],
  );
  const rules = svg.match(/aria-roledescription="rule mark"/g) ?? [];
  t.equal(rules.length, 4, 'floor and overlapped bound on each link');
  t.notMatch(svg, /NaN|undefined|Infinity/);
});
