/** The keeper's framing: whole MessagePack values out of bytes cut anywhere; int32 tables as bytes. */
import t from 'tap';
import net from 'node:net';
import { bytesInt32, frameReader, int32Bytes, sendFrame } from '../../lib/synth/keeper-wire.js';

t.test('frames cut at every byte boundary come out whole and in order', async (t) => {
  const [a, b] = await pair();
  t.teardown(() => {
    a.destroy();
    b.destroy();
  });
  const sent = [
    { t: 'demand', segment: 3 },
    { t: 'arrived', image: 1, source: 2, chunks: new Uint8Array(Uint32Array.from([5, 70000]).buffer) },
    { t: 'close' },
  ] as const;
  const bytes: Buffer[] = [];
  b.on('data', (d: Buffer) => bytes.push(d));
  for (const m of sent) sendFrame(a, m);
  await new Promise((r) => setTimeout(r, 50));
  const all = Buffer.concat(bytes);
  for (const cut of [1, 3, 4, 5, 7, all.length - 1]) {
    const got: unknown[] = [];
    const read = frameReader((v) => got.push(v));
    read(all.subarray(0, cut));
    read(all.subarray(cut));
    t.equal(got.length, 3, `cut at ${cut}`);
    t.same((got[1] as { chunks: Uint8Array }).chunks, sent[1].chunks);
    t.same(got[2], { t: 'close' });
  }
  const read = frameReader(() => undefined);
  t.throws(
    () => read(Buffer.from([0x7f, 0xff, 0xff, 0xff])),
    /over the cap/,
    'a frame over the cap ends the conversation',
  );
});

t.test('int32 tables survive the trip as bytes, from any offset', async (t) => {
  const big = new Int32Array([9, -1, 7, 2147483647, -2147483648]);
  const view = big.subarray(1);
  t.same([...bytesInt32(int32Bytes(view))], [-1, 7, 2147483647, -2147483648]);
  const unaligned = Buffer.concat([Buffer.from([0]), Buffer.from(int32Bytes(view))]).subarray(1);
  t.same([...bytesInt32(unaligned)], [-1, 7, 2147483647, -2147483648], 'unaligned bytes (a Buffer slice) too');
});

function pair(): Promise<[net.Socket, net.Socket]> {
  return new Promise((resolve) => {
    const server = net.createServer((b) => {
      server.close();
      resolve([a, b]);
    });
    let a: net.Socket;
    server.listen(0, '127.0.0.1', () => {
      a = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    });
  });
}
