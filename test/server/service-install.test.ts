/**
 * `vmsynth service install` under a scratch root: the first run creates the
 * command link, the unit (the packaged one, byte for byte), a 0640 config and
 * the 0700 state directories; a second run changes nothing; an edited unit
 * is put back while an edited config is kept; a command that is not a link
 * is left alone; --now without a systemd is refused with VMS_SERVICE. Then
 * the same through the command line, with --json.
 */
import t, { type Test } from 'tap';
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { packageRoot } from '../../lib/core/paths.js';
import {
  BIN_PATH,
  CONFIG_PATH,
  entryPoint,
  installService,
  STATE_DIRS,
  UNIT_PATH,
} from '../../lib/server/service-install.js';

const run = promisify(execFile);

async function scratch(t: Test): Promise<string> {
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-test-install-'));
  t.teardown(() => fsp.rm(root, { recursive: true, force: true }));
  return root;
}
const mode = async (p: string) => (await fsp.stat(p)).mode & 0o777;
const results = (r: { steps: { path: string; result: string }[] }) =>
  Object.fromEntries(r.steps.map((s) => [s.path, s.result]));

t.test('first install, then again: created, then unchanged', async (t) => {
  const root = await scratch(t);
  const first = await installService({ root });
  t.same(results(first), {
    [BIN_PATH]: 'created',
    [UNIT_PATH]: 'created',
    [CONFIG_PATH]: 'created',
    ...Object.fromEntries(STATE_DIRS.map((d) => [d, 'created'])),
  });
  t.equal(first.systemd, 'no-systemd', 'systemctl is not run for another root');
  t.equal(await fsp.readlink(path.join(root, BIN_PATH)), entryPoint(), 'the command links this package');
  t.equal((await mode(entryPoint())) & 0o111, 0o111, 'and is executable');
  const unit = await fsp.readFile(path.join(root, UNIT_PATH), 'utf8');
  t.equal(
    unit,
    (await fsp.readFile(path.join(packageRoot(), 'packaging', 'vmsynth.service'), 'utf8')).replaceAll(
      '@PACKAGE@',
      packageRoot(),
    ),
    'the packaged unit, its documentation link naming this package',
  );
  t.match(unit, `Documentation=file://${packageRoot()}/docs/operations.md`);
  t.match(unit, `ExecStart=${BIN_PATH} serve`, 'starting the linked command');
  t.equal(await mode(path.join(root, CONFIG_PATH)), 0o640);
  for (const d of STATE_DIRS) t.equal(await mode(path.join(root, d)), 0o700, d);
  const again = await installService({ root });
  t.same(results(again), {
    [BIN_PATH]: 'unchanged',
    [UNIT_PATH]: 'unchanged',
    [CONFIG_PATH]: 'kept',
    ...Object.fromEntries(STATE_DIRS.map((d) => [d, 'unchanged'])),
  });
});

t.test('an edited unit is put back; an edited config is kept; a command that is not a link is left', async (t) => {
  const root = await scratch(t);
  await installService({ root });
  await fsp.appendFile(path.join(root, UNIT_PATH), '# local edit\n');
  await fsp.writeFile(path.join(root, CONFIG_PATH), '{"listen":"127.0.0.1:9000"}\n');
  await fsp.rm(path.join(root, BIN_PATH));
  await fsp.writeFile(path.join(root, BIN_PATH), '#!/bin/sh\n');
  const r = await installService({ root });
  t.match(results(r), { [UNIT_PATH]: 'updated', [CONFIG_PATH]: 'kept', [BIN_PATH]: 'kept' });
  t.equal(await fsp.readFile(path.join(root, CONFIG_PATH), 'utf8'), '{"listen":"127.0.0.1:9000"}\n');
  t.equal(await fsp.readFile(path.join(root, BIN_PATH), 'utf8'), '#!/bin/sh\n');
  t.match(r.steps.find((s) => s.what === 'command')?.note, /not a link/);
  // A link to elsewhere (another checkout, a dangling one) is pointed here.
  await fsp.rm(path.join(root, BIN_PATH));
  await fsp.symlink('/nonexistent/entry.cjs', path.join(root, BIN_PATH));
  t.match(results(await installService({ root })), { [BIN_PATH]: 'updated' });
  t.equal(await fsp.readlink(path.join(root, BIN_PATH)), entryPoint());
});

t.test('--now needs a running systemd', async (t) => {
  const root = await scratch(t);
  await t.rejects(installService({ root, now: true }), { code: 'VMS_SERVICE' });
});

t.test('the command line: --json, and the same report', async (t) => {
  const root = await scratch(t);
  const cli = path.join(packageRoot(), 'dist/lib/cli/entry.cjs');
  const { stdout } = await run(process.execPath, [cli, 'service', 'install', '--root', root, '--json']);
  const r = JSON.parse(stdout);
  t.match(r, { root, systemd: 'no-systemd' });
  t.equal(results(r)[UNIT_PATH], 'created');
  const text = (await run(process.execPath, [cli, 'service', 'install', '--root', root])).stdout;
  t.match(text, new RegExp(`${UNIT_PATH.replace(/\//g, '\\/')}\\s+unchanged`));
  t.match(text, /systemd: not running here/);
  const refused = await run(process.execPath, [cli, 'service', 'install', '--root', root, '--now', '--json']).catch(
    (e: { code: number; stdout: string }) => e,
  );
  t.equal((refused as { code: number }).code, 69);
  t.match(JSON.parse((refused as { stdout: string }).stdout), { error: { code: 'VMS_SERVICE' } });
});
