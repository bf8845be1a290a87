/**
 * Failure paths end to end: each gives its typed error and leaves nothing
 * behind — no domain, QEMU process, FUSE mount, session file or partial base.
 */
import { testRoot, removeTestRoot } from '../helpers/env.js';
import t from 'tap';
import { existsSync } from 'node:fs';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { channels } from '../../lib/core/diagnostics.js';
import { baseDir, packageRoot, runDir } from '../../lib/core/paths.js';
import { createBase } from '../../lib/vm/base.js';
import { cleanStale, QEMU_LOG_GRACE_MS } from '../../lib/vm/janitor.js';
import { qemuLogPath } from '../../lib/vm/machine.js';
import { DOMAIN_PREFIX, Libvirt } from '../../lib/vm/libvirt.js';
import { resumeBase } from '../../lib/vm/base-resume.js';
import { guestBase, guestSource } from '../helpers/guest-base.js';
import { leaks, mountsUnder, NO_LEAKS, virshDomains } from '../helpers/leaks.js';

t.teardown(removeTestRoot);

const { guest, base } = await guestBase('fail');

/** Runs fn while recording every domain it creates; returns their names. */
async function tracking(fn: () => Promise<unknown>): Promise<{ error: unknown; domains: string[] }> {
  const domains: string[] = [];
  const onCreated = (m: unknown) => domains.push((m as { name: string }).name);
  channels.domainCreated.subscribe(onCreated);
  try {
    await fn();
    return { error: null, domains };
  } catch (error) {
    return { error, domains };
  } finally {
    channels.domainCreated.unsubscribe(onCreated);
  }
}

for (const when of ['created', 'running'] as const) {
  t.test(`QEMU killed right after the domain is ${when}: VMS_QEMU_DIED, no leaks`, async (t) => {
    const kill = (m: unknown) => {
      const { pid, name } = m as { pid?: number | null; name: string };
      if (when === 'created' && pid) process.kill(pid, 'SIGKILL');
      if (when === 'running')
        void fsp.readFile(`/run/libvirt/qemu/${name}.pid`, 'utf8').then((p) => process.kill(Number(p), 'SIGKILL'));
    };
    const ch = when === 'created' ? channels.domainCreated : channels.domainRunning;
    ch.subscribe(kill);
    const { error, domains } = await tracking(() => resumeBase({ base: 'fail', verify: false, timeoutMs: 30_000 }));
    ch.unsubscribe(kill);
    t.match(error, { code: 'VMS_QEMU_DIED' });
    t.equal(domains.length, 1);
    t.same(await leaks(domains, runDir()), NO_LEAKS);
  });
}

t.test('no /dev/fuse: VMS_NO_FUSE before anything starts', async (t) => {
  const { error, domains } = await tracking(() =>
    resumeBase({ base: 'fail', verify: false, fuseDevice: '/nonexistent/fuse' }),
  );
  t.match(error, { code: 'VMS_NO_FUSE' });
  t.same(domains, []);
  t.same(await leaks([], runDir()), NO_LEAKS);
});

t.test('libvirtd unreachable: VMS_LIBVIRT_UNREACHABLE', async (t) => {
  const saved = process.env.LIBVIRT_URI;
  const uri = 'qemu:///system?socket=/nonexistent/libvirt-sock';
  process.env.LIBVIRT_URI = uri;
  t.teardown(() => {
    if (saved === undefined) delete process.env.LIBVIRT_URI;
    else process.env.LIBVIRT_URI = saved;
  });
  const { error } = await tracking(() => resumeBase({ base: 'fail', verify: false }));
  t.match(error, { code: 'VMS_LIBVIRT_UNREACHABLE', details: { uri } });
  t.same(await mountsUnder(runDir()), []);
  t.same(await fsp.readdir(runDir()).catch(() => []), []);
});

/** A copy of the base with one file damaged; the other files are hard links. */
async function damaged(name: string, damage: (dir: string) => Promise<void>): Promise<string> {
  const dir = path.join(baseDir(), name);
  await fsp.mkdir(dir);
  for (const f of await fsp.readdir(base.dir)) await fsp.link(path.join(base.dir, f), path.join(dir, f));
  await damage(dir);
  return name;
}

async function replaceWithCopy(file: string, edit: (buf: Buffer) => Buffer): Promise<void> {
  const data = edit(await fsp.readFile(file));
  await fsp.rm(file);
  await fsp.writeFile(file, data);
}

