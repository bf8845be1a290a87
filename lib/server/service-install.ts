/**
 * `vmsynth service install`: what docs/operations.md once did by hand, in
 * one idempotent step. It links the command (/usr/local/bin/vmsynth, the
 * path the unit's ExecStart names) to this package's entry point, writes
 * the unit from packaging/vmsynth.service (its documentation link naming
 * this package's path), writes a starting config from
 * packaging/vmsynth.json unless one exists (a config is never overwritten),
 * makes the state directory (bases/, keys/: 0700) so bases and keys can be
 * added before the first start, and has systemd reload its units. With
 * `now`, the unit is enabled and started.
 *
 * Everything is relative to `root` ("/" normally; a directory in tests, or
 * a container's root seen from the host), and systemctl runs only when
 * root is "/" and systemd is running. Each step reports what it did:
 * created, updated, unchanged, or kept (something there that is not ours).
 */
import { execFile } from 'node:child_process';
import { constants, promises as fsp } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { VmsynthError } from '../core/errors.js';
import { packageRoot } from '../core/paths.js';

const run = promisify(execFile);

export const UNIT_PATH = '/etc/systemd/system/vmsynth.service';
export const CONFIG_PATH = '/etc/vmsynth/vmsynth.json';
export const BIN_PATH = '/usr/local/bin/vmsynth';
export const STATE_DIRS = ['/var/lib/vmsynth', '/var/lib/vmsynth/bases', '/var/lib/vmsynth/keys'];

export type StepResult = 'created' | 'updated' | 'unchanged' | 'kept';

export interface InstallStep {
  what: 'command' | 'unit' | 'config' | 'directory';
  path: string;
  result: StepResult;
  /** Why a step kept what was there. */
  note?: string;
}

export interface InstallReport {
  root: string;
  steps: InstallStep[];
  /** What systemctl did: units reloaded, and with `now` the service enabled and started; 'no-systemd' when none runs (or root is not "/"). */
  systemd: 'reloaded' | 'started' | 'no-systemd';
}

export interface InstallOptions {
  /** Install under this directory instead of "/" (no systemctl then). */
  root?: string;
  /** Enable and start the service (systemctl enable --now). */
  now?: boolean;
}

/** The package's command entry point, as the link should name it. */
export function entryPoint(): string {
  return path.join(packageRoot(), 'dist', 'lib', 'cli', 'entry.cjs');
}

export async function installService(o: InstallOptions = {}): Promise<InstallReport> {
  const root = path.resolve(o.root ?? '/');
  const at = (p: string) => path.join(root, p);
  const entry = entryPoint();
  if (!(await exists(entry)))
    throw new VmsynthError('VMS_USAGE', `${entry} is missing: build the package first (npm run bootstrap)`);
  const steps: InstallStep[] = [];
  try {
    steps.push(await linkCommand(at(BIN_PATH), entry));
    const unit = await unitText();
    steps.push({ what: 'unit', path: UNIT_PATH, result: await writeIfChanged(at(UNIT_PATH), unit, 0o644) });
    const config = await fsp.readFile(path.join(packageRoot(), 'packaging', 'vmsynth.json'));
    const cfgExists = await exists(at(CONFIG_PATH));
    if (!cfgExists) await writeIfChanged(at(CONFIG_PATH), config, 0o640);
    steps.push({
      what: 'config',
      path: CONFIG_PATH,
      result: cfgExists ? 'kept' : 'created',
      ...(cfgExists ? { note: 'an existing config is never overwritten' } : {}),
    });
    for (const d of STATE_DIRS) {
      const had = await exists(at(d));
      await fsp.mkdir(at(d), { recursive: true, mode: 0o700 });
      steps.push({ what: 'directory', path: d, result: had ? 'unchanged' : 'created' });
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'EROFS')
      throw new VmsynthError('VMS_SERVICE', `cannot write ${e.path ?? root}: ${e.code}; run as root`, { cause: err });
    throw err;
  }
  return { root, steps, systemd: await systemctl(root, o.now === true) };
}

/** The unit as installed: packaging/vmsynth.service with @PACKAGE@ replaced by the package's path. */
export async function unitText(): Promise<Buffer> {
  const text = await fsp.readFile(path.join(packageRoot(), 'packaging', 'vmsynth.service'), 'utf8');
  return Buffer.from(text.replaceAll('@PACKAGE@', packageRoot()));
}

/** /usr/local/bin/vmsynth → the entry point; a file there that is not a link (an installed copy) is kept. */
async function linkCommand(link: string, entry: string): Promise<InstallStep> {
  const step = (result: StepResult, note?: string): InstallStep => ({
    what: 'command',
    path: BIN_PATH,
    result,
    ...(note ? { note } : {}),
  });
  await fsp.chmod(entry, 0o755);
  const st = await fsp.lstat(link).catch(() => null);
  if (st && !st.isSymbolicLink()) return step('kept', 'not a link: an installed copy; remove it to link this package');
  if (st && (await fsp.realpath(link).catch(() => null)) === (await fsp.realpath(entry))) return step('unchanged');
  await fsp.mkdir(path.dirname(link), { recursive: true });
  const tmp = `${link}.${process.pid}.tmp`;
  await fsp.rm(tmp, { force: true });
  await fsp.symlink(entry, tmp);
  await fsp.rename(tmp, link);
  return step(st ? 'updated' : 'created');
}

async function writeIfChanged(file: string, data: Buffer, mode: number): Promise<StepResult> {
  const old = await fsp.readFile(file).catch(() => null);
  if (old?.equals(data)) return 'unchanged';
  await fsp.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, data, { mode });
  await fsp.chmod(tmp, mode);
  await fsp.rename(tmp, file);
  return old ? 'updated' : 'created';
}

async function systemctl(root: string, now: boolean): Promise<InstallReport['systemd']> {
  if (root !== '/' || !(await exists('/run/systemd/system'))) {
    if (now) throw new VmsynthError('VMS_SERVICE', 'no systemd runs here to start the service (--now)');
    return 'no-systemd';
  }
  const ctl = (args: string[]) =>
    run('systemctl', args).catch((err: { stderr?: string; message: string }) => {
      throw new VmsynthError(
        'VMS_SERVICE',
        `systemctl ${args.join(' ')} failed: ${(err.stderr || err.message).trim()}`,
        {
          cause: err,
        },
      );
    });
  await ctl(['daemon-reload']);
  if (!now) return 'reloaded';
  await ctl(['enable', '--now', 'vmsynth.service']);
  return 'started';
}

async function exists(p: string): Promise<boolean> {
  return fsp.access(p, constants.F_OK).then(
    () => true,
    () => false,
  );
}
