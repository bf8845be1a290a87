/**
 * The suite's report, on a made-up result: the completeness check finds
 * what is missing, the markdown puts our numbers beside Elijah's, the plots
 * draw one bar per app, link and policy and one mark per segment.
 */
import t from 'tap';
import {
  checkSuiteResult,
  ELIJAH,
  failedRuns,
  mergeSuiteResults,
  POLICIES,
  renderMarkdown,
  summaryText,
  type AppResult,
  type CellSummary,
  type SuiteResult,
} from '../../bench/lib/suite-report.js';
import { svgFirstResponse, svgTimeline } from '../../bench/lib/suite-charts.js';

function cell(ms: number, n = 2): CellSummary {
  return {
    n,
    failures: 0,
    firstResponseMs: { p50: ms, p90: ms + 100, min: ms, max: ms + 100, mean: ms + 50 },
    bytesBeforeFirstResponse: 2e6,
    resumedMs: 700,
    repliesMatchingLocal: n,
  };
}

function app(name: string, elijah: string, links: string[]): AppResult {
  return {
    app: name,
    title: `${name} app`,
    elijah,
    note: 'a note',
    packages: ['pkg'],
    input: { description: 'input', bytes: 1000 },
    sizes: {
      overlay: { total: 12e6, segments: 11e6, manifest: 1e6, memory: 8e6, disk: 3e6 },
      naive: { total: 80e6, memory: 60e6, disk: 20e6 },
      elijah: { total: 13e6, xdeltaItems: 10, rawItems: 2 },
      repo: { debs: 3, bytes: 5e6, installedBytes: 20e6 },
      ratioVsNaive: 0.15,
      ratioVsElijah: 0.92,
    },
    prep: { cached: true, createMs: null, customizeMs: null, profileMs: null, elijahMs: null },
    overlay: { segments: 12, segmentBytes: 1 << 20, bytes: 12e6, manifestBytes: 1e6 },
    local: { firstResponseMs: [1500, 1600], p50: 1550, reply: '{"app":"x"}' },
    links: Object.fromEntries(
      links.map((l) => [
        l,
        {
          link: { name: l, rateMbit: l === 'wifi' ? 38 : 1000, burst: '32kbit', latency: '50ms', delay: 'none' },
          summary: {
            baseline: cell(40_000),
            'early-start': cell(4000),
            'demand-only': cell(3500),
            'remote-install': cell(90_000),
          },
          floor: { neededBytes: 2e6, manifestBytes: 1e6, transferMs: 630, localFirstResponseMs: 1550, floorMs: 2180 },
          ratios: {
            baselineOverEarlyStart: 10,
            earlyStartOverFloor: 1.83,
            remoteInstallOverEarlyStart: 22.5,
            demandOnlyOverEarlyStart: 0.88,
          },
          samples: Object.fromEntries(
            POLICIES.map((p) => [
              p,
              [1, 2].map(() => ({
                firstResponseMs: 4000,
                resumedMs: 700,
                finishedMs: 9000,
                bytesBeforeFirstResponse: 2e6,
                demandRequests: 3,
                replyMatchesLocal: true,
                ...(p === 'remote-install' ? { installMs: 80_000 } : {}),
              })),
            ]),
          ),
          failures: {},
          timeline: {
            sends: [
              { ms: 10, index: 0, lane: 'background', bytes: 1e6 },
              { ms: 900, index: 7, lane: 'demand', bytes: 1e6 },
              { ms: 950, index: 1, lane: 'background', bytes: 1e6 },
            ],
            resumedMs: 700,
            firstResponseMs: 4000,
            finishedMs: 9000,
          },
        },
      ]),
    ),
  };
}