t.test('bad bases: each damage has its own code, and nothing starts', async (t) => {
  const cases: [string, (dir: string) => Promise<void>, string][] = [
    [
      'flipped',
      (d) =>
        replaceWithCopy(path.join(d, 'memory.raw'), (b) => {
          b[123_456] = b[123_456]! ^ 0x40;
          return b;
        }),
      'VMS_HASH_MISMATCH',
    ],
    [
      'short-memory',
      (d) => replaceWithCopy(path.join(d, 'memory.raw'), (b) => b.subarray(0, b.length - 4096)),
      'VMS_MEMORY_SIZE_MISMATCH',
    ],
    ['no-state', (d) => fsp.rm(path.join(d, 'device.state')), 'VMS_BASE_FILE_MISSING'],
    [
      'garbage',
      (d) => replaceWithCopy(path.join(d, 'manifest.json'), () => Buffer.from('{"format": 1')),
      'VMS_BASE_CORRUPT',
    ],
  ];
  for (const [name, damage, code] of cases) {
    await damaged(name, damage);
    const { error, domains } = await tracking(() => resumeBase({ base: name }));
    t.match(error, { code }, name);
    t.same(domains, [], `${name}: no domain started`);
  }
  const { error } = await tracking(() => resumeBase({ base: 'never-made' }));
  t.match(error, { code: 'VMS_BASE_NOT_FOUND' });
  t.same(await leaks([], runDir()), NO_LEAKS);
});

t.test('a guest whose app never answers: VMS_GUEST_TIMEOUT with the console tail, no partial base', async (t) => {
  const { error, domains } = await tracking(() =>
    createBase({ name: 'silent', source: { ...guestSource(guest), appPort: 9 }, timeoutMs: 25_000 }),
  );
  t.match(
    error,
    { code: 'VMS_GUEST_TIMEOUT', details: { consoleLog: /console\.log$/, consoleTail: true } },
    'the message carries the console tail',
  );
  t.same(
    await fsp.readdir(baseDir()).then((d) => d.filter((n) => n.includes('silent'))),
    [],
    'no base and no temp dir',
  );
  t.same(await leaks(domains, runDir()), NO_LEAKS);
});

t.test('a start after a crash removes the domain, mount and session a killed vmsynth left', async (t) => {
  const child = spawn(process.execPath, [path.join(packageRoot(), 'test/fixtures/hold-resume.mjs'), 'fail'], {
    env: process.env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const domain = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /RUNNING (\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`hold-resume exited early (${code})`)));
  });
  // Pause the guest first: once its FUSE server is gone, a running guest's
  // next page fault on the memory file is a SIGBUS that ends QEMU on its own,
  // and the janitor would find nothing to destroy. Paused, the domain outlives
  // the crash the way a guest between faults does.
  await promisify(execFile)('virsh', ['-c', process.env.LIBVIRT_URI ?? 'qemu:///system', 'suspend', domain]);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  t.ok((await virshDomains()).includes(domain), 'the crash left the domain running');
  t.equal((await mountsUnder(runDir())).length, 1, 'and the FUSE mount');
  const lv = await Libvirt.connect();
  t.teardown(() => lv.close());
  const report = await cleanStale(lv);
  t.same(report.domains, [domain]);
  t.equal(report.mounts.length, 1);
  t.equal(report.sessions.length, 1);
  t.same(await leaks([domain], runDir()), NO_LEAKS);
  t.notOk(existsSync(qemuLogPath(domain)), "and the destroyed domain's QEMU log");
  t.ok(testRoot);
});

t.test(
  'vmsynth clean removes the QEMU log of a domain libvirt forgot, whose session directory is gone too',
  async (t) => {
    // What a host restart leaves of a session killed with its server: no domain (transient),
    // no session directory (under /run), only libvirt's log of the domain, a minute old or more.
    const name = `${DOMAIN_PREFIX}${randomBytes(6).toString('hex')}`;
    const log = qemuLogPath(name);
    await fsp.writeFile(log, 'shutting down, reason=crashed\n');
    t.teardown(() => fsp.rm(log, { force: true }));
    const old = (Date.now() - QEMU_LOG_GRACE_MS - 5_000) / 1000;
    await fsp.utimes(log, old, old);
    t.notOk((await virshDomains()).includes(name), 'libvirt does not know the domain');
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [path.join(packageRoot(), 'dist', 'lib', 'cli', 'entry.cjs'), 'clean', '--json'],
      { env: process.env },
    );
    const report = JSON.parse(stdout.trim().split('\n').at(-1)!) as { logs: string[] };
    t.ok(report.logs.includes(log), 'the command reports it');
    t.notOk(existsSync(log), 'and nothing of it is left');
  },
);
