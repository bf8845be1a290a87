/** The vmsynth command line: --help everywhere, usage errors, typed JSON errors, exit codes. */
import { testRoot, removeTestRoot } from './helpers/env.js';
import t from 'tap';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../lib/core/paths.js';
import { ERRORS } from '../lib/core/errors.js';

t.teardown(removeTestRoot);
const main = path.join(packageRoot(), 'dist/lib/cli/entry.cjs');

function vmsynth(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [main, ...args], { env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

const commands = [
  [],
  ['demo'],
  ['guest'],
  ['guest', 'build'],
  ['base'],
  ['base', 'create'],
  ['base', 'list'],
  ['base', 'verify'],
  ['base', 'resume'],
  ['clean'],
  ['key'],
  ['key', 'generate'],
  ['key', 'trust'],
  ['overlay'],
  ['overlay', 'create'],
  ['overlay', 'inspect'],
  ['overlay', 'verify'],
  ['overlay', 'apply'],
  ['overlay', 'profile'],
  ['overlay', 'push'],
  ['overlay', 'share'],
  ['base', 'push'],
  ['base', 'pull'],
  ['serve'],
  ['synth'],
  ['store'],
  ['store', 'ls'],
  ['store', 'stats'],
  ['store', 'pin'],
  ['store', 'unpin'],
  ['store', 'gc'],
  ['store', 'verify'],
];

t.test('every command has --help', async (t) => {
  // In this process, against the command tree the binary parses; the binary itself once.
  const { CommanderError } = await import('commander');
  const { buildProgram } = await import('../lib/cli/program.js');
  const write = process.stdout.write.bind(process.stdout);
  for (const c of commands) {
    let out = '';
    process.stdout.write = (chunk: string | Uint8Array) => ((out += String(chunk)), true);
    const exit = await buildProgram()
      .parseAsync(['node', 'vmsynth', ...c, '--help'])
      .then(
        () => null,
        (err: unknown) => (err instanceof CommanderError ? err.exitCode : -1),
      )
      .finally(() => (process.stdout.write = write));
    t.equal(exit, 0, `vmsynth ${c.join(' ')} --help exits 0`);
    t.match(out, /Usage: vmsynth/);
  }
  const r = await vmsynth(['--help']);
  t.equal(r.code, 0, 'the binary: vmsynth --help exits 0');
  t.match(r.stdout, /Usage: vmsynth/);
});

/** The error of a command run with --json: its last stdout line. */
const jsonError = (stdout: string) =>
  (JSON.parse(stdout.trim().split('\n').at(-1)!) as { error: { code: string; details?: object } }).error;

t.test('usage errors exit 64', async (t) => {
  t.equal((await vmsynth(['frobnicate'])).code, 64);
  t.equal((await vmsynth(['base', 'resume', 'x', '--mem-mb', 'lots'])).code, 64);
  const r = await vmsynth(['base', 'create', 'x', '--kernel', '/k', '--json']);
  t.equal(r.code, ERRORS.VMS_USAGE.exit);
  t.match(r.stderr, /error VMS_USAGE/);
  t.match(
    jsonError(r.stdout),
    { code: 'VMS_USAGE', details: { together: ['--kernel', '--initrd', '--disk'], given: ['--kernel'] } },
    '--kernel alone: the three go together',
  );
  const d = await vmsynth(['base', 'create', 'x', '--debian', '--disk', '/d', '--json']);
  t.equal(d.code, ERRORS.VMS_USAGE.exit, '--debian with a disk of your own is a usage error');
  t.match(jsonError(d.stdout), { code: 'VMS_USAGE', details: { flag: '--debian', conflicts: ['--disk'] } });
  // An option parser's error is printed before any command runs, so not as JSON: its details are checked on the parser.
  const p = await vmsynth(['synth', '--server', '127.0.0.1:1', '--overlay', '/nonexistent', '--policy', 'eager']);
  t.equal(p.code, 64, 'an unknown policy is a usage error');
  t.match(p.stderr, /error VMS_USAGE/);
  const { parsePolicy } = await import('../lib/cli/synth-commands.js');
  const allowed = ['early-start', 'baseline', 'demand-only'];
  t.throws(
    () => parsePolicy('eager'),
    { code: 'VMS_USAGE', details: { flag: '--policy', value: 'eager', allowed } },
    'the parser says which flag and what it allows',
  );
  const s = await vmsynth(['synth', '--server', 'host:99999', '--overlay', '/nonexistent', '--json']);
  t.equal(s.code, 64);
  t.match(jsonError(s.stdout), { code: 'VMS_USAGE', details: { flag: '--server', value: 'host:99999' } });
});

t.test('errors print their code and hint; --json puts them on stdout', async (t) => {
  const r = await vmsynth(['base', 'verify', 'nope', '--json']);
  t.equal(r.code, ERRORS.VMS_BASE_NOT_FOUND.exit);
  t.match(r.stderr, /error VMS_BASE_NOT_FOUND/);
  t.match(r.stderr, /what to do: /);
  const last = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { error: { code: string; hint: string } };
  t.equal(last.error.code, 'VMS_BASE_NOT_FOUND');
  t.ok(last.error.hint);
});

t.test('base list is empty and says how to make one; libvirt down is typed', async (t) => {
  const r = await vmsynth(['base', 'list', '--json']);
  t.equal(r.code, 0);
  t.same(JSON.parse(r.stdout), []);
  const down = await vmsynth(['clean', '--json'], { LIBVIRT_URI: 'qemu:///system?socket=/nonexistent/sock' });
  t.equal(down.code, ERRORS.VMS_LIBVIRT_UNREACHABLE.exit);
  t.match(down.stdout, /VMS_LIBVIRT_UNREACHABLE/);
  t.ok(testRoot);
});

t.test('key generate, then overlay inspect/verify/apply of a generated overlay, with --json', async (t) => {
  const { generatePair } = await import('./helpers/images.js');
  const { baseInput, buildOverlay } = await import('../lib/overlay/builder.js');
  const { loadSigningKey } = await import('../lib/overlay/keys.js');
  const { loadBase } = await import('../lib/vm/base.js');
  const k = await vmsynth(['key', 'generate', '--json']);
  t.equal(k.code, 0);
  const key = JSON.parse(k.stdout.trim().split('\n').at(-1)!) as { keyId: string };
  t.match(key.keyId, /^[0-9a-f]{16}$/);
  const pair = await generatePair(process.env.VMSYNTH_BASE_DIR!, 'cli', path.join(testRoot, 'custom'), {
    memChunks: 512,
    diskChunks: 256,
    each: 8,
  });
  const base = await loadBase('cli');
  const ov = path.join(testRoot, 'ov');
  await buildOverlay({
    base: baseInput(base),
    custom: pair.custom,
    appPort: 8000,
    key: await loadSigningKey(key.keyId),
    out: ov,
  });
  const i = await vmsynth(['overlay', 'inspect', ov, '--json']);
  t.equal(i.code, 0);
  const rep = JSON.parse(i.stdout.trim().split('\n').at(-1)!) as { keyId: string; ratio: number; segments: number };
  t.equal(rep.keyId, key.keyId);
  t.ok(rep.segments >= 1 && rep.ratio > 0);
  t.match((await vmsynth(['overlay', 'inspect', ov])).stdout, /naive bytes/);
  t.equal((await vmsynth(['overlay', 'verify', ov])).code, 0);
  const a = await vmsynth(['overlay', 'apply', ov, '--out', path.join(testRoot, 'synth'), '--json']);
  t.equal(a.code, 0);
  t.equal(
    (JSON.parse(a.stdout.trim().split('\n').at(-1)!) as { base: string }).base,
    'cli',
    'the base was found by its hashes',
  );
  const again = await vmsynth(['overlay', 'apply', ov, '--out', path.join(testRoot, 'synth'), '--json']);
  t.equal(again.code, ERRORS.VMS_OVERLAY_EXISTS.exit);
  t.equal((JSON.parse(again.stdout.trim()) as { error: { code: string } }).error.code, 'VMS_OVERLAY_EXISTS');
  t.equal(
    (await vmsynth(['overlay', 'create', '--base', 'cli', '--out', path.join(testRoot, 'x')])).code,
    ERRORS.VMS_USAGE.exit,
    'nothing to customize is a usage error',
  );
  t.equal(
    (await vmsynth(['overlay', 'verify', path.join(testRoot, 'nope')])).code,
    ERRORS.VMS_USAGE.exit,
    'not an overlay directory',
  );
  t.equal(
    (await vmsynth(['overlay', 'profile', ov, '--out', ov])).code,
    ERRORS.VMS_USAGE.exit,
    'profiling over its own input is refused',
  );
  t.equal(
    (await vmsynth(['overlay', 'profile', ov, '--out', path.join(testRoot, 'p'), '--runs', '0'])).code,
    ERRORS.VMS_USAGE.exit,
    '--runs 0 is a usage error',
  );
  const exists = await vmsynth(['overlay', 'profile', ov, '--out', path.join(testRoot, 'synth'), '--json']);
  t.equal(
    (JSON.parse(exists.stdout.trim()) as { error: { code: string } }).error.code,
    'VMS_OVERLAY_EXISTS',
    'an existing output is refused before any work',
  );
  t.same(
    (await fsp.readdir(testRoot)).filter((n) => n.includes('.work-')),
    [],
    'and leaves no work directory',
  );
});

t.test('store ls, stats, pin, gc and verify on an empty store, with --json; typed errors', async (t) => {
  const env = { VMSYNTH_STORE_DIR: path.join(testRoot, 'cli-store') };
  const stats = await vmsynth(['store', 'stats', '--json'], env);
  t.equal(stats.code, 0, stats.stderr);
  t.match(JSON.parse(stats.stdout), { dir: env.VMSYNTH_STORE_DIR, bytes: 0, segments: 0, hitRatio: null });
  const ls = await vmsynth(['store', 'ls', '--json'], env);
  t.same(JSON.parse(ls.stdout), { dir: env.VMSYNTH_STORE_DIR, overlays: [] });
  t.match((await vmsynth(['store', 'ls'], env)).stdout, /holds no overlays/);
  const gc = await vmsynth(['store', 'gc', '--target-mib', '0', '--json'], env);
  t.same(JSON.parse(gc.stdout), { evicted: 0, evictedBytes: 0, orphanFiles: 0, overlaysRemoved: 0 });
  const verify = await vmsynth(['store', 'verify', '--json'], env);
  t.same(JSON.parse(verify.stdout), { checked: 0, bytes: 0, dropped: [] });
  const missing = await vmsynth(['store', 'pin', 'deadbeef00', '--json'], env);
  t.equal(missing.code, 66);
  t.match(JSON.parse(missing.stdout), { error: { code: 'VMS_STORE_NOT_FOUND' } });
  const bad = await vmsynth(['store', 'unpin', 'xyz'], env);
  t.equal(bad.code, 64);
  t.match(bad.stderr, /VMS_USAGE/);
  const blocked = path.join(testRoot, 'not-a-dir');
  await fsp.writeFile(blocked, '');
  const unusable = await vmsynth(['store', 'stats', '--json'], { VMSYNTH_STORE_DIR: blocked });
  t.equal(unusable.code, 74);
  t.match(JSON.parse(unusable.stdout), { error: { code: 'VMS_STORE' } });
});

t.test('bootstrap puts vmsynth on the PATH of a new shell, linked to this checkout', async (t) => {
  const shell = (cmd: string) =>
    new Promise<{ code: number; stdout: string }>((resolve) =>
      execFile(
        '/bin/sh',
        ['-c', cmd],
        // A login shell's PATH for root on Debian, not this process's.
        { env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/root' } },
        (err, stdout) => resolve({ code: err ? Number(err.code) : 0, stdout }),
      ),
    );
  const where = await shell('command -v vmsynth');
  t.equal(where.stdout.trim(), '/usr/local/bin/vmsynth');
  t.equal(await fsp.realpath('/usr/local/bin/vmsynth'), await fsp.realpath(main), 'this checkout');
  const help = await shell('vmsynth --help');
  t.equal(help.code, 0);
  t.match(help.stdout, /^Usage: vmsynth /);
});
