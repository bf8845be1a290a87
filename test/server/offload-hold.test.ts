/** OffloadHold: requests held while a handoff stops the VM, run after all when it fails. */
import t from 'tap';
import { OffloadHold } from '../../lib/server/offload-hold.js';

t.test('held while a handoff stops the VM; released when it fails', async (t) => {
  const h = new OffloadHold();
  const ran: number[] = [];
  t.notOk(
    h.hold(() => ran.push(0)),
    'nothing is held before a handoff',
  );
  let running = 2;
  const drained = h.start(
    () => running,
    5_000,
    () => false,
  );
  t.ok(
    h.hold(() => ran.push(1)),
    'a new request waits',
  );
  setTimeout(() => (running = 0), 30);
  await drained;
  t.same(ran, [], 'it did not run');
  h.release();
  t.same(ran, [1], 'the handoff failed: it runs here');
  t.notOk(h.holding);
});

t.test('requests that do not finish fail the quiesce with a typed error', async (t) => {
  const h = new OffloadHold();
  await t.rejects(
    h.start(
      () => 1,
      30,
      () => false,
    ),
    { code: 'VMS_HANDOFF', details: { step: 'quiesce' } },
  );
});
