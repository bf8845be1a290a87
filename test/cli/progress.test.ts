/**
 * The CLI's progress bar (cli-progress) on a fake terminal: it shows the
 * label, the bar, the percentage, amounts in bytes or counts, and the note;
 * a logged line goes above it; it ends at 100%. Not on a terminal, or with
 * --json (enabled: false), it writes nothing.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { progressBar } from '../../lib/cli/progress.js';

const MIB = 1 << 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function terminal(isTTY = true) {
  let out = '';
  const stream = Object.assign(
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        out += chunk.toString();
        cb();
      },
    }),
    { isTTY, columns: 120 },
  );
  // eslint-disable-next-line no-control-regex
  return { stream, text: () => out.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '') };
}

t.test('bytes: label, bar, percentage, amounts, note; a log line above; 100% at the end', async (t) => {
  const term = terminal();
  const p = progressBar({ label: 'overlay', total: 2 * MIB, unit: 'bytes', stream: term.stream });
  p.update(MIB, '3/8 segments (background)');
  await sleep(250);
  p.log('connection lost (reset); reconnecting');
  await sleep(250);
  p.update(2 * MIB, '8/8 segments (demand)');
  p.stop();
  p.update(0);
  const text = term.text();
  t.match(text, /overlay \[[=-]+\] 50% \| 1\.00 MiB of 2\.00 MiB \| ETA \S+ \| 3\/8 segments \(background\)/);
  t.match(text, 'connection lost (reset); reconnecting\n');
  t.match(text, /overlay \[=+\] 100% \| 2\.00 MiB of 2\.00 MiB \| ETA \S+ \| 8\/8 segments \(demand\)/);
  t.ok(text.lastIndexOf('100%') > text.lastIndexOf('50%'), 'an update after stop draws nothing');
});

t.test('a count', async (t) => {
  const term = terminal();
  const p = progressBar({ label: 'verifying', total: 4, unit: 'count', stream: term.stream });
  p.update(4);
  p.stop();
  t.match(term.text(), /verifying \[=+\] 100% \| 4 of 4/);
});

t.test('not a terminal, or --json: nothing at all', async (t) => {
  for (const [what, term, enabled] of [
    ['a pipe', terminal(false), true],
    ['--json', terminal(true), false],
  ] as const) {
    const p = progressBar({ label: 'x', total: 10, unit: 'count', stream: term.stream, enabled });
    p.update(5, 'half');
    p.log('a line');
    p.stop();
    t.equal(term.text(), '', what);
  }
});
