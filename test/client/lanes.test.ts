/**
 * The client's two send lanes against a scripted server (a real TCP socket
 * speaking the protocol, no VM): `hurry` moves a background segment not yet
 * sent ahead of the others and never sends one twice, and
 * holdBackgroundAfterBytes stalls the background lane until the first
 * response while demand and hurried segments still go. Chunk lookaside:
 * `tables` is answered with each segment's digest table, `thin` with the
 * segment less the slots its bitmap names, the same bytes the overlay holds
 * otherwise.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import net from 'node:net';
import path from 'node:path';
import { synthesize, type SynthesizeOptions, type SynthesizeResult } from '../../lib/client/client.js';
import { baseInput, buildOverlay } from '../../lib/overlay/builder.js';
import { segmentDigests } from '../../lib/overlay/format.js';
import { generateKey, loadSigningKey } from '../../lib/overlay/keys.js';
import { Overlay } from '../../lib/overlay/reader.js';
import { omitBitmap, slotCount, thinPayloads } from '../../lib/overlay/thin.js';
import { decompressFrame } from '../../lib/overlay/zstd-frame.js';
import { encodeFrame, FrameDecoder } from '../../lib/protocol/frames.js';
import { PROTOCOL, type ClientMessage, parseClientMessage } from '../../lib/protocol/messages.js';
import { loadBase } from '../../lib/vm/base.js';
import { generatePair } from '../helpers/images.js';

t.teardown(removeTestRoot);
await generatePair(process.env.VMSYNTH_BASE_DIR!, 'gen', path.join(testRoot, 'c1'), {
  memChunks: 256,
  diskChunks: 128,
  each: 4,
});
await generateKey();
const ov = path.join(testRoot, 'ov');
const custom = (f: string) => path.join(testRoot, 'c1', f);
// One chunk per segment: the customization makes many segments.
const built = await buildOverlay({
  base: baseInput(await loadBase('gen')),
  custom: { memory: custom('memory.raw'), disk: custom('disk.raw'), deviceState: custom('device.state') },
  appPort: 8000,
  key: await loadSigningKey(),
  out: ov,
  segmentBytes: 4096,
});
const N = built.segments;
t.ok(N >= 6, `the overlay has ${N} segments`);

type Frame = Buffer;
const frame = (h: Record<string, unknown>, payload?: Buffer): Frame =>
  Buffer.concat(encodeFrame(h as { type: string }, payload));

interface Talk {
  /** Frames in one write: the client reads them together, in order. */
  send(...frames: Frame[]): void;
  /** The reply to the first offload request (sent when it has come). */
  reply(): Frame;
}
/** What the scripted server does after `accepted` and after each segment it receives (`got`: the indices so far). */
interface Script {
  accepted(talk: Talk): void;
  /** A digest table came (chunk lookaside). */
  table?(index: number, data: Buffer, talk: Talk): void;
  segment(got: number[], talk: Talk): void;
  /** Answer the first offload request as soon as it comes (default), or only when the script sends talk.reply(). */
  autoReply?: boolean;
}