function result(): SuiteResult {
  const links = ['wifi', 'lan'];
  return {
    bench: 'suite',
    version: 1,
    at: '2026-11-22T08:00:00.000Z',
    finishedAt: '2026-11-22T09:00:00.000Z',
    command: 'npm run bench -- suite',
    quick: false,
    accel: 'tcg',
    accelReason: 'no vmx',
    cpus: 2,
    host: { loadavgAtStart: [1, 1, 1], loadavgAtEnd: [1, 1, 1], memGiB: 24 },
    runs: 2,
    base: {
      name: 'debian',
      suite: 'bookworm',
      memoryMiB: 1024,
      diskBytes: 4 * 2 ** 30,
      kernel: 'linux-image-x',
      bootMs: 14000,
    },
    policies: [...POLICIES],
    links,
    apps: [app('speech', 'SPEECH', links), app('face', 'FACE', links)],
  };
}

t.test('the completeness check', async (t) => {
  t.same(checkSuiteResult(result()), [], 'a complete result passes');
  const missingLink = result();
  delete missingLink.apps[1]!.links.lan;
  t.match(checkSuiteResult(missingLink), [/face: no results for link lan/]);
  const failed = result();
  failed.apps[0]!.links.wifi!.summary['early-start'] = { ...cell(4000, 1), failures: 1 };
  failed.apps[0]!.links.wifi!.failures['early-start'] = ['VMS_GUEST_TIMEOUT: the app did not answer'];
  failed.apps[0]!.links.wifi!.samples['early-start']!.pop();
  t.same(checkSuiteResult(failed), [], 'a run that failed, with its error, is reported, not a gap');
  t.same(failedRuns(failed), ['speech:wifi/early-start: VMS_GUEST_TIMEOUT: the app did not answer']);
  t.same(failedRuns(result()), [], 'no failed runs');
  const md = renderMarkdown(failed, { json: 'r.json', plots: [] });
  t.match(md, /4\.00 \[4\.10\] \(1 failed\)/, 'the cell says how many of its runs failed');
  t.match(
    md,
    /## Failed runs\n\n1 of 32 runs failed[^\n]*\n\n- speech:wifi\/early-start: VMS_GUEST_TIMEOUT: the app did not answer\n/,
    'and the docs list each failure with its error',
  );
  t.notMatch(
    renderMarkdown(result(), { json: 'r.json', plots: [] }),
    /^## Failed runs/m,
    'no such section when every run succeeded',
  );
  const unaccounted = result();
  unaccounted.apps[0]!.links.wifi!.summary['early-start'] = cell(4000, 1);
  t.match(
    checkSuiteResult(unaccounted).join('\n'),
    /speech:wifi\/early-start: 1 of 2 runs succeeded, 0 failed/,
    'a run neither measured nor failed is a gap',
  );
  const allFailed = result();
  allFailed.apps[1]!.links.lan!.summary.baseline = { ...cell(4000, 0), failures: 2 };
  allFailed.apps[1]!.links.lan!.failures.baseline = ['e1', 'e2'];
  t.match(
    checkSuiteResult(allFailed).join('\n'),
    /face:lan\/baseline: 0 of 2 runs succeeded \(e1\), 2 failed/,
    'a cell with no success is a gap',
  );
  const differs = result();
  differs.apps[0]!.links.lan!.summary.baseline.repliesMatchingLocal = 1;
  t.match(checkSuiteResult(differs).join('\n'), /1 replies differ from the local VM's/);
  const noTimeline = result();
  noTimeline.apps[1]!.links.wifi!.timeline = null;
  t.match(checkSuiteResult(noTimeline).join('\n'), /face:wifi: no early-start segment timeline/);
  const some = result();
  some.policies = ['early-start', 'demand-only'];
  for (const a of some.apps) {
    for (const l of Object.values(a.links)) {
      for (const p of ['baseline', 'remote-install'] as const) {
        l.summary[p] = { ...cell(0, 0), firstResponseMs: { p50: null, p90: null, min: null, max: null, mean: null } };
        l.samples[p] = [];
      }
    }
  }
  t.same(checkSuiteResult(some), [], 'a run of some policies (--policies) is complete without the others');
  t.match(
    summaryText(some),
    /baseline — s, early-start 4\.00 s, demand-only 3\.50 s, remote-install — s/,
    'and shows them as not measured',
  );
  some.apps[0]!.links.wifi!.summary['early-start'] = cell(4000, 1);
  t.match(
    checkSuiteResult(some).join('\n'),
    /speech:wifi\/early-start: 1 of 2 runs succeeded/,
    'its own policies are still checked',
  );
  const noLocal = result();
  noLocal.apps[0]!.local.firstResponseMs = [];
  t.match(
    checkSuiteResult(noLocal).join('\n'),
    /speech: local resume runs/,
    'an app with no local resume has no floor',
  );
  const noElijah = result();
  noElijah.apps[0]!.sizes.elijah.total = 0;
  t.match(checkSuiteResult(noElijah).join('\n'), /speech: Elijah-scheme size/);
});

t.test("markdown: Elijah's layout, our numbers beside the paper's", async (t) => {
  const md = renderMarkdown(result(), { json: 'bench/results/x.json', plots: ['a.svg'] });
  t.match(md, /Generated by `npm run bench -- suite`/);
  t.match(md, /bench\/results\/x\.json/);
  const row = md.split('\n').find((l) => l.startsWith('| speech (SPEECH)'));
  t.ok(row, 'a row per app, named with the app it stands for');
  t.match(row!, new RegExp(`${ELIJAH.SPEECH!.diskMB} \\+ ${ELIJAH.SPEECH!.memoryMB}`), "the paper's sizes");
  t.match(row!, /63 s/, "the paper's baseline");
  t.match(row!, /3\.0 \+ 8\.0/, 'our disk + memory in MB');
  t.match(row!, /40\.0 s \| 4\.00 s \|$/, 'our baseline and early start at wifi');
  t.match(
    md,
    /\| face \| lan \| 40\.0 \[40\.1\] \| 4\.00 \[4\.10\] \| 3\.50 \[3\.60\] \| 90\.0 \[90\.1\] \| 2\.18 \| 10× \| 1\.83× \| 22\.5× \| 8\/8 \|/,
    'the first-response table',
  );
  t.match(md, /!\[a\.svg\]\(a\.svg\)/, 'the plots');
  t.match(summaryText(result()), /speech: overlay 12\.00 MB/);
});

t.test('plots', async (t) => {
  const r = result();
  const fr = await svgFirstResponse(r);
  const bars = fr.match(/aria-roledescription="bar"/g) ?? [];
  t.equal(bars.length, r.apps.length * r.links.length * POLICIES.length, 'one bar per app, link and policy');
  t.match(
    fr,
    /aria-label="app: speech; [^"]*; policy: early-start; p50: 4\.00; p90: 4\.10"/,
    'a bar names its numbers',
  );
  const tl = await svgTimeline(r);
  const sends =
    tl.match(/aria-label="seconds since the client started: [^"]*; lane: (background|demand);[^"]*"/g) ?? [];
  t.equal(sends.length, 3, 'one mark per segment');
  t.equal(sends.filter((m) => m.includes('lane: demand')).length, 1, 'demand segments marked as such');
  t.match(tl, />VM resumed 0\.70 s</);
  t.match(tl, />first response 4\.00 s</);
  for (const svg of [fr, tl]) t.notMatch(svg, /NaN|undefined|Infinity/);
});

