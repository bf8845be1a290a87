/**
 * The handoff conversation's messages (lib/protocol/handoff-messages.ts): the
 * shapes each side may send, the client protocol's handoff and moved, and the
 * payloads (segment tables, the final state) refused when malformed.
 */
import t from 'tap';
import { encodeFrame, FrameDecoder, type FrameHeader } from '../../lib/protocol/frames.js';
import {
  decodeFinal,
  decodeTables,
  encodeFinal,
  encodeTables,
  parseSourceMessage,
  parseTargetMessage,
  type DeltaTable,
} from '../../lib/protocol/handoff-messages.js';
import { parseClientMessage, parseServerMessage } from '../../lib/protocol/messages.js';

const frame = (header: Record<string, unknown>, payload?: Buffer) =>
  new FrameDecoder().push(Buffer.concat(encodeFrame(header as FrameHeader, payload)))[0]!;

const table: DeltaTable = {
  index: 9,
  bytes: 100,
  rawBytes: 4096 + 32,
  sha256: Buffer.alloc(32, 1),
  count: 1,
  chunks: Buffer.alloc(16),
  digests: 1,
  tableSha256: Buffer.alloc(32, 2),
};

t.test('the source and the target send what the other accepts', async (t) => {
  const offer = parseSourceMessage(
    frame(
      { type: 'offer', session: 'a1', client: 'c', policy: 'early-start', secretSha256: Buffer.alloc(32) },
      Buffer.from('manifest'),
    ),
  );
  t.same(offer.type === 'offer' && [offer.session, offer.manifest.toString()], ['a1', 'manifest']);
  const byId = parseSourceMessage(
    frame({
      type: 'offer',
      session: 'a1',
      client: 'c',
      policy: 'early-start',
      secretSha256: Buffer.alloc(32),
      overlayId: Buffer.alloc(32, 5),
    }),
  );
  t.same(
    byId.type === 'offer' && [byId.overlayId, byId.manifest.length],
    [Buffer.alloc(32, 5), 0],
    'an offer by overlay id alone, no manifest',
  );
  const ahead = { type: 'offer', session: 'a1', client: 'c', policy: 'x', secretSha256: Buffer.alloc(32) };
  for (const genid of ['3f1c2a4e-0000-4000-8000-000000000001', null]) {
    const o = parseSourceMessage(frame({ ...ahead, genid }, Buffer.from('m')));
    t.same(o.type === 'offer' && o.genid, genid, `an offer that names the VM generation (${genid}): B starts ahead`);
  }
  const old = parseSourceMessage(frame(ahead, Buffer.from('m')));
  t.notOk(old.type === 'offer' && 'genid' in old, 'an offer without it: B starts after the stop');
  t.same(parseTargetMessage(frame({ type: 'manifest' })), { type: 'manifest' }, 'B asks for the manifest');
  t.same(parseSourceMessage(frame({ type: 'dsegment', index: 9 }, Buffer.from([1]))).type, 'dsegment');
  const pass = parseSourceMessage(frame({ type: 'pass', pass: 0 }, encodeTables([table])));
  t.same(pass.type === 'pass' && decodeTables(pass.tables)[0]!.index, 9, 'tables round-trip');
  const fin = decodeFinal(encodeFinal({ deviceState: Buffer.from([7]), genid: 'g', tables: [table], log: { x: 1 } }));
  t.same([fin.deviceState.length, fin.genid, fin.tables.length], [1, 'g', 1], 'the final state round-trips');
  t.same(parseTargetMessage(frame({ type: 'dwant', segments: [9, 10] })), { type: 'dwant', segments: [9, 10] });
  t.same(parseTargetMessage(frame({ type: 'done' })), { type: 'done' });
  t.same(parseClientMessage(frame({ type: 'handoff', id: 3, host: 'b', port: 8021 })), {
    type: 'handoff',
    id: 3,
    host: 'b',
    port: 8021,
  });
  t.same(parseServerMessage(frame({ type: 'moved', host: 'b', port: 8021, session: 's' })), {
    type: 'moved',
    host: 'b',
    port: 8021,
    session: 's',
  });
});

t.test('malformed handoff messages and payloads are VMS_PROTOCOL', async (t) => {
  const bad = { code: 'VMS_PROTOCOL' };
  t.throws(() => parseSourceMessage(frame({ type: 'offer', session: 'a', client: 'c', policy: 'x' })), bad);
  const offer = { type: 'offer', session: 'a', client: 'c', policy: 'x', secretSha256: Buffer.alloc(32) };
  t.throws(() => parseSourceMessage(frame(offer)), bad, 'an offer with neither manifest nor overlay id');
  t.throws(() => parseSourceMessage(frame({ ...offer, overlayId: Buffer.alloc(31) })), bad, 'a short overlay id');
  const m = Buffer.from('m');
  t.throws(() => parseSourceMessage(frame({ ...offer, genid: 7 }, m)), bad, 'a generation ID not a string');
  t.throws(() => parseSourceMessage(frame({ ...offer, genid: 'x'.repeat(65) }, m)), bad, 'a long generation ID');
  t.throws(() => parseSourceMessage(frame({ type: 'accepted', session: 'x' })), bad, "a target's message");
  t.throws(() => parseTargetMessage(frame({ type: 'dsegment', index: 1 }, Buffer.from([1]))), bad);
  t.throws(() => parseTargetMessage(frame({ type: 'dwant', segments: [] })), bad, 'an empty list');
  t.throws(() => parseTargetMessage(frame({ type: 'done' }, Buffer.from([1]))), bad, 'a payload where none belongs');
  t.throws(() => parseClientMessage(frame({ type: 'handoff', id: 1, host: 'b', port: 0 })), bad, 'port 0');
  t.throws(() => decodeTables(Buffer.from([0xc1])), bad, 'not MessagePack');
  t.throws(() => decodeTables(encodeTables([{ ...table, count: 2 }])), bad, 'a table shorter than its count');
  t.throws(() => decodeTables(encodeTables([{ ...table, sha256: Buffer.alloc(3) }])), bad, 'a short hash');
  t.throws(() => decodeFinal(encodeTables([table])), bad, 'a final state that is a list');
});

t.test('info: what a cloudlet offers, for discovery', async (t) => {
  t.same(parseClientMessage(frame({ type: 'info' })), { type: 'info' });
  const base = { name: 'demo', disk: 'a'.repeat(64), memory: 'b'.repeat(64) };
  const info = { type: 'info', server: 'vmsynth 1', accel: 'tcg', bases: [base], sessions: 1, maxSessions: 8 };
  t.same(parseServerMessage(frame(info)), info);
  t.throws(() => parseServerMessage(frame({ ...info, bases: [{ ...base, disk: 'x' }] })), { code: 'VMS_PROTOCOL' });
  t.throws(() => parseServerMessage(frame({ ...info, bases: Array(101).fill(base) })), { code: 'VMS_PROTOCOL' });
});
