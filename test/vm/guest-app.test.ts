/**
 * waitForApp without a VM: an app that never answers (a closed port on
 * loopback) is VMS_GUEST_TIMEOUT, whose details say whether the message
 * carries the console log's tail. The path with a real guest is in
 * test/e2e/failures.test.ts.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import net from 'node:net';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { VmsynthError } from '../../lib/core/errors.js';
import { waitForApp } from '../../lib/vm/guest-app.js';

t.teardown(removeTestRoot);

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

t.test('an app that never answers: VMS_GUEST_TIMEOUT, with the console tail when there is a log', async (t) => {
  await fsp.mkdir(testRoot, { recursive: true });
  const port = await closedPort();
  const log = path.join(testRoot, 'console.log');
  await fsp.writeFile(log, 'Booting...\nKernel panic - not syncing\n');
  await t.rejects(waitForApp(port, { timeoutMs: 300, consoleLog: log }), {
    code: 'VMS_GUEST_TIMEOUT',
    details: { port, timeoutMs: 300, consoleLog: log, consoleTail: true },
  });
  await t.rejects(
    waitForApp(port, { timeoutMs: 300 }),
    { code: 'VMS_GUEST_TIMEOUT', details: { port, consoleTail: false } },
    'no log: no tail',
  );
  await t.rejects(
    waitForApp(port, { timeoutMs: 300, consoleLog: path.join(testRoot, 'gone.log') }),
    { code: 'VMS_GUEST_TIMEOUT', details: { consoleTail: false } },
    'a log that is gone: no tail',
  );
  const err: unknown = await waitForApp(port, { timeoutMs: 300 }).then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err instanceof VmsynthError && (err.details.attempts as number) >= 1, 'it tried at least once');
});
