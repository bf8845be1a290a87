/**
 * vmsynth under a real systemd (252, PID 1 of a systemd-nspawn container:
 * test/helpers/nspawn.ts), installed as an operator installs it:
 * `vmsynth service install` writes the unit and a config, and
 * `systemctl start vmsynth` returns once the server sent READY=1. Then a
 * synthesis from the host (the container shares its network) is answered;
 * `journalctl -u vmsynth` holds the JSON log with the session's lines; a
 * shell in the unit's cgroup may open /dev/fuse but not /dev/net/tun
 * (DeviceAllow=), and the server's bounding set is the unit's six
 * capabilities; `systemctl restart vmsynth` leaves a running session's VM
 * running and its client resumes it on the new server; a server stopped
 * with SIGSTOP is killed by the watchdog and restarted; and
 * `systemctl stop vmsynth` leaves no session directory, domain, QEMU or
 * FUSE mount behind in the container. The container's libvirtd starts the
 * VMs, as a cloudlet's would.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { synthesize } from '../../lib/client/client.js';
import { ClientSession } from '../../lib/client/session.js';
import { keyDir, packageRoot } from '../../lib/core/paths.js';
import { appDigest, hex64 } from '../../lib/guest/patterns.js';
import { createOverlay } from '../../lib/offline/create.js';
import { generateKey } from '../../lib/overlay/keys.js';
import { guestBase } from '../helpers/guest-base.js';
import { bootContainer, type Container } from '../helpers/nspawn.js';
import { until } from '../helpers/wait.js';

let c: Container | null = null;
// The container first: it holds the test root bound inside.
t.teardown(async () => {
  await c?.stop();
  removeTestRoot();
});
await guestBase('sdbase');
await generateKey();
const ov = path.join(testRoot, 'overlay');
const custom = path.join(testRoot, 'custom');
await createOverlay({
  base: 'sdbase',
  out: ov,
  script: await fsp.readFile(path.join(packageRoot(), 'guest', 'examples', 'customize-demo.sh'), 'utf8'),
  keepCustom: custom,
});
const installed = hex64(appDigest((await fsp.readFile(path.join(custom, 'disk.raw'))).subarray(40 << 20, 44 << 20)));
await fsp.rm(custom, { recursive: true, force: true });
const request = { method: 'GET' as const, path: '/run?mem_mb=8&disk_mb=4&disk_off_mb=40' };

c = await bootContainer({
  name: `vmsd${process.pid % 100_000}`,
  subnet: `10.213.${process.pid % 250}`,
  binds: [packageRoot(), testRoot],
  log: path.join(testRoot, 'container.log'),
});
const box = c;
let token = '';
const show = async (prop: string) => (await box.exec(`systemctl show -p ${prop} --value vmsynth`)).trim();

t.test('service install, then systemctl start: READY', async (t) => {
  const report = JSON.parse(await box.exec('vmsynth service install --json')) as {
    steps: { path: string; result: string }[];
    systemd: string;
  };
  t.equal(report.systemd, 'reloaded', 'systemd reloaded its units');
  t.match(Object.fromEntries(report.steps.map((s) => [s.path, s.result])), {
    '/etc/systemd/system/vmsynth.service': 'created',
    '/etc/vmsynth/vmsynth.json': 'created',
  });
  // Not on loopback: the server refuses to start without a client list, so one client gets a token.
  const client = JSON.parse(await box.exec('vmsynth token generate phone --json')) as {
    name: string;
    token: string;
    tokenSha256: string;
  };
  token = client.token;
  const config = {
    clients: [{ name: client.name, tokenSha256: client.tokenSha256 }],
    listen: `${box.addr}:8021`,
    metricsListen: '127.0.0.1:9121',
    baseDir: path.join(testRoot, 'bases'),
    keyDir: keyDir(),
    logLevel: 'info',
  };
  await box.exec(`cat > /etc/vmsynth/vmsynth.json <<'EOF'\n${JSON.stringify(config)}\nEOF`);
  await box.exec('systemctl start vmsynth', 180_000);
  t.equal((await box.exec('systemctl is-active vmsynth')).trim(), 'active', 'started: READY=1 arrived');
  t.equal(await show('StatusText'), `listening on ${box.addr}:8021`, 'STATUS= says where it listens');

  const r = await synthesize({ server: `${box.addr}:8021`, overlay: ov, request, token, timeoutMs: 120_000 });
  t.equal(r.firstResponse.status, 200);
  t.equal(JSON.parse(r.firstResponse.body).diskDigest, installed, "the app read the customization's bytes");
  await until(
    async () => (await box.exec('journalctl -u vmsynth -o cat --no-pager')).includes('"event":"sessionEnded"'),
    'the session to end',
    30_000,
    200,
  );
  const journal = (await box.exec('journalctl -u vmsynth -o cat --no-pager'))
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  t.ok(journal.length > 0, 'the journal holds JSON lines');
  t.ok(
    journal.some((l) => l.event === 'firstResponse' && l.session === r.session),
    "the session's first response is in the journal, with its session id",
  );
});

t.test('systemctl restart keeps a running session: its VM runs on, and its client resumes it', async (t) => {
  const s = await ClientSession.open({ server: `${box.addr}:8021`, overlay: ov, token });
  s.failed.catch(() => undefined);
  const uptime = async () =>
    (JSON.parse((await s.offload({ method: 'GET', path: '/info' })).body.toString()) as { uptimeMs: number }).uptimeMs;
  const before = await uptime();
  const pid = await show('MainPID');
  await box.exec('systemctl restart vmsynth', 180_000);
  t.not(await show('MainPID'), pid, 'a new server process');
  t.equal(
    (await box.exec(`virsh -c qemu:///system list --name | grep -c vmsynth-${s.id} || true`)).trim(),
    '1',
    'the VM still runs',
  );
  const after = await uptime();
  t.ok(s.reconnects.length >= 1, 'the client reconnected and resumed its session');
  t.ok(after > before, `the same VM answers: its app's uptime went on (${before} -> ${after} ms)`);
  const journal = await box.exec('journalctl -u vmsynth -o cat --no-pager');
  t.ok(
    journal.split('\n').some((l) => l.includes('"event":"sessionAdopted"') && l.includes(`"session":"${s.id}"`)),
    'the new server says it adopted the session',
  );
  await s.finish();
});

t.test('the hardening holds: DeviceAllow= is enforced, the capabilities are the listed ones', async (t) => {
  // A shell moved into the unit's cgroup meets its device policy: /dev/fuse yes, /dev/net/tun no.
  const cg = await show('ControlGroup');
  const probe =
    'exec 3<>/dev/fuse && echo fuse-ok; (exec 4<>/dev/net/tun) 2>/dev/null && echo tun-ok || echo tun-denied';
  t.equal((await box.exec(probe)).trim(), 'fuse-ok\ntun-ok', 'outside the unit, both open');
  t.equal(
    (await box.exec(`echo $$ > /sys/fs/cgroup${cg}/cgroup.procs && ${probe}`)).trim(),
    'fuse-ok\ntun-denied',
    'inside the unit, only what DeviceAllow= lists',
  );
  // CAP_CHOWN 0, CAP_DAC_OVERRIDE 1, CAP_DAC_READ_SEARCH 2, CAP_FOWNER 3, CAP_KILL 5, CAP_SYS_ADMIN 21.
  const bounding = await box.exec(`grep CapBnd /proc/${await show('MainPID')}/status`);
  t.match(bounding, /CapBnd:\s+000000000020002f/, "the bounding set is the unit's six capabilities, no more");
});

t.test('a wedged server is killed by the watchdog and restarted', async (t) => {
  const before = Number(await show('NRestarts'));
  const pid = await show('MainPID');
  // "kill -STOP 0" would stop a whole process group: only a real main PID.
  if (!/^[1-9]\d*$/.test(pid)) return t.fail(`no main PID to stop (MainPID=${pid})`);
  await box.exec(`kill -STOP ${pid}`);
  await until(
    async () =>
      Number(await show('NRestarts')) > before &&
      (await show('ActiveState')) === 'active' &&
      (await show('MainPID')) !== pid,
    'systemd to restart the server (WatchdogSec=30)',
    90_000,
    1000,
  );
  t.match(await box.exec('journalctl -u vmsynth --no-pager -o cat'), /Failed with result 'watchdog'/);
  t.pass(`restarted after the watchdog fired (MainPID ${pid} -> ${await show('MainPID')})`);
});

t.test('systemctl stop leaves nothing behind', async (t) => {
  await box.exec('systemctl stop vmsynth', 90_000);
  t.equal((await box.exec('systemctl is-active vmsynth || true')).trim(), 'inactive');
  const left = await box.exec(
    [
      'ls -A /run/vmsynth 2>/dev/null',
      'virsh -c qemu:///system list --all --name | grep vmsynth-',
      'pgrep -a qemu-system',
      'grep /run/vmsynth /proc/self/mounts',
    ]
      .map((cmd) => `${cmd} || true`)
      .join('; '),
  );
  t.equal(left.trim(), '', 'no session directory, domain, QEMU or FUSE mount');
});
