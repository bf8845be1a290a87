/**
 * `npm run bench -- suite --quick` on the real stack: the Debian base
 * (debootstrapped and captured), the compute app's overlay, the emulated
 * link, all four policies. Asserts the output is complete and well formed,
 * never a time: speed targets live in the benchmark itself. It runs in a
 * child process with this test's own run, base and key directories; the
 * guest build and the overlays are cached in the shared cache directory.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { checkSuiteResult, POLICIES, type SuiteResult } from '../../bench/lib/suite-report.js';
import { filesUnder, mountsUnder } from '../helpers/leaks.js';

const run = promisify(execFile);
t.teardown(removeTestRoot);

const MAIN = fileURLToPath(new URL('../../dist/bench/entry.cjs', import.meta.url));
const out = path.join(testRoot, 'results');

t.test('suite --quick: complete, well-formed results from one small app at one bandwidth', async (t) => {
  const child = run(process.execPath, [MAIN, 'suite', '--quick', '--out', out], {
    maxBuffer: 64 << 20,
    timeout: 40 * 60_000,
    env: { ...process.env, LOG_LEVEL: 'warn' },
  });
  const pid = child.child.pid!;
  const { stdout } = await child;
  t.match(stdout, /benchmark suite \(/, 'prints its summary');

  const files = (await fsp.readdir(out)).sort();
  const json = files.find((f) => /^suite-quick-.*\.json$/.test(f));
  t.ok(json, 'wrote its JSON');
  t.ok(
    files.some((f) => f.endsWith('-first-response.svg')),
    'wrote the first-response plot',
  );
  t.ok(
    files.some((f) => f.endsWith('-timeline.svg')),
    'wrote the timeline plot',
  );
  const r = JSON.parse(await fsp.readFile(path.join(out, json!), 'utf8')) as SuiteResult;
  t.same(checkSuiteResult(r), [], 'the completeness check passes');
  t.equal(r.quick, true);
  t.same(
    r.apps.map((a) => a.app),
    ['compute'],
    'one small app',
  );
  t.same(r.links, ['lan'], 'one bandwidth');
  const lan = r.apps[0]!.links.lan!;
  for (const p of POLICIES) {
    t.equal(lan.summary[p].n, 1, `${p}: one run`);
    t.equal(lan.samples[p]![0]!.replyMatchesLocal, true, `${p}: the reply equals the local VM's`);
  }
  for (const p of ['baseline', 'early-start', 'demand-only'] as const) {
    const x = lan.samples[p]![0]!;
    t.ok(
      typeof x.outOfOrder === 'number' && typeof x.hurried === 'number' && x.hurried <= x.outOfOrder,
      `${p}: out-of-order reads (${x.outOfOrder}) and hurried segments (${x.hurried}) are recorded`,
    );
  }
  t.ok(
    lan.timeline!.sends.every((s) => s.bytes > 0 && (s.lane === 'background' || s.lane === 'demand')),
    'the timeline lists segments with their lanes',
  );
  t.ok(r.apps[0]!.sizes.overlay.total < r.apps[0]!.sizes.naive.total, 'the overlay is smaller than the naive diff');
  for (const f of files.filter((f) => f.endsWith('.svg'))) {
    const svg = await fsp.readFile(path.join(out, f), 'utf8');
    t.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"[\s\S]*<\/svg>\n$/, `${f} is an SVG document`);
    t.notMatch(svg, /NaN|undefined|Infinity/, `${f} has no broken numbers`);
  }

  const { stdout: ns } = await run('ip', ['netns', 'list']);
  t.notMatch(ns, new RegExp(`vmsst-${pid}\\b`), 'its network namespace is gone');
  const { stdout: links } = await run('ip', ['-o', 'link', 'show']);
  t.notMatch(links, new RegExp(`vst${pid}h`), 'its veth pair is gone');
  t.same(await mountsUnder(process.env.VMSYNTH_RUN_DIR!), [], 'no FUSE mount left');
  t.same(
    (await filesUnder(process.env.VMSYNTH_RUN_DIR!)).filter((f) => !f.endsWith('/janitor.lock')),
    [],
    'no session files left',
  );
  t.same(
    await fsp.readdir('/tmp').then((d) => d.filter((n) => n === `vmsynth-bench-suite-${pid}`)),
    [],
    'its temporary directory is gone',
  );
});
