/**
 * `npm run bench -- [name...]`: runs the named benchmarks (resume, overlay, memory,
 * first-response),
 * all of them without a name. Each prints a table with a ratio against a
 * baseline measured in the same run, and writes JSON to bench/results/.
 */
import { benchFirstResponse } from './first-response.js';
import { benchMemory } from './memory.js';
import { benchOverlay } from './overlay.js';
import { benchResume } from './resume.js';

const BENCHES: Record<string, () => Promise<void>> = { resume: benchResume, overlay: benchOverlay, memory: benchMemory, 'first-response': benchFirstResponse };
const names = process.argv.slice(2);
for (const n of names) {
  if (!BENCHES[n]) {
    process.stderr.write(`unknown benchmark "${n}"; choose from: ${Object.keys(BENCHES).join(', ')}\n`);
    process.exit(64);
  }
}
for (const n of names.length ? names : Object.keys(BENCHES)) await BENCHES[n]!();
