import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { KEYS } from '../../lib/core/config.js';
import { unitText } from '../../lib/server/service-install.js';

const GRACEFUL_STOP_MS = KEYS.find((k) => k.key === 'gracefulStopS')!.default * 1000;

t.teardown(removeTestRoot);

const INSTALLED_BIN = '/usr/local/bin/vmsynth';
const SYSTEMD_ANALYZE = '/usr/bin/systemd-analyze';
/** The unit as `vmsynth service install` writes it (packaging/vmsynth.service, its @PACKAGE@ filled in). */
const text = (await unitText()).toString('utf8');

/** Settings per section, in file order (a key may repeat). */
function parseUnit(unit: string): Map<string, Array<[string, string]>> {
  const sections = new Map<string, Array<[string, string]>>();
  let current: Array<[string, string]> | null = null;
  for (const raw of unit.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = [];
      sections.set(header[1]!, current);
      continue;
    }
    const eq = line.indexOf('=');
    if (!current || eq < 0) throw new Error(`not a unit file line: ${line}`);
    current.push([line.slice(0, eq).trim(), line.slice(eq + 1).trim()]);
  }
  return sections;
}

const unit = parseUnit(text);
const service = unit.get('Service') ?? [];
const values = (key: string) => service.filter(([k]) => k === key).map(([, v]) => v);
const value = (key: string) => values(key).at(-1);

function analyze(args: string[], cwd?: string): { status: number | null; out: string } {
  const r = spawnSync(SYSTEMD_ANALYZE, args, { cwd, encoding: 'utf8' });
  if (r.error) throw new Error(`${SYSTEMD_ANALYZE} cannot run (the systemd package provides it): ${r.error.message}`);
  return { status: r.status, out: (r.stdout + r.stderr).trim() };
}

let copies = 0;
/**
 * `systemd-analyze verify` of a copy of the unit whose /usr/local/bin/vmsynth is a stub
 * executable (verify checks that ExecStart= programs exist). It needs no running systemd.
 * verify exits 0 on settings it "ignores" (a typo'd key, a bad value) and only prints
 * them, so anything printed counts as a failure too.
 */
function verify(unitText: string): { ok: boolean; out: string } {
  const dir = path.join(testRoot, `verify-${++copies}`);
  mkdirSync(path.join(dir, 'bin'), { recursive: true });
  const stub = path.join(dir, 'bin', 'vmsynth');
  writeFileSync(stub, '#!/bin/sh\nexit 0\n');
  chmodSync(stub, 0o755);
  writeFileSync(path.join(dir, 'vmsynth.service'), unitText.replaceAll(INSTALLED_BIN, stub));
  const r = analyze(['verify', '--man=no', 'vmsynth.service'], dir);
  return { ok: r.status === 0 && r.out === '', out: r.out };
}

t.test('systemd-analyze verify passes, and fails on broken copies', async (t) => {
  const good = verify(text);
  t.ok(good.ok, `verify is clean${good.out ? `: ${good.out}` : ''}`);

  const broken: Array<[string, string, string]> = [
    ['a dependency that does not exist', 'Requires=libvirtd.service', 'Requires=vmsynth-no-such-daemon.service'],
    ['a misspelled section', '[Service]', '[Servce]'],
    ['a bad value (verify only warns)', 'TimeoutStopSec=45', 'TimeoutStopSec=forty-five'],
    ['an unknown key (verify only warns)', 'LockPersonality=yes', 'LockPersonalty=yes'],
    ['bad device rights', 'DeviceAllow=/dev/kvm rw', 'DeviceAllow=/dev/kvm rwz'],
  ];
  for (const [what, from, to] of broken) {
    t.ok(text.includes(from), `the unit has ${from}`);
    const r = verify(text.replace(from, to));
    t.notOk(r.ok, `${what} is caught: ${r.out.split('\n')[0] ?? ''}`);
  }
});

