/**
 * The server's effective configuration, from four sources in rising
 * precedence: built-in defaults, the config file (JSON; /etc/vmsynth/vmsynth.json
 * unless VMSYNTH_CONFIG or --config names another), VMSYNTH_* environment
 * variables, and command-line flags.
 *
 * One table (KEYS, in config-keys.ts) names every key once: its place in
 * the file, its environment variable, its flag, its parser and its default
 * (core/defaults.ts). Resolution
 * records where each value came from, so `vmsynth config check` can say why
 * a value is what it is. A bad value is a VMS_CONFIG error naming the key and
 * the source; an unknown key in the file is one too (a typo must not be
 * ignored silently on an unattended cloudlet).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { KEYS, type Config, type KeySpec, type Source } from './config-keys.js';
import { DEFAULTS } from './defaults.js';
import { VmsynthError } from './errors.js';
import { isLoopbackHost } from './net.js';

export { KEYS, tokenSha256, type Address, type ClientCredential, type Config, type Source } from './config-keys.js';

export const DEFAULT_CONFIG_FILE = DEFAULTS.configFile;

export interface Resolved {
  config: Config;
  sources: Record<keyof Config, Source>;
  /** The config file read, or null when there was none at the default place. */
  file: string | null;
}

/** Where the config file is: --config, then VMSYNTH_CONFIG, then systemd's ConfigurationDirectory, then /etc/vmsynth. */
export function configFilePath(flag: string | undefined, env: NodeJS.ProcessEnv): { file: string; explicit: boolean } {
  if (flag) return { file: path.resolve(flag), explicit: true };
  if (env.VMSYNTH_CONFIG) return { file: path.resolve(env.VMSYNTH_CONFIG), explicit: true };
  if (env.CONFIGURATION_DIRECTORY)
    return { file: path.join(env.CONFIGURATION_DIRECTORY.split(':')[0]!, 'vmsynth.json'), explicit: false };
  return { file: DEFAULT_CONFIG_FILE, explicit: false };
}

function readConfigFile(file: string, explicit: boolean): Record<string, unknown> | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !explicit) return null;
    const errno = (err as NodeJS.ErrnoException).code;
    throw new VmsynthError('VMS_CONFIG', `cannot read the config file ${file}: ${(err as Error).message}`, {
      cause: err,
      details: { file, reason: 'unreadable', errno },
    });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new VmsynthError('VMS_CONFIG', `the config file ${file} is not valid JSON: ${(err as Error).message}`, {
      cause: err,
      details: { file, reason: 'json' },
    });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new VmsynthError('VMS_CONFIG', `the config file ${file} must hold one JSON object`, {
      details: { file, reason: 'not-object' },
    });
  }
  const known = new Set<string>(KEYS.map((k) => k.key));
  const unknown = Object.keys(v).filter((k) => !known.has(k) && k !== '$comment');
  if (unknown.length) {
    throw new VmsynthError(
      'VMS_CONFIG',
      `the config file ${file} has unknown key(s) ${unknown.join(', ')}; known keys: ${[...known].join(', ')}`,
      {
        details: { file, reason: 'unknown-keys', keys: unknown },
      },
    );
  }
  return v as Record<string, unknown>;
}

/**
 * Resolves the effective config. `flags` holds commander's parsed options:
 * a flag counts only when it was given (undefined otherwise; repeatable
 * flags count when non-empty).
 */
export function resolveConfig(
  opts: { flags?: Record<string, unknown>; configFile?: string; env?: NodeJS.ProcessEnv } = {},
): Resolved {
  const env = opts.env ?? process.env;
  const flags = opts.flags ?? {};
  const where = configFilePath(opts.configFile, env);
  const fileValues = readConfigFile(where.file, where.explicit);
  const config = {} as Record<string, unknown>;
  const sources = {} as Record<string, Source>;
  for (const k of KEYS as readonly KeySpec<keyof Config>[]) {
    let value: unknown = k.default;
    let from: Source = 'default';
    if (fileValues && fileValues[k.key] !== undefined) {
      value = k.parse(fileValues[k.key], 'file');
      from = 'file';
    }
    const envName = k.env.find((e) => env[e] !== undefined && env[e] !== '');
    if (envName) {
      value = k.parse(env[envName], 'env');
      from = 'env';
    }
    const f = k.flag ? flags[k.flag] : undefined;
    if (f !== undefined && !(Array.isArray(f) && f.length === 0)) {
      value = k.parse(f, 'flag');
      from = 'flag';
    }
    config[k.key] = value;
    sources[k.key] = from;
  }
  const c = config as unknown as Config;
  if ((c.tlsCert === null) !== (c.tlsKey === null)) {
    const [key, missing] = c.tlsCert === null ? (['tlsKey', 'tlsCert'] as const) : (['tlsCert', 'tlsKey'] as const);
    throw new VmsynthError('VMS_CONFIG', 'tlsCert and tlsKey go together: set both for TLS, or neither', {
      details: { key, source: sources[key], reason: 'tls-pair', missing },
    });
  }
  return { config: c, sources, file: fileValues ? where.file : null };
}

/** An open server (no clients listed) is only allowed on loopback: anyone who reaches it may start VMs. */
export function checkExposure(c: Config): void {
  if (c.clients.length === 0 && !isLoopbackHost(c.listen.host)) {
    const listen = `${c.listen.host}:${c.listen.port}`;
    const what = `none listed, so anyone who reaches ${listen} could start VMs; add clients (\`vmsynth token generate NAME\`) or listen on loopback`;
    throw new VmsynthError('VMS_CONFIG', `clients: ${what}`, {
      details: { key: 'clients', reason: 'open-server', listen },
    });
  }
}

/** Hands the path keys to lib/core/paths.ts, which reads them from the environment (as do child processes). */
export function exportPaths(c: Config, env: NodeJS.ProcessEnv = process.env): void {
  env.VMSYNTH_BASE_DIR = c.baseDir;
  env.VMSYNTH_RUN_DIR = c.runDir;
  env.VMSYNTH_KEY_DIR = c.keyDir;
  env.VMSYNTH_CACHE_DIR = c.cacheDir;
  env.VMSYNTH_STORE_DIR = c.storeDir;
  env.LIBVIRT_URI = c.libvirtUri;
}

/** The config as `config check` prints it: secrets replaced by what they are. */
export function redacted(c: Config): Record<string, unknown> {
  return {
    ...c,
    clients: c.clients.map((cl) => ({ name: cl.name, tokenSha256: `${cl.tokenSha256.slice(0, 8)}…` })),
    handoffToken: c.handoffToken === null ? null : '(set, not shown)',
  };
}
