/**
 * `npm run bench -- [name...] [options]`: runs the named benchmarks (resume,
 * overlay, memory, first-response, store, suite, handoff); without a name, all
 * but the store, the suite and the handoff.
 * Options after the names go to the benchmark (the suite's, and the store's
 * --plot: `npm run bench -- suite --quick`). Each prints a table with a ratio against
 * a baseline measured in the same run, and writes JSON to bench/results/.
 */
/** Each benchmark, imported when it runs (--help and bad names load none). */
const BENCHES: Record<string, (argv: string[]) => Promise<void>> = {
  resume: async () => (await import('./resume.js')).benchResume(),
  overlay: async () => (await import('./overlay.js')).benchOverlay(),
  memory: async () => (await import('./memory.js')).benchMemory(),
  'first-response': async () => (await import('./first-response.js')).benchFirstResponse(),
  store: async (argv) => (await import('./store.js')).benchStore(argv),
  suite: async (argv) => (await import('./suite.js')).benchSuite(argv),
  handoff: async () => (await import('./handoff.js')).benchHandoff(),
};
/** What runs when no name is given: the suite takes hours, so it runs only by name. */
const DEFAULT = ['resume', 'overlay', 'memory', 'first-response'];
const USAGE = `npm run bench -- [name...] [options]

Benchmarks (each prints a ratio against a baseline measured in the same run
and writes JSON to bench/results/):
  resume          resume over FUSE (demand-paged) vs a full-memory restore
  overlay         overlay size against naive diffs and Elijah's scheme;
                  build and apply speed
  memory          a ~1 GB overlay built and applied in a 2 GB memory cgroup
  first-response  first-response time per policy over emulated links
  store           the cloudlet store: cold, warm (against a local resume),
                  from an object store, and partial (a second app after a
                  first, chunk lookaside); BENCH_STORE_PAIRS picks the pairs
                  (demo, speech-ocr; the real apps need the suite's Debian
                  base: hours the first time). Runs only by name.
                  --plot RESULT.json draws a saved result's chart again
  suite           real apps in a Debian guest against Elijah's numbers (hours;
                  runs only by name; options: npm run bench -- suite --help)
  handoff         a live handoff between two cloudlets in network namespaces,
                  A-B at 38 Mbit/s and 1 Gbit/s (BENCH_HANDOFF_LINKS: wifi,lan),
                  early start, the safe mode and QEMU's live migration with
                  its disk (BENCH_HANDOFF_MODES: early,whole,migrate), runs
                  each (BENCH_HANDOFF_RUNS, 3); apps BENCH_HANDOFF_APPS
                  (demo,compute,ocr; about 70 min), BENCH_HANDOFF_AUTO_CONVERGE=1
                  for the baseline with QEMU's auto-converge.
                  Runs only by name
With no name: ${DEFAULT.join(', ')}.
`;
const args = process.argv.slice(2);
if (args.length > 0 && args.every((a) => a === '--help' || a === '-h')) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const firstOption = args.findIndex((a) => a.startsWith('-'));
const names = firstOption < 0 ? args : args.slice(0, firstOption);
const options = firstOption < 0 ? [] : args.slice(firstOption);
for (const n of names) {
  if (!BENCHES[n]) {
    process.stderr.write(`unknown benchmark "${n}"; choose from: ${Object.keys(BENCHES).join(', ')}\n`);
    process.exit(64);
  }
}
const TAKES_OPTIONS = ['suite', 'store'];
if (options.length && (names.length !== 1 || !TAKES_OPTIONS.includes(names[0]!))) {
  process.stderr.write(
    `options (${options.join(' ')}) go to one benchmark named alone (${TAKES_OPTIONS.join(' or ')}): npm run bench -- ${options.includes('--plot') ? 'store' : 'suite'} ${options.join(' ')}\n`,
  );
  process.exit(64);
}
try {
  for (const n of names.length ? names : DEFAULT) await BENCHES[n]!(options);
} catch (err) {
  const e = err as { code?: string; message?: string };
  process.stderr.write(`bench: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}\n`);
  process.exitCode = 1;
}
