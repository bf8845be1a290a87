/**
 * docs/protocol.md stays true to the code: its error table is exactly what
 * `vmsynth errors --markdown` prints from lib/core/errors.ts, and it names
 * the protocol version, every message type each side may send, and the list
 * and secret sizes the parser enforces.
 */
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { errorCodesMarkdown } from '../../lib/cli/errors-command.js';
import { ERRORS } from '../../lib/core/errors.js';
import { packageRoot } from '../../lib/core/paths.js';
import { MAX_LIST, PROTOCOL, SECRET_BYTES } from '../../lib/protocol/messages.js';

const doc = await fsp.readFile(path.join(packageRoot(), 'docs', 'protocol.md'), 'utf8');

t.test('the error table is the one errors.ts makes', async (t) => {
  const m = /<!-- error-codes:begin -->\n([\s\S]*?)\n<!-- error-codes:end -->/.exec(doc);
  t.ok(m, 'the markers are there');
  t.equal(
    m![1],
    errorCodesMarkdown(),
    'docs/protocol.md is out of step with lib/core/errors.ts: paste `vmsynth errors --markdown` between its markers',
  );
  for (const code of Object.keys(ERRORS)) t.ok(m![1]!.includes(`\`${code}\``), `${code} is listed`);
});

t.test('the version, every message type, and the sizes the parser enforces', async (t) => {
  t.ok(doc.includes(`\`${PROTOCOL}\``), `names ${PROTOCOL}`);
  const table = doc.slice(doc.indexOf('## Messages'), doc.indexOf('### What may be sent when'));
  const types = [
    ...['hello', 'session', 'resume', 'segment', 'offload', 'ack', 'handoff', 'ping', 'finish', 'error'],
    ...['welcome', 'accepted', 'resumed', 'want', 'hurry', 'ready', 'reply', 'complete', 'moved', 'finished'],
  ];
  for (const type of types) t.match(table, new RegExp(`\\| \`${type}\` \\|`), `the message table has ${type}`);
  t.ok(doc.includes(MAX_LIST.toLocaleString('en-US')), `lists of at most ${MAX_LIST}`);
  t.ok(doc.includes(`${SECRET_BYTES} bytes`), `a ${SECRET_BYTES}-byte secret`);
});
