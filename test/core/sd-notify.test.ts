import { testRoot, removeTestRoot } from '../helpers/env.js';
import { listen } from '../helpers/notify-listener.js';
import t, { type Test } from 'tap';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { isErrorCode } from '../../lib/core/errors.js';
import {
  addonPath,
  extendTimeout,
  formatState,
  loadAddon,
  notify,
  ready,
  startWatchdog,
  status,
  stopping,
  watchdogIntervalMs,
  watchdogPing,
} from '../../lib/core/sd-notify.js';

t.teardown(removeTestRoot);
mkdirSync(testRoot, { recursive: true });

const ENV_KEYS = ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID'] as const;

/** Runs with these variables set (undefined: unset), restoring them after. */
function withEnv(t: Test, vars: Partial<Record<(typeof ENV_KEYS)[number], string | undefined>>): void {
  const saved = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
  for (const k of ENV_KEYS) {
    if (!(k in vars)) continue;
    const v = vars[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  t.teardown(() => {
    for (const k of ENV_KEYS) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  });
}

t.test('the addon was built by bootstrap', async (t) => {
  t.ok(existsSync(addonPath()), `${addonPath()} exists (run npm run bootstrap)`);
  t.type(loadAddon().send, 'function');
});

for (const kind of ['path', 'abstract'] as const) {
  t.test(`datagrams on a ${kind} socket are exactly the sd_notify lines`, async (t) => {
    const address =
      kind === 'path' ? path.join(testRoot, 'notify.sock') : `@vmsynth-test-notify-${process.pid}-${Date.now()}`;
    const l = await listen(address);
    t.teardown(() => l.close());
    withEnv(t, { NOTIFY_SOCKET: address });

    t.equal(ready('listening on 127.0.0.1:8021'), true);
    t.equal(await l.next(), `READY=1\nSTATUS=listening on 127.0.0.1:8021\nMAINPID=${process.pid}\n`);
    t.equal(ready(), true);
    t.equal(await l.next(), `READY=1\nMAINPID=${process.pid}\n`);
    t.equal(status('2 sessions\nsecond line'), true, 'a newline in a value cannot start another assignment');
    t.equal(await l.next(), 'STATUS=2 sessions second line\n');
    t.equal(watchdogPing(), true);
    t.equal(await l.next(), 'WATCHDOG=1\n');
    t.equal(extendTimeout(20_000_000), true);
    t.equal(await l.next(), 'EXTEND_TIMEOUT_USEC=20000000\n');
    t.equal(stopping(), true);
    t.equal(await l.next(), 'STOPPING=1\n');
    t.equal(stopping('ending 2 sessions'), true);
    t.equal(await l.next(), 'STOPPING=1\nSTATUS=ending 2 sessions\n');
    t.equal(notify({}), false, 'an empty state sends nothing');
    t.equal(notify({ STATUS: 'é ünïcode ✓', ERRNO: 5 }), true);
    t.equal(await l.next(), 'STATUS=é ünïcode ✓\nERRNO=5\n', 'the last datagram: nothing was sent in between');
  });
}

t.test('without NOTIFY_SOCKET every call is a no-op returning false', async (t) => {
  for (const value of [undefined, '', 'vsock:2:1234', 'relative/path']) {
    withEnv(t, { NOTIFY_SOCKET: value, WATCHDOG_USEC: '1000000' });
    t.equal(ready('x'), false, `NOTIFY_SOCKET=${String(value)}: ready`);
    t.equal(status('x'), false);
    t.equal(stopping(), false);
    t.equal(watchdogPing(), false);
    t.equal(extendTimeout(1), false);
    t.equal(notify({ READY: 1 }), false);
    t.equal(startWatchdog(), null, 'no watchdog timer without a socket');
  }
});

t.test('a NOTIFY_SOCKET that leads nowhere: false, no throw', async (t) => {
  const gone = path.join(testRoot, 'gone.sock');
  // A socket file whose listener has exited: ECONNREFUSED.
  const l = await listen(gone);
  l.close();
  await new Promise((r) => setTimeout(r, 100));
  for (const address of [
    path.join(testRoot, 'missing', 'notify.sock'),
    gone,
    `@vmsynth-test-nobody-${process.pid}`,
    `/${'x'.repeat(200)}`,
  ]) {
    withEnv(t, { NOTIFY_SOCKET: address });
    t.equal(ready('x'), false, address.slice(0, 60));
    t.equal(watchdogPing(), false);
  }
});

t.test('the addon throws Node-style system errors', async (t) => {
  const addon = loadAddon();
  t.throws(() => addon.send(path.join(testRoot, 'missing', 's'), 'READY=1\n'), {
    code: 'ENOENT',
    errno: -2,
    syscall: 'sendto',
  });
  t.throws(() => addon.send(`@vmsynth-test-nobody-${process.pid}`, 'READY=1\n'), {
    code: 'ECONNREFUSED',
    syscall: 'sendto',
  });
  t.throws(() => addon.send(`/${'x'.repeat(200)}`, 'x'), { code: 'ENAMETOOLONG' });
  t.throws(() => addon.send('@', 'x'), { code: 'EINVAL' }, 'an abstract name must not be empty');
  t.throws(() => (addon.send as (a: unknown, b: unknown) => void)(1, 'x'), TypeError);
});

t.test('a missing addon with NOTIFY_SOCKET set is VMS_NATIVE', async (t) => {
  const err = t.throws(() => loadAddon(path.join(testRoot, 'no-such', 'sd_notify.node')));
  t.ok(isErrorCode(err, 'VMS_NATIVE'), 'VMS_NATIVE');
});

t.test('variable names are checked, values made single-line', async (t) => {
  t.equal(formatState({ READY: 1, STATUS: 'a\r\nb' }), 'READY=1\nSTATUS=a b\n');
  t.ok(
    isErrorCode(
      t.throws(() => formatState({ 'BAD=KEY': 1 })),
      'VMS_INTERNAL',
    ),
  );
  t.ok(
    isErrorCode(
      t.throws(() => formatState({ lower: 1 })),
      'VMS_INTERNAL',
    ),
  );
  t.ok(
    isErrorCode(
      t.throws(() => extendTimeout(-1)),
      'VMS_INTERNAL',
    ),
  );
});

t.test('watchdog interval: half of WATCHDOG_USEC, only for this process', async (t) => {
  const cases: Array<[string | undefined, string | undefined, number | null]> = [
    ['30000000', undefined, 15_000],
    ['30000000', '', 15_000],
    ['30000000', String(process.pid), 15_000],
    ['30000000', String(process.pid + 1), null],
    [undefined, undefined, null],
    ['', undefined, null],
    ['0', undefined, null],
    ['abc', undefined, null],
    ['-5', undefined, null],
    ['1000', undefined, 1],
  ];
  for (const [usec, pid, want] of cases) {
    withEnv(t, { WATCHDOG_USEC: usec, WATCHDOG_PID: pid });
    t.equal(watchdogIntervalMs(), want, `WATCHDOG_USEC=${String(usec)} WATCHDOG_PID=${String(pid)}`);
  }
});

t.test('startWatchdog pings at half the period until stopped', async (t) => {
  const address = `@vmsynth-test-watchdog-${process.pid}-${Date.now()}`;
  const l = await listen(address);
  t.teardown(() => l.close());
  withEnv(t, { NOTIFY_SOCKET: address, WATCHDOG_USEC: '100000', WATCHDOG_PID: String(process.pid) });
  const started = Date.now();
  const stop = startWatchdog(() => t.fail('a ping failed'));
  t.ok(stop, 'a watchdog is asked for');
  t.equal(await l.next(), 'WATCHDOG=1\n');
  t.equal(await l.next(), 'WATCHDOG=1\n');
  stop!();
  t.ok(Date.now() - started >= 90, 'two pings 50 ms apart');
  withEnv(t, { WATCHDOG_PID: String(process.pid + 1) });
  t.equal(startWatchdog(), null, 'not for another process');
});
