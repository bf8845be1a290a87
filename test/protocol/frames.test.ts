/**
 * Framing: any sequence of frames, cut into any pieces, decodes to the same
 * frames; oversized, empty, non-map, mis-sized and garbage frames are typed
 * errors, raised before an oversized frame is buffered.
 */
import t from 'tap';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { decodeFrameBody, encodeFrame, FrameDecoder, type FrameHeader } from '../../lib/protocol/frames.js';

const plain = new Packr({ useRecords: false });

function frameBytes(header: Record<string, unknown>, payload?: Buffer): Buffer {
  return Buffer.concat(encodeFrame(header as FrameHeader, payload));
}

t.test('round trip through any split of the stream (fast-check)', async (t) => {
  const frameArb = fc.record({
    header: fc.record({
      type: fc.string({ minLength: 1, maxLength: 12 }),
      n: fc.nat(),
      s: fc.string(),
      list: fc.array(fc.nat(), { maxLength: 5 }),
    }),
    payload: fc.uint8Array({ maxLength: 3000 }).map((a) => Buffer.from(a)),
  });
  fc.assert(
    fc.property(
      fc.array(frameArb, { minLength: 1, maxLength: 8 }),
      fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 50 }),
      (frames, cuts) => {
        const stream = Buffer.concat(frames.map((f) => frameBytes(f.header, f.payload)));
        const dec = new FrameDecoder();
        const got = [];
        let pos = 0;
        for (let i = 0; pos < stream.length; i++) {
          const n = cuts[i % cuts.length]!;
          got.push(...dec.push(stream.subarray(pos, pos + n)));
          pos += n;
        }
        if (dec.pending !== 0 || got.length !== frames.length) return false;
        return got.every((g, i) => {
          const want = frames[i]!;
          const { payloadBytes, ...h } = g.header;
          return (
            JSON.stringify(h) === JSON.stringify(want.header) &&
            g.payload.equals(want.payload) &&
            (payloadBytes ?? 0) === want.payload.length
          );
        });
      },
    ),
    { numRuns: 200 },
  );
  t.pass('200 random frame sequences and splits');
});

t.test('an oversized frame is refused from its length prefix alone', async (t) => {
  const dec = new FrameDecoder({ maxFrameBytes: 1000 });
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(1001);
  t.throws(() => dec.push(prefix), { code: 'VMS_FRAME_TOO_LARGE' });
  const staged = new FrameDecoder({ maxFrameBytes: 1 << 20 });
  t.equal(staged.push(frameBytes({ type: 'x' }, Buffer.alloc(5000))).length, 1);
  staged.setMaxFrameBytes(100);
  t.throws(
    () => staged.push(frameBytes({ type: 'x' }, Buffer.alloc(5000))),
    { code: 'VMS_FRAME_TOO_LARGE' },
    'caps change with the stage',
  );
});

t.test('malformed frames are VMS_PROTOCOL', async (t) => {
  const body = (b: Buffer) => t.throws(() => decodeFrameBody(b), { code: 'VMS_PROTOCOL' });
  body(plain.pack([1, 2, 3])); // not a map
  body(plain.pack({ nope: 1 })); // no type
  body(plain.pack({ type: '' }));
  body(Buffer.from([0xc1])); // never-used MessagePack byte
  body(plain.pack({ type: 'x', payloadBytes: -1 }));
  body(Buffer.concat([plain.pack({ type: 'x', payloadBytes: 4 }), Buffer.alloc(3)])); // payload shorter than announced
  body(Buffer.concat([plain.pack({ type: 'x' }), Buffer.alloc(3)])); // trailing bytes without payloadBytes
  body(plain.pack({ type: 'x' }).subarray(0, 3)); // truncated header
  const empty = Buffer.alloc(4);
  t.throws(() => new FrameDecoder().push(empty), { code: 'VMS_PROTOCOL' }, 'an empty frame');
  t.throws(
    () => encodeFrame({ type: 'x', big: 'y'.repeat(70 << 10) }),
    { code: 'VMS_FRAME_TOO_LARGE' },
    'the encoder keeps the header cap too',
  );
});

t.test('headers are plain MessagePack: a generic decoder reads them', async (t) => {
  const [head, payload] = encodeFrame({ type: 'segment', index: 7 }, Buffer.from('abc'));
  t.equal(head!.readUInt32BE(0), head!.length - 4 + 3);
  t.same(plain.unpack(head!.subarray(4)), { type: 'segment', index: 7, payloadBytes: 3 });
  t.equal(payload!.toString(), 'abc', 'the payload is passed through untouched');
});

