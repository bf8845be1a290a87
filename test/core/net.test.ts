/**
 * Ports for QEMU's host forwards: free, outside the kernel's range for
 * outgoing connections' local ports, and never the same twice in a row.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { freePort, freePortIn } from '../../lib/core/net.js';

const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number) as [
  number,
  number,
];

/** Ports the first test was handed. */
const earlier = new Set<number>();

t.test('ports come from outside the ephemeral range, each bindable, none twice', async (t) => {
  const ports = await Promise.all(Array.from({ length: 40 }, () => freePort()));
  for (const p of ports) earlier.add(p);
  t.equal(new Set(ports).size, ports.length, `40 ports at once, all different (${ports.slice(0, 5).join(', ')}...)`);
  t.ok(
    ports.every((p) => p < lo || p > hi),
    `none in ${lo}-${hi}`,
  );
  const port = ports[0]!;
  const srv = net.createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(port, '127.0.0.1', resolve);
  });
  t.pass(`port ${port} binds`);
  await new Promise((r) => srv.close(r));
});

t.test('a port in use, or handed out a moment ago, is not handed out', async (t) => {
  // Three ports outside the ephemeral range: the first handed out, the second occupied here
  // (never handed out), the third free.
  let from = 0;
  while (from === 0) {
    const p = await freePort();
    if (![1, 2].some((k) => earlier.has(p + k)) && (await bindable(p + 1)) && (await bindable(p + 2))) from = p;
  }
  const busy = net.createServer();
  await new Promise<void>((resolve, reject) => {
    busy.once('error', reject);
    busy.listen(from + 1, '127.0.0.1', resolve);
  });
  t.teardown(() => new Promise((r) => busy.close(r)));
  t.equal(await freePortIn(from, from + 2), from + 2, 'the handed and the occupied ports are stepped around');
  const again = await freePortIn(from, from + 2, 20);
  t.ok(again < from || again > from + 2, `with none left there, the kernel picks one elsewhere (${again})`);
});

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}