/** A one-connection server that runs `script` and finishes when the client does. */
async function scripted(
  script: Script,
  opts: Partial<SynthesizeOptions>,
): Promise<{ result: SynthesizeResult; got: number[]; segments: Extract<ClientMessage, { type: 'segment' }>[] }> {
  const got: number[] = [];
  const segments: Extract<ClientMessage, { type: 'segment' }>[] = [];
  const server = net.createServer((socket) => {
    const talk: Talk = {
      send: (...frames) => void socket.write(Buffer.concat(frames)),
      reply: () => frame({ type: 'reply', id: 1, status: 200 }, Buffer.from('{}')),
    };
    const send = talk.send;
    const decoder = new FrameDecoder({ maxFrameBytes: 64 << 20 });
    socket.on('data', (bytes) => {
      for (const f of decoder.push(bytes)) {
        const m: ClientMessage = parseClientMessage(f);
        if (m.type === 'hello')
          send(frame({ type: 'welcome', protocol: PROTOCOL, server: 'scripted', keepaliveMs: 10_000, graceMs: 0 }));
        else if (m.type === 'session') {
          send(
            frame({
              type: 'accepted',
              session: 's1',
              secret: Buffer.alloc(32),
              base: 'gen',
              segments: N,
              policy: m.policy,
            }),
          );
          script.accepted(talk);
        } else if (m.type === 'table') script.table?.(m.index, m.data, talk);
        else if (m.type === 'segment') {
          got.push(m.index);
          segments.push(m);
          script.segment(got, talk);
          if (got.length === N) send(frame({ type: 'complete', appliedMs: 1 }));
        } else if (m.type === 'offload' && script.autoReply !== false) send(talk.reply());
        else if (m.type === 'finish') {
          send(frame({ type: 'finished', stats: {} }));
          socket.end();
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const port = (server.address() as net.AddressInfo).port;
    const result = await synthesize({ server: `127.0.0.1:${port}`, overlay: ov, timeoutMs: 30_000, ...opts });
    return { result, got, segments };
  } finally {
    server.close();
  }
}
const all = Array.from({ length: N }, (_, i) => i);
const want = (lane: string, segments: number[]) => frame({ type: 'want', lane, segments });
const ready = () => frame({ type: 'ready', resumedMs: 1 });

t.test('hurry: a queued background segment goes next; one already sent is not sent again', async (t) => {
  const { result, got } = await scripted(
    {
      // The client starts on segment 0 before it reads the hurry that came in the same packet.
      accepted: ({ send }) => send(want('background', all), frame({ type: 'hurry', segments: [N - 1, 0] })),
      segment: (got, { send }) => {
        if (got.length === N) send(ready());
      },
    },
    {},
  );
  t.same(
    got,
    [0, N - 1, ...all.slice(1, N - 1)],
    'segment 0 (already started), then the hurried last one, then the rest in order',
  );
  t.equal(result.hurried, 1, 'one segment was moved');
  t.same(
    result.sends.map((s) => s.lane),
    ['background', 'demand', ...all.slice(1, N - 1).map(() => 'background')],
    'the hurried segment went on the demand lane',
  );
  t.equal(result.segmentsSent, N, 'no segment was sent twice');
});

t.test(
  'holdBackgroundAfterBytes: the background lane waits for the first response; demand and hurry do not',
  async (t) => {
    const { result, got } = await scripted(
      {
        autoReply: false,
        accepted: ({ send }) => send(want('background', all.slice(0, 4)), ready()),
        segment: (got, { send, reply }) => {
          // After the held lane's first segment: a hurry for a queued one, and a demand for one not asked for yet.
          if (got.length === 1) send(frame({ type: 'hurry', segments: [2] }), want('demand', [N - 1]));
          // Once both are in: ask for the rest, then answer the first request (the rest waits for that answer).
          if (got.length === 3) send(want('background', all.slice(4, N - 1)), reply());
        },
      },
      { holdBackgroundAfterBytes: 1 },
    );
    t.same(
      got.slice(0, 3).sort((a, b) => a - b),
      [0, 2, N - 1].sort((a, b) => a - b),
      'while held: the first segment, the hurried one and the demanded one',
    );
    t.same(
      got.slice(3),
      [1, 3, ...all.slice(4, N - 1)],
      'after the first response: the rest of the background lane, in order',
    );
    const firstResponse = result.timeline.firstResponse!;
    const bgBefore = result.sends.filter((s) => s.lane === 'background' && s.ms < firstResponse).map((s) => s.index);
    t.same(bgBefore, [0], 'only one background segment went before the first response');
    t.equal(result.segmentsSentBeforeFirstResponse, 3);
    t.equal(result.hurried, 1);
    t.equal(result.demandRequests, 1);
  },
);

t.test('lookaside: tables go at once; a thin segment leaves out the slots its bitmap names', async (t) => {
  // Segments of 4 payload slots, in an overlay of their own.
  const ov4 = path.join(testRoot, 'ov4');
  await buildOverlay({
    base: baseInput(await loadBase('gen')),
    custom: { memory: custom('memory.raw'), disk: custom('disk.raw'), deviceState: custom('device.state') },
    appPort: 8000,
    key: await loadSigningKey(),
    out: ov4,
    segmentBytes: 4 * 4096,
  });
  const o = await Overlay.open(ov4, { trusted: null });
  const file = o.segmentFile();
  t.teardown(() => file.close());
  const seg = (i: number) => {
    const s = o.body.segments[i]!;
    const compressed = file.read(s);
    return { s, compressed, raw: decompressFrame(compressed, s.rawBytes) };
  };
  t.ok(slotCount(seg(0).s) >= 2, 'segment 0 has several payload slots');
  const omit = omitBitmap(slotCount(seg(0).s), [0]);
  const tables = new Map<number, Buffer>();
  const { result, segments } = await scripted(
    {
      autoReply: false,
      accepted: ({ send }) => send(frame({ type: 'tables', segments: [0, 1] })),
      table: (index, data, { send }) => {
        tables.set(index, data);
        if (tables.size === 2)
          send(frame({ type: 'thin', segment: 0, lane: 'background' }, omit), want('background', [1]));
      },
      segment: (got, { send, reply }) => {
        if (got.length === 2) send(ready(), reply());
      },
    },
    { overlay: ov4, waitComplete: false },
  );
  for (const i of [0, 1])
    t.ok(tables.get(i)?.equals(segmentDigests(seg(i).raw, seg(i).s)), `segment ${i}'s table is its digests`);
  t.same(
    segments.map((m) => [m.index, m.thin === true]),
    [
      [0, true],
      [1, false],
    ],
    'segment 0 thin, segment 1 whole',
  );
  const thin = decompressFrame(segments[0]!.data, seg(0).s.rawBytes);
  t.ok(thin.equals(thinPayloads(seg(0).s, seg(0).raw, omit)), 'the thin form: the kept slots, in order');
  t.equal(thin.length, (slotCount(seg(0).s) - 1) * 4096, 'one slot left out');
  t.ok(segments[1]!.data.equals(seg(1).compressed), 'the whole one is the overlay bytes');
  const tableBytes = tables.get(0)!.length + tables.get(1)!.length;
  t.same(result.lookaside, { tables: 2, tableBytes, payloadBytesOmitted: 4096 });
  t.equal(result.bytesSent, segments[0]!.data.length + segments[1]!.data.length + tableBytes, 'tables count as sent');
});