t.test('headers with MessagePack extension types are refused, wherever the extension sits', async (t) => {
  // The map {type: 'hello', x: <value>} with x encoded by hand.
  const prefix = Buffer.from([0x82, 0xa4, ...Buffer.from('type'), 0xa5, ...Buffer.from('hello'), 0xa1, 0x78]);
  const exts: Record<string, Buffer> = {
    'timestamp (-1), which msgpackr reads as a Date': Buffer.from([0xd6, 0xff, 0, 0, 0, 1]),
    'type 0, read as undefined': Buffer.from([0xd4, 0x00, 0x01]),
    'type 0x42, read as a BigInt': Buffer.from([0xd4, 0x42, 0x01]),
    'type 0x74, read as a typed array': Buffer.from([0xd5, 0x74, 0x01, 0x01]),
    'ext 8 of an unknown type': Buffer.from([0xc7, 0x02, 0x05, 0x01, 0x02]),
    'nested in an array': Buffer.from([0x92, 0x01, 0xd4, 0x05, 0x01]),
    'nested in a map': Buffer.from([0x81, 0xa1, 0x79, 0xd4, 0x05, 0x01]),
    'the reserved byte 0xc1': Buffer.from([0xc1]),
  };
  for (const [what, value] of Object.entries(exts)) {
    const body = Buffer.concat([prefix, value]);
    t.throws(() => decodeFrameBody(body), { code: 'VMS_PROTOCOL', details: { reason: 'header-encoding' } }, what);
  }
  // The same map with plain values decodes.
  for (const value of [[0xc0], [0xc3], [0xcb, 0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18], [0xc4, 0x01, 0x07]])
    t.match(decodeFrameBody(Buffer.concat([prefix, Buffer.from(value)])).header, { type: 'hello' });
});

t.test('a decoder fed a stream cuts each frame under the cap in force when it is cut', async (t) => {
  const small = frameBytes({ type: 'hello' });
  const big = frameBytes({ type: 'session' }, Buffer.alloc(5000, 1));
  const dec = new FrameDecoder({ maxFrameBytes: 1000 });
  dec.feed(Buffer.concat([small, big]));
  t.match(dec.next()?.header, { type: 'hello' });
  dec.setMaxFrameBytes(10_000);
  t.match(dec.next()?.header, { type: 'session' }, 'the second frame, under the raised cap');
  t.equal(dec.next(), null);
  const strict = new FrameDecoder({ maxFrameBytes: 1000 });
  t.same(
    strict.push(Buffer.concat([small, big])).map((f) => f.header.type),
    ['hello'],
    'push keeps the frames before the error',
  );
  t.match(strict.error, { code: 'VMS_FRAME_TOO_LARGE' });
  t.throws(() => strict.next(), { code: 'VMS_FRAME_TOO_LARGE' }, 'and the stream stays failed');
});

t.test('a large frame, however cut, is received into one buffer of its size and decodes the same', async (t) => {
  const payload = Buffer.alloc(3 << 20);
  for (let i = 0; i < payload.length; i += 4096) payload[i] = i & 255;
  const stream = Buffer.concat([
    frameBytes({ type: 'a' }),
    frameBytes({ type: 'big', n: 1 }, payload),
    frameBytes({ type: 'b' }, Buffer.from('tail')),
  ]);
  for (const cut of [1, 7, 4096, 65536, 1 << 20, stream.length]) {
    const dec = new FrameDecoder();
    const got = [];
    for (let pos = 0; pos < stream.length; pos += cut) got.push(...dec.push(stream.subarray(pos, pos + cut)));
    t.same(
      got.map((f) => f.header.type),
      ['a', 'big', 'b'],
      `cut every ${cut} bytes`,
    );
    t.ok(got[1]!.payload.equals(payload), `cut every ${cut} bytes: the payload is intact`);
    t.equal(dec.pending, 0);
  }
  const dec = new FrameDecoder();
  dec.push(stream.subarray(0, 2 << 20));
  t.ok(dec.pending > 1 << 20, 'a frame half received is pending');
  dec.release();
  t.equal(dec.pending, 0, 'release drops it');
});

t.test('a frame cut short: its header and the part of its payload that arrived', async (t) => {
  const payload = Buffer.alloc(600_000, 9);
  const whole = frameBytes({ type: 'segment', index: 4 }, payload);
  for (const keep of [whole.length - 1, whole.length - 400_000, 50]) {
    const dec = new FrameDecoder();
    t.same(dec.push(whole.subarray(0, keep)), []);
    const p = dec.partialFrame();
    t.match(p?.header, { type: 'segment', index: 4, payloadBytes: 600_000 }, `${keep} bytes: the header`);
    t.equal(p?.payload.length, keep - (whole.length - payload.length), `${keep} bytes: the payload part`);
  }
  const dec = new FrameDecoder();
  dec.push(whole.subarray(0, 6)); // the length and two bytes of the header
  t.equal(dec.partialFrame(), null, 'no header yet: nothing');
  t.equal(new FrameDecoder().partialFrame(), null, 'nothing buffered: nothing');
});
