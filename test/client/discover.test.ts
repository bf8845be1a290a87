/** Picking a cloudlet for an overlay (lib/client/discover.ts): it must hold the base and have room; least loaded, then nearest. */
import t from 'tap';
import { pickCloudlet, type Cloudlet } from '../../lib/client/discover.js';

const h = (c: string) => c.repeat(64);
const base = { disk: { sha256: h('a') }, memory: { sha256: h('b') } };
const cl = (
  host: string,
  sessions: number,
  max: number,
  rttMs: number,
  bases = [{ name: 'x', disk: h('a'), memory: h('b') }],
): Cloudlet => ({
  name: host,
  host,
  port: 8021,
  source: 'mdns',
  rttMs,
  info: { server: 'v', accel: 'tcg', bases, sessions, maxSessions: max },
});

t.test('holds the base, has room; then least loaded; then nearest', async (t) => {
  const other = [{ name: 'x', disk: h('a'), memory: h('c') }];
  t.equal(
    pickCloudlet([cl('no-base', 0, 8, 1, other), cl('far', 1, 8, 30)], base)?.host,
    'far',
    'the one with the base',
  );
  t.equal(pickCloudlet([cl('full', 8, 8, 1), cl('room', 7, 8, 50)], base)?.host, 'room', 'the one with room');
  t.equal(pickCloudlet([cl('busy', 4, 8, 1), cl('idle', 1, 8, 20)], base)?.host, 'idle', 'the least loaded');
  t.equal(pickCloudlet([cl('far', 1, 8, 20), cl('near', 1, 8, 2)], base)?.host, 'near', 'then the nearest');
  t.equal(pickCloudlet([{ ...cl('dead', 0, 8, 1), info: null }], base), null, 'none in reach');
});
