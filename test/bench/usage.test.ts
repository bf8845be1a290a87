/**
 * `npm run bench -- --help` and `npm run bench -- suite --help`: both print
 * their usage and exit 0, and the suite's usage names every option the suite
 * accepts (the list its unknown-option error gives).
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const MAIN = fileURLToPath(new URL('../../dist/bench/entry.cjs', import.meta.url));

t.test('bench --help lists the benchmarks', async (t) => {
  const { stdout } = await run(process.execPath, [MAIN, '--help']);
  for (const name of ['resume', 'overlay', 'memory', 'first-response', 'store', 'suite'])
    t.match(stdout, new RegExp(`^  ${name} `, 'm'), name);
});

t.test('suite --help names every option the suite accepts', async (t) => {
  const { stdout } = await run(process.execPath, [MAIN, 'suite', '--help']);
  const refused = await run(process.execPath, [MAIN, 'suite', '--no-such-option']).then(
    () => null,
    (err: { code: number; stderr: string }) => err,
  );
  t.equal(refused?.code, 1, 'an unknown option fails');
  const listed =
    /options: ([^(\n]+)/
      .exec(refused?.stderr ?? '')?.[1]
      ?.trim()
      .split(' ') ?? [];
  t.ok(listed.length >= 9, `the error lists the options (${listed.join(' ')})`);
  for (const o of listed) t.match(stdout, new RegExp(`^  ${o}\\b`, 'm'), `${o} is in the usage`);
});