t.test('the service runs as a notify service with a watchdog', async (t) => {
  t.equal(value('Type'), 'notify');
  t.equal(value('NotifyAccess'), 'main');
  t.equal(value('ExecStart'), `${INSTALLED_BIN} serve`);
  t.ok(value('WatchdogSec'), 'WatchdogSec is set');
  t.equal(value('KillMode'), 'process', 'signals reach the server only: the session keepers outlive it');
  t.equal(value('Restart'), 'on-failure');
  t.ok(
    values('Environment').some((e) => e.split(/\s+/).includes('LOG_FORMAT=json')),
    'LOG_FORMAT=json',
  );
});

t.test('TimeoutStopSec leaves room after the graceful stop', async (t) => {
  const stop = value('TimeoutStopSec');
  t.ok(stop, 'TimeoutStopSec is set');
  const r = analyze(['timespan', stop!]);
  const usec = Number(/μs:\s*(\d+)/.exec(r.out)?.[1]);
  t.ok(Number.isFinite(usec), `systemd reads ${stop}: ${r.out}`);
  t.ok(usec > GRACEFUL_STOP_MS * 1000, `TimeoutStopSec ${usec / 1e6} s > graceful stop ${GRACEFUL_STOP_MS / 1000} s`);
});

t.test('devices: /dev/kvm and /dev/fuse allowed, nothing else beyond the pseudo devices', async (t) => {
  t.equal(value('DevicePolicy'), 'closed');
  const allowed = values('DeviceAllow');
  t.ok(allowed.includes('/dev/kvm rw'), 'DeviceAllow=/dev/kvm rw');
  t.ok(allowed.includes('/dev/fuse rw'), 'DeviceAllow=/dev/fuse rw');
  t.notOk(
    values('PrivateDevices').some((v) => /^(yes|true|on|1)$/i.test(v)),
    'no PrivateDevices=yes',
  );
});

t.test('no setting that gives the service its own mount namespace', async (t) => {
  // FUSE mounts made inside one would not propagate to the host, where libvirtd's QEMU
  // opens the images (systemd.exec(5), MountFlags=; the unit's header comment).
  const namespacing = [
    'PrivateDevices',
    'PrivateTmp',
    'PrivateMounts',
    'PrivateNetwork',
    'PrivateIPC',
    'NetworkNamespacePath',
    'ProtectSystem',
    'ProtectHome',
    'ProtectKernelTunables',
    'ProtectKernelModules',
    'ProtectKernelLogs',
    'ProtectControlGroups',
    'ProtectProc',
    'ProcSubset',
    'ProtectHostname',
    'MountFlags',
    'ReadWritePaths',
    'ReadOnlyPaths',
    'InaccessiblePaths',
    'ExecPaths',
    'NoExecPaths',
    'BindPaths',
    'BindReadOnlyPaths',
    'TemporaryFileSystem',
    'RootDirectory',
    'RootImage',
    'DynamicUser',
    'MountImages',
    'ExtensionImages',
    'ExtensionDirectories',
    'LogNamespace',
  ];
  for (const key of namespacing) {
    const v = values(key).filter((x) => !/^(no|false|off|0|)$/i.test(x));
    t.same(v, [], `no ${key}=`);
  }
});

t.test('directories and capabilities', async (t) => {
  t.equal(value('StateDirectory'), 'vmsynth');
  t.equal(value('RuntimeDirectory'), 'vmsynth');
  t.equal(value('RuntimeDirectoryPreserve'), 'yes', 'the run directory outlives a stop: kept sessions live there');
  t.equal(value('CacheDirectory'), 'vmsynth');
  t.equal(value('ConfigurationDirectory'), 'vmsynth');
  const caps = (value('CapabilityBoundingSet') ?? '').split(/\s+/).filter(Boolean);
  t.ok(caps.includes('CAP_SYS_ADMIN'), 'CAP_SYS_ADMIN (FUSE mount and unmount)');
  // verify ignores unknown capability names silently; systemd-analyze capability does not.
  const r = analyze(['capability', ...caps]);
  t.equal(r.status, 0, `systemd knows every capability: ${r.out.split('\n').slice(-1)[0] ?? ''}`);
  t.not(analyze(['capability', 'CAP_NO_SUCH_THING']).status, 0, 'and the check can fail');
});