t.test('merging runs of different cells', async (t) => {
  const a = result();
  a.apps = [a.apps[0]!];
  const b = result();
  b.apps = [b.apps[1]!];
  b.at = '2026-11-23T10:00:00.000Z';
  b.finishedAt = '2026-11-23T11:30:00.000Z';
  b.command = 'npm run bench -- suite --apps face --no-docs';
  b.host = { loadavgAtStart: [2, 2, 2], loadavgAtEnd: [3, 3, 3], memGiB: 24 };
  const m = mergeSuiteResults([b, a]);
  t.same(
    m.apps.map((x) => x.app),
    ['speech', 'face'],
    'every app, once, in run order',
  );
  t.same(
    m.parts!.map((p) => p.apps),
    [['speech'], ['face']],
    'each run named, oldest first',
  );
  t.equal(m.at, a.at);
  t.equal(m.finishedAt, b.finishedAt);
  t.same(checkSuiteResult(m), [], 'the merged result is complete');
  const md = renderMarkdown(m, { json: 'docs/benchmarks.json', plots: [] });
  t.match(md, /from 2 runs, merged/);
  t.match(
    md,
    /- face at wifi, lan: `npm run bench -- suite --apps face --no-docs`, 2026-11-23 10:00 UTC to 2026-11-23 11:30 UTC; load average 2 \/ 2 \/ 2/,
    "each run's cells, command, time and load",
  );
  t.ok(
    md.split('\n').some((l) => l.startsWith('| speech (SPEECH)')) &&
      md.split('\n').some((l) => l.startsWith('| face (FACE)')),
    'both apps in the table',
  );
  t.equal(
    renderMarkdown(mergeSuiteResults([m]), { json: 'x', plots: [] }),
    renderMarkdown(m, { json: 'x', plots: [] }),
    'a merged result renders again unchanged',
  );

  // One app's links measured in two runs.
  const wifi = result();
  wifi.apps = [wifi.apps[1]!];
  wifi.links = ['wifi'];
  delete wifi.apps[0]!.links.lan;
  const lan = result();
  lan.at = '2026-11-24T10:00:00.000Z';
  lan.apps = [lan.apps[1]!];
  lan.links = ['lan'];
  delete lan.apps[0]!.links.wifi;
  lan.apps[0]!.links.lan!.floor.localFirstResponseMs = 1777;
  lan.apps[0]!.local.p50 = 1777;
  const byLink = mergeSuiteResults([a, lan, wifi]);
  t.same(byLink.links, ['wifi', 'lan']);
  t.same(
    byLink.apps.map((x) => [x.app, Object.keys(x.links).sort()]),
    [
      ['speech', ['lan', 'wifi']],
      ['face', ['lan', 'wifi']],
    ],
  );
  t.equal(byLink.apps[1]!.local.p50, 1550, "the app keeps its earliest run's local resumes");
  t.equal(byLink.apps[1]!.links.lan!.floor.localFirstResponseMs, 1777, "each link keeps its own run's floor");
  t.same(checkSuiteResult(byLink), []);
  t.same(
    byLink.parts!.map((p) => `${p.apps}@${p.links}`),
    ['speech@wifi,lan', 'face@wifi', 'face@lan'],
  );
  t.same(checkSuiteResult(mergeSuiteResults([a, wifi])).length > 0, true, 'a cell left out shows as missing');

  t.throws(() => mergeSuiteResults([a, a]), { code: 'VMS_USAGE' }, 'a cell measured twice');
  const otherOverlay = result();
  otherOverlay.apps = [otherOverlay.apps[1]!];
  otherOverlay.links = ['lan'];
  delete otherOverlay.apps[0]!.links.wifi;
  otherOverlay.apps[0]!.sizes.overlay.total += 1;
  t.throws(() => mergeSuiteResults([wifi, otherOverlay]), { code: 'VMS_USAGE' }, 'one app with two different overlays');
  const fewer = result();
  fewer.apps = [fewer.apps[1]!];
  fewer.runs = 3;
  t.throws(() => mergeSuiteResults([a, fewer]), { code: 'VMS_USAGE' }, 'other runs per cell');
  const otherBase = result();
  otherBase.apps = [otherBase.apps[1]!];
  otherBase.base = { ...otherBase.base, kernel: 'linux-image-y' };
  t.throws(() => mergeSuiteResults([a, otherBase]), { code: 'VMS_USAGE' }, 'another base');
  t.throws(() => mergeSuiteResults([]), { code: 'VMS_USAGE' });
});
