/**
 * The flaky link's frame tracker, which lets it forward client bytes as they
 * come and still cut at an exact segment byte: fed any split of a stream, its
 * pieces are the stream, their segment bytes are the segments' payloads, and
 * each frame's end is reported once with its header.
 */
import t from 'tap';
import { FrameTracker } from '../../bench/lib/flaky-link.js';
import { encodeFrame } from '../../lib/protocol/frames.js';

const frame = (h: Record<string, unknown>, payload?: Buffer) =>
  Buffer.concat(encodeFrame(h as { type: string }, payload));

t.test('any split of a stream', async (t) => {
  const frames = [
    frame({ type: 'hello', protocol: 'vmsynth/3', client: 'x' }),
    frame({ type: 'segment', index: 0 }, Buffer.alloc(70_000, 1)),
    frame({ type: 'offload', id: 1, method: 'GET', path: '/run' }),
    frame({ type: 'segment', index: 5, offset: 10 }, Buffer.alloc(3, 2)),
    frame({ type: 'ping' }),
  ];
  const stream = Buffer.concat(frames);
  for (const cut of [1, 3, 7, 64, 1000, 65_536, stream.length]) {
    const tr = new FrameTracker();
    const pieces = [];
    for (let i = 0; i < stream.length; i += cut) pieces.push(...tr.feed(stream.subarray(i, i + cut)));
    t.ok(Buffer.concat(pieces.map((p) => p.bytes)).equals(stream), `cut every ${cut}: the pieces are the stream`);
    t.equal(
      pieces.reduce((a, p) => a + p.segmentBytes, 0),
      70_003,
      `cut every ${cut}: segment bytes are the payloads`,
    );
    t.same(
      pieces.filter((p) => p.frameDone).map((p) => [p.frameDone!.type, p.frameDone!.index ?? p.frameDone!.id ?? null]),
      [
        ['hello', null],
        ['segment', 0],
        ['offload', 1],
        ['segment', 5],
        ['ping', null],
      ],
      `cut every ${cut}: each frame ends once`,
    );
  }
});
