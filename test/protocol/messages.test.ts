import t from 'tap';
import { encodeFrame, FrameDecoder, type FrameHeader } from '../../lib/protocol/frames.js';
import { parseClientMessage, parseServerMessage } from '../../lib/protocol/messages.js';

const frame = (header: Record<string, unknown>, payload?: Buffer) =>
  new FrameDecoder().push(Buffer.concat(encodeFrame(header as FrameHeader, payload)))[0]!;

t.test('client messages: accepted shapes', async (t) => {
  t.same(parseClientMessage(frame({ type: 'hello', protocol: 'vmsynth/1', client: 'test' })), {
    type: 'hello',
    protocol: 'vmsynth/1',
    client: 'test',
  });
  const s = parseClientMessage(frame({ type: 'session', policy: 'baseline' }, Buffer.from('manifest')));
  t.same(s.type === 'session' && [s.policy, s.manifest.toString()], ['baseline', 'manifest']);
  t.notOk('overlayUrl' in s, 'no overlayUrl unless sent');
  const named = parseClientMessage(
    frame({ type: 'session', policy: 'early-start', overlayUrl: 's3://b/apps/x' }, Buffer.from('m')),
  );
  t.equal(named.type === 'session' && named.overlayUrl, 's3://b/apps/x');
  const seg = parseClientMessage(frame({ type: 'segment', index: 3 }, Buffer.from([1, 2])));
  t.same(seg.type === 'segment' && [seg.index, [...seg.data]], [3, [1, 2]]);
  const thin = parseClientMessage(frame({ type: 'segment', index: 3, thin: true }, Buffer.from([1])));
  t.same(thin.type === 'segment' && thin.thin, true, 'a thin segment says so');
  const table = parseClientMessage(frame({ type: 'table', index: 4 }, Buffer.alloc(64)));
  t.same(table.type === 'table' && [table.index, table.data.length], [4, 64]);
  const session = parseClientMessage(
    frame({ type: 'session', policy: 'early-start', lookaside: true }, Buffer.from('m')),
  );
  t.same(session.type === 'session' && session.lookaside, true);
  t.same(parseClientMessage(frame({ type: 'offload', id: 1, method: 'GET', path: '/run' })).type, 'offload');
  t.same(parseClientMessage(frame({ type: 'finish' })), { type: 'finish' });
});

t.test('client messages: refused shapes are VMS_PROTOCOL', async (t) => {
  const refuse = (h: Record<string, unknown>, p?: Buffer) =>
    t.throws(() => parseClientMessage(frame(h, p)), { code: 'VMS_PROTOCOL' }, JSON.stringify(h));
  refuse({ type: 'welcome', protocol: 'vmsynth/1', server: 's' }); // a server's message
  refuse({ type: 'teleport' });
  refuse({ type: 'hello', protocol: 1, client: 'x' });
  refuse({ type: 'session', policy: 'fastest' }, Buffer.from('m'));
  refuse({ type: 'session', policy: 'baseline' }); // no manifest
  refuse({ type: 'session', policy: 'baseline', overlayUrl: 42 }, Buffer.from('m'));
  refuse({ type: 'segment', index: -1 }, Buffer.from('x'));
  refuse({ type: 'segment', index: 1.5 }, Buffer.from('x'));
  refuse({ type: 'table', index: 4 }); // no table
  refuse({ type: 'segment', index: 3, thin: 'yes' }, Buffer.from('x'));
  refuse({ type: 'offload', id: 1, method: 'DELETE', path: '/' });
  refuse({ type: 'offload', id: 1, method: 'GET', path: 'no-slash' });
  refuse({ type: 'finish' }, Buffer.from('unexpected payload'));
});

t.test('server messages', async (t) => {
  t.same(parseServerMessage(frame({ type: 'want', lane: 'demand', segments: [4, 5] })), {
    type: 'want',
    lane: 'demand',
    segments: [4, 5],
  });
  t.same(parseServerMessage(frame({ type: 'error', code: 'VMS_BAD_SIGNATURE', message: 'no', fatal: true })), {
    type: 'error',
    code: 'VMS_BAD_SIGNATURE',
    message: 'no',
    fatal: true,
  });
  const refused = { type: 'error', id: 9, code: 'VMS_HANDOFF_REFUSED', message: 'full', fatal: false };
  t.same(
    parseServerMessage(frame({ ...refused, targetCode: 'VMS_BUSY' })),
    { ...refused, targetCode: 'VMS_BUSY' },
    "a refused handoff's error names the target's reason",
  );
  t.throws(() => parseServerMessage(frame({ ...refused, targetCode: 7 })), { code: 'VMS_PROTOCOL' });
  t.throws(() => parseServerMessage(frame({ type: 'want', lane: 'demand', segments: [] })), { code: 'VMS_PROTOCOL' });
  t.throws(() => parseServerMessage(frame({ type: 'want', lane: 'sideways', segments: [1] })), {
    code: 'VMS_PROTOCOL',
  });
  t.same(parseServerMessage(frame({ type: 'hurry', segments: [7] })), { type: 'hurry', segments: [7] });
  t.same(parseServerMessage(frame({ type: 'tables', segments: [1, 2] })), { type: 'tables', segments: [1, 2] });
  t.throws(() => parseServerMessage(frame({ type: 'tables', segments: [] })), { code: 'VMS_PROTOCOL' });
  t.same(parseServerMessage(frame({ type: 'thin', segment: 3, lane: 'background' }, Buffer.from([5]))), {
    type: 'thin',
    segment: 3,
    lane: 'background',
    omit: Buffer.from([5]),
  });
  t.throws(
    () => parseServerMessage(frame({ type: 'thin', segment: 3, lane: 'background' })),
    {
      code: 'VMS_PROTOCOL',
    },
    'a thin without its bitmap',
  );
  t.throws(() => parseServerMessage(frame({ type: 'thin', segment: -3, lane: 'background' }, Buffer.from([5]))), {
    code: 'VMS_PROTOCOL',
  });
  t.throws(() => parseServerMessage(frame({ type: 'hurry', segments: [] })), { code: 'VMS_PROTOCOL' });
  t.throws(() => parseServerMessage(frame({ type: 'hurry', segments: [-1] })), { code: 'VMS_PROTOCOL' });
  t.throws(
    () => parseClientMessage(frame({ type: 'hurry', segments: [7] })),
    { code: 'VMS_PROTOCOL' },
    "a server's message",
  );
  t.throws(() => parseServerMessage(frame({ type: 'hello', protocol: 'vmsynth/1', client: 'x' })), {
    code: 'VMS_PROTOCOL',
  });
});
