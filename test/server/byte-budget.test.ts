/**
 * The server-wide budget of bytes buffered before sessions start: a frame
 * that does not fit is refused (VMS_BUSY) as soon as its length arrives,
 * before it is buffered; what a connection held comes back when it ends or
 * its session starts.
 */
import t from 'tap';
import { ByteBudget } from '../../lib/server/byte-budget.js';
import { at, fatal, frame, rig } from '../helpers/connection-rig.js';
import { until } from '../helpers/wait.js';

t.test('reserve and release', async (t) => {
  const b = new ByteBudget(100);
  const x = {};
  const y = {};
  b.reserve(x, 60);
  b.reserve(x, 30);
  t.throws(() => b.reserve(y, 20), { code: 'VMS_BUSY', details: { limit: 'preSessionMemory', bytes: 20, used: 90 } });
  t.equal(b.inUse, 90, 'a refusal reserves nothing');
  t.equal(b.release(x), 90);
  t.equal(b.release(x), 0, 'twice is nothing');
  b.reserve(y, 100);
  t.equal(b.inUse, 100);
});

t.test('a manifest that does not fit is refused before it is buffered; the budget comes back', async (t) => {
  const budget = new ByteBudget(1 << 20);
  const big = await at(t, 'open', { preSession: budget });
  const header = frame({ type: 'session', policy: 'early-start', payloadBytes: 2 << 20 }).subarray(0);
  header.writeUInt32BE(header.length - 4 + (2 << 20), 0);
  big.send(header); // only the length and the header: the refusal must not wait for the rest
  t.match(await big.next('accepted'), fatal('VMS_BUSY'));
  await big.gone;
  t.match(big.conn.endedWith?.details, { limit: 'preSessionMemory' });
  await until(() => budget.inUse === 0, 'the budget to come back');

  const ok = await at(t, 'session', { preSession: budget });
  t.equal(budget.inUse, 0, 'a started session holds nothing of the budget');
  t.equal(ok.sessions.length, 1);
  const idle = await rig(t, { preSession: budget });
  idle.socket.write(Buffer.from([0, 0, 0, 200])); // a frame's length: reserved, then never sent
  await until(() => budget.inUse > 0, 'the reservation');
  idle.socket.destroy();
  await idle.gone;
  t.equal(budget.inUse, 0, 'a connection that ends gives back what it held');
});
