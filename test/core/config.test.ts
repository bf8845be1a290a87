/**
 * Config resolution: defaults < file < environment < flags, with the source
 * of every value recorded; typed VMS_CONFIG errors naming the key and the
 * source for bad values, unknown keys, unreadable or invalid files.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  checkExposure,
  configFilePath,
  exportPaths,
  KEYS,
  redacted,
  resolveConfig,
  tokenSha256,
} from '../../lib/core/config.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'vmsynth-config-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, v: unknown) => {
  const p = path.join(dir, name);
  writeFileSync(p, typeof v === 'string' ? v : JSON.stringify(v));
  return p;
};
const none = path.join(dir, 'absent.json');

t.test('defaults when there is no file, no environment and no flag', async (t) => {
  const r = resolveConfig({ env: { CONFIGURATION_DIRECTORY: dir } });
  t.equal(r.file, null, 'a missing file at the default place is not an error');
  t.same(r.config.listen, { host: '127.0.0.1', port: 8021 });
  t.equal(r.config.metricsListen, null);
  t.equal(r.config.maxSessions, 8);
  t.ok(Object.values(r.sources).every((s) => s === 'default'));
  t.equal(Object.keys(r.config).length, KEYS.length, 'every key has a value');
});

t.test('precedence: file < environment < flags, and the source of each value', async (t) => {
  const f = file('p.json', {
    listen: '0.0.0.0:9000',
    maxSessions: 3,
    threads: 1,
    logLevel: 'warn',
    metricsListen: '127.0.0.1',
  });
  const r = resolveConfig({
    configFile: f,
    env: { VMSYNTH_MAX_SESSIONS: '5', VMSYNTH_THREADS: '4' },
    flags: { threads: '6', trust: [] },
  });
  t.equal(r.file, f);
  t.same(r.config.listen, { host: '0.0.0.0', port: 9000 }, 'from the file');
  t.equal(r.sources.listen, 'file');
  t.equal(r.config.maxSessions, 5, 'environment over file');
  t.equal(r.sources.maxSessions, 'env');
  t.equal(r.config.threads, 6, 'flag over environment over file');
  t.equal(r.sources.threads, 'flag');
  t.equal(r.config.logLevel, 'warn');
  t.same(r.config.metricsListen, { host: '127.0.0.1', port: 9121 }, 'a host alone takes the metrics port');
  t.same(r.config.trust, [], 'an empty repeatable flag does not count as given');
  t.equal(r.sources.trust, 'default');
});

t.test("VMSYNTH_CONFIG and systemd's CONFIGURATION_DIRECTORY find the file", async (t) => {
  t.same(configFilePath(undefined, { VMSYNTH_CONFIG: 'x.json' }), { file: path.resolve('x.json'), explicit: true });
  t.same(configFilePath(undefined, { CONFIGURATION_DIRECTORY: '/etc/vmsynth' }), {
    file: '/etc/vmsynth/vmsynth.json',
    explicit: false,
  });
  t.same(
    configFilePath('a.json', { VMSYNTH_CONFIG: 'x.json' }),
    { file: path.resolve('a.json'), explicit: true },
    '--config wins',
  );
  file('vmsynth.json', { maxSessions: 2 });
  t.equal(resolveConfig({ env: { CONFIGURATION_DIRECTORY: dir } }).config.maxSessions, 2);
});

t.test('clients: a list in the file, one token from the environment or a flag', async (t) => {
  const sha = tokenSha256('sesame');
  const f = file('c.json', {
    clients: [
      { name: 'phone-1', tokenSha256: sha },
      { name: 'phone-2', tokenSha256: 'a'.repeat(64) },
    ],
  });
  t.same(
    resolveConfig({ configFile: f, env: {} }).config.clients.map((c) => c.name),
    ['phone-1', 'phone-2'],
  );
  t.same(resolveConfig({ configFile: f, env: { VMSYNTH_TOKEN: 'sesame' } }).config.clients, [
    { name: 'env-token', tokenSha256: sha },
  ]);
  t.same(
    resolveConfig({ configFile: f, env: {}, flags: { token: 'sesame' } }).config.clients,
    [{ name: 'flag-token', tokenSha256: sha }],
    "a flag replaces the file's list",
  );
  const shown = JSON.stringify(redacted(resolveConfig({ configFile: f, env: {} }).config));
  t.notMatch(shown, sha, 'config check never prints a whole token digest');
});

t.test('bad input is a VMS_CONFIG error that names the key and the source', async (t) => {
  const bad = path.join(dir, 'bad.json');
  const [h1, h2] = ['a'.repeat(64), 'b'.repeat(64)];
  const cases: [unknown, Record<string, unknown>][] = [
    [{ maxSessions: 'x' }, { key: 'maxSessions', source: 'file', reason: 'invalid', expected: 'integer' }],
    [{ maxSessions: 0 }, { key: 'maxSessions', source: 'file', reason: 'invalid', expected: 'integer', min: 1 }],
    [{ listen: 'a:b:c' }, { key: 'listen', source: 'file', reason: 'invalid', expected: 'address' }],
    [{ listen: '1.2.3.4:70000' }, { key: 'listen', source: 'file', reason: 'invalid', expected: 'address' }],
    [
      { logFormat: 'xml' },
      { key: 'logFormat', source: 'file', reason: 'invalid', expected: 'one-of', allowed: ['json', 'text'] },
    ],
    [{ lisen: '1' }, { file: bad, reason: 'unknown-keys', keys: ['lisen'] }],
    [
      { clients: [{ name: 'a b', tokenSha256: h1 }] },
      { key: 'clients[0].name', source: 'file', reason: 'invalid', expected: 'name' },
    ],
    [
      { clients: [{ name: 'a', tokenSha256: 'XYZ' }] },
      { key: 'clients[0].tokenSha256', source: 'file', reason: 'invalid', expected: 'sha256' },
    ],
    [
      {
        clients: [
          { name: 'a', tokenSha256: h1 },
          { name: 'a', tokenSha256: h2 },
        ],
      },
      { key: 'clients[1].name', source: 'file', reason: 'duplicate', name: 'a' },
    ],
    [
      { clients: [{ name: 'a', tokenSha256: h1, token: 'plain' }] },
      { key: 'clients[0]', source: 'file', reason: 'unknown-field', fields: ['token'] },
    ],
    [{ tlsCert: '/x.pem' }, { key: 'tlsCert', source: 'file', reason: 'tls-pair', missing: 'tlsKey' }],
    [[1, 2], { file: bad, reason: 'not-object' }],
    ['{ not json', { file: bad, reason: 'json' }],
  ];
  for (const [content, details] of cases) {
    t.throws(
      () => resolveConfig({ configFile: file('bad.json', content), env: {} }),
      { code: 'VMS_CONFIG', details },
      JSON.stringify(content),
    );
  }
  t.throws(() => resolveConfig({ env: { CONFIGURATION_DIRECTORY: none, VMSYNTH_THREADS: '-1' } }), {
    code: 'VMS_CONFIG',
    details: { key: 'threads', source: 'env' },
  });
  t.throws(() => resolveConfig({ env: { CONFIGURATION_DIRECTORY: none }, flags: { maxSessions: '1.5' } }), {
    code: 'VMS_CONFIG',
    details: { key: 'maxSessions', source: 'flag' },
  });
  t.throws(
    () => resolveConfig({ configFile: none, env: {} }),
    { code: 'VMS_CONFIG', details: { file: none, reason: 'unreadable', errno: 'ENOENT' } },
    'a file named explicitly must exist',
  );
});

t.test('exportPaths hands the directories to lib/core/paths.ts through the environment', async (t) => {
  const env: NodeJS.ProcessEnv = {};
  const r = resolveConfig({
    configFile: file('d.json', { baseDir: '/srv/bases', runDir: 'rel/run' }),
    env: { LIBVIRT_URI: 'qemu:///session' },
  });
  exportPaths(r.config, env);
  t.equal(env.VMSYNTH_BASE_DIR, '/srv/bases');
  t.equal(env.VMSYNTH_RUN_DIR, path.resolve('rel/run'), 'relative paths resolve against the working directory');
  t.equal(env.LIBVIRT_URI, 'qemu:///session', 'LIBVIRT_URI is read as an alias of VMSYNTH_LIBVIRT_URI');
});

t.test('an open server (no clients) is refused anywhere but loopback', async (t) => {
  const env = (v: NodeJS.ProcessEnv) => ({ CONFIGURATION_DIRECTORY: none, ...v });
  t.doesNotThrow(() => checkExposure(resolveConfig({ env: env({}) }).config));
  t.doesNotThrow(() => checkExposure(resolveConfig({ env: env({ VMSYNTH_LISTEN: '127.0.0.2:1' }) }).config));
  t.throws(() => checkExposure(resolveConfig({ env: env({ VMSYNTH_LISTEN: '0.0.0.0:8021' }) }).config), {
    code: 'VMS_CONFIG',
    details: { key: 'clients', reason: 'open-server', listen: '0.0.0.0:8021' },
  });
  t.doesNotThrow(() =>
    checkExposure(resolveConfig({ env: env({ VMSYNTH_LISTEN: '0.0.0.0:8021', VMSYNTH_TOKEN: 'x' }) }).config),
  );
});

t.test('docs/operations.md lists every key with its environment variable', async (t) => {
  const { readFileSync } = await import('node:fs');
  const { packageRoot } = await import('../../lib/core/paths.js');
  const doc = readFileSync(path.join(packageRoot(), 'docs', 'operations.md'), 'utf8');
  for (const k of KEYS) {
    const row = doc.split('\n').find((l) => l.startsWith(`| \`${k.key}\` |`));
    t.ok(row, `${k.key} has a row`);
    for (const e of k.env) t.ok(row?.includes(`\`${e}\``), `${k.key}: ${e}`);
  }
});
