/**
 * The server's effective configuration, from four sources in rising
 * precedence: built-in defaults, the config file (JSON; /etc/vmsynth/vmsynth.json
 * unless VMSYNTH_CONFIG or --config names another), VMSYNTH_* environment
 * variables, and command-line flags.
 *
 * One table (KEYS) names every key once: its place in the file, its
 * environment variable, its flag, its parser and its default. Resolution
 * records where each value came from, so `vmsynth config check` can say why
 * a value is what it is. A bad value is a VMS_CONFIG error naming the key and
 * the source; an unknown key in the file is one too (a typo must not be
 * ignored silently on an unattended cloudlet).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { DEFAULTS } from './defaults.js';
import { VmsynthError } from './errors.js';

export const DEFAULT_CONFIG_FILE = DEFAULTS.configFile;

export interface Address {
  host: string;
  port: number;
}

/** A client allowed to open sessions: its name (logs, metrics, limits) and the SHA-256 of its token. */
export interface ClientCredential {
  name: string;
  tokenSha256: string;
}

export interface Config {
  listen: Address;
  /** Health and metrics HTTP endpoint; null: off. */
  metricsListen: Address | null;
  baseDir: string;
  runDir: string;
  keyDir: string;
  cacheDir: string;
  libvirtUri: string;
  /** Public key files trusted besides `keyDir`/trusted. */
  trust: string[];
  /** Empty: no authentication (only sensible on loopback). */
  clients: ClientCredential[];
  tlsCert: string | null;
  tlsKey: string | null;
  maxSessions: number;
  maxSessionsPerClient: number;
  /** Guest RAM plus in-flight segment bytes one session may pin, MiB. */
  sessionMemoryMib: number;
  maxInFlightKib: number;
  threads: number;
  /** New connections per minute from one address. */
  connectionsPerMinute: number;
  handshakeTimeoutS: number;
  /** How long SIGTERM waits for sessions to tear down before forcing. */
  gracefulStopS: number;
  logLevel: 'debug' | 'info' | 'warn' | 'error' | 'silent';
  logFormat: 'json' | 'text';
}

export type Source = 'default' | 'file' | 'env' | 'flag';

type Raw = unknown;

interface KeySpec<K extends keyof Config> {
  key: K;
  /** Environment variables, first found wins (the first is the documented one). */
  env: string[];
  /** Commander's attribute name for the flag, when there is one. */
  flag?: string;
  doc: string;
  default: Config[K];
  parse(v: Raw, from: Source): Config[K];
  /** Printed redacted by `config check`. */
  secret?: boolean;
}

/**
 * A bad value. details: the key and its source, the `reason` ('invalid', with what was `expected`;
 * 'unknown-field'; 'duplicate') and its specifics.
 */
function fail(key: string, from: Source, what: string, details: Record<string, unknown>): never {
  const source = from === 'env' ? 'environment' : from === 'flag' ? 'command line' : from === 'file' ? 'config file' : 'default';
  throw new VmsynthError('VMS_CONFIG', `${key} (${source}): ${what}`, { details: { key, source: from, ...details } });
}

const int = (min: number, max = Number.MAX_SAFE_INTEGER) => (key: string) => (v: Raw, from: Source): number => {
  const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < min || n > max) {
    fail(key, from, `must be a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`, { reason: 'invalid', expected: 'integer', min, max });
  }
  return n;
};

const str = (key: string) => (v: Raw, from: Source): string => {
  if (typeof v !== 'string' || v === '') fail(key, from, `must be a non-empty string, got ${JSON.stringify(v)}`, { reason: 'invalid', expected: 'string' });
  return v;
};

const absPath = (key: string) => (v: Raw, from: Source): string => path.resolve(str(key)(v, from));

const optPath = (key: string) => (v: Raw, from: Source): string | null => (v === null || v === '' ? null : absPath(key)(v, from));

/** "[host:]port", "host" or "[v6]:port". */
function parseAddress(v: string, defaultPort: number = DEFAULTS.port): Address | null {
  const m = /^(?:(\[[^\]]+\]|[^:]*):)?(\d+)$/.exec(v) ?? /^(\[[^\]]+\]|[^:]+)$/.exec(v);
  if (!m) return null;
  const port = m[2] !== undefined ? Number(m[2]) : defaultPort;
  if (port > 65535) return null;
  return { host: (m[1] || DEFAULTS.listenHost).replace(/^\[|\]$/g, ''), port };
}

const address = (key: string, defaultPort: number) => (v: Raw, from: Source): Address => {
  const a = typeof v === 'string' ? parseAddress(v, defaultPort) : typeof v === 'number' ? parseAddress(String(v), defaultPort) : null;
  if (!a) fail(key, from, `must be "[HOST:]PORT" or "HOST", got ${JSON.stringify(v)}`, { reason: 'invalid', expected: 'address' });
  return a;
};

const list = (key: string) => (v: Raw, from: Source): string[] => {
  const items = typeof v === 'string' ? v.split(/[,:]/).filter(Boolean) : v;
  if (!Array.isArray(items) || !items.every((s) => typeof s === 'string' && s !== '')) {
    fail(key, from, `must be a list of file paths, got ${JSON.stringify(v)}`, { reason: 'invalid', expected: 'paths' });
  }
  return (items as string[]).map((s) => path.resolve(s));
};

const oneOf = <T extends string>(key: string, values: readonly T[]) => (v: Raw, from: Source): T => {
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
    fail(key, from, `must be one of ${values.join(', ')}, got ${JSON.stringify(v)}`, { reason: 'invalid', expected: 'one-of', allowed: values });
  }
  return v as T;
};

export function tokenSha256(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** File: a list of { name, tokenSha256 }. Environment and flag: one plain token, for a client named after its source. */
const clients = (key: string) => (v: Raw, from: Source): ClientCredential[] => {
  if (from === 'env' || from === 'flag') return [{ name: from === 'env' ? 'env-token' : 'flag-token', tokenSha256: tokenSha256(str(key)(v, from)) }];
  if (!Array.isArray(v)) {
    const what = 'must be a list of { "name": ..., "tokenSha256": ... } (make entries with `vmsynth token generate NAME`)';
    fail(key, from, what, { reason: 'invalid', expected: 'clients' });
  }
  const names = new Set<string>();
  return v.map((c: unknown, i) => {
    const o = c as Record<string, unknown>;
    if (typeof o !== 'object' || o === null || typeof o.name !== 'string' || !/^[\w.-]{1,64}$/.test(o.name)) {
      fail(`${key}[${i}].name`, from, 'must be 1-64 letters, digits, ".", "_" or "-"', { reason: 'invalid', expected: 'name' });
    }
    if (typeof o.tokenSha256 !== 'string' || !/^[0-9a-f]{64}$/.test(o.tokenSha256)) {
      fail(`${key}[${i}].tokenSha256`, from, 'must be 64 lowercase hex digits (the SHA-256 of the token)', { reason: 'invalid', expected: 'sha256' });
    }
    const extra = Object.keys(o).filter((k) => k !== 'name' && k !== 'tokenSha256');
    if (extra.length) fail(`${key}[${i}]`, from, `unknown field ${extra.join(', ')}`, { reason: 'unknown-field', fields: extra });
    if (names.has(o.name)) fail(`${key}[${i}].name`, from, `"${o.name}" is listed twice`, { reason: 'duplicate', name: o.name });
    names.add(o.name);
    return { name: o.name, tokenSha256: o.tokenSha256 };
  });
};

const spec = <K extends keyof Config>(s: Omit<KeySpec<K>, 'parse'> & { parse: (key: string) => (v: Raw, from: Source) => Config[K] }): KeySpec<K> =>
  ({ ...s, parse: s.parse(s.key) });

export const KEYS = [
  spec({ key: 'listen', env: ['VMSYNTH_LISTEN'], flag: 'listen', doc: 'synthesis protocol address, [HOST:]PORT', default: { host: DEFAULTS.listenHost, port: DEFAULTS.port }, parse: (k) => address(k, DEFAULTS.port) }),
  spec({ key: 'metricsListen', env: ['VMSYNTH_METRICS_LISTEN'], flag: 'metricsListen', doc: 'HTTP /healthz, /readyz, /metrics address, [HOST:]PORT, or "off"', default: null, parse: (k) => (v, from) => (v === 'off' || v === null ? null : address(k, DEFAULTS.metricsPort)(v, from)) }),
  spec({ key: 'baseDir', env: ['VMSYNTH_BASE_DIR'], doc: 'base VM directories', default: DEFAULTS.baseDir, parse: absPath }),
  spec({ key: 'runDir', env: ['VMSYNTH_RUN_DIR'], doc: 'session directories and FUSE mounts', default: DEFAULTS.runDir, parse: absPath }),
  spec({ key: 'keyDir', env: ['VMSYNTH_KEY_DIR'], doc: 'signing keys, and trusted public keys in trusted/', default: DEFAULTS.keyDir, parse: absPath }),
  spec({ key: 'cacheDir', env: ['VMSYNTH_CACHE_DIR'], doc: 'test guest build cache', default: DEFAULTS.cacheDir, parse: absPath }),
  spec({ key: 'libvirtUri', env: ['VMSYNTH_LIBVIRT_URI', 'LIBVIRT_URI'], doc: 'libvirt connection', default: DEFAULTS.libvirtUri, parse: str }),
  spec({ key: 'trust', env: ['VMSYNTH_TRUST'], flag: 'trust', doc: 'more trusted overlay public key files (env: separated by "," or ":")', default: [], parse: list }),
  spec({ key: 'clients', env: ['VMSYNTH_TOKEN'], flag: 'token', doc: 'clients allowed in: file, [{name, tokenSha256}]; env/flag, one token', default: [], parse: clients, secret: true }),
  spec({ key: 'tlsCert', env: ['VMSYNTH_TLS_CERT'], flag: 'tlsCert', doc: 'TLS certificate (PEM); with tlsKey the server speaks TLS', default: null, parse: optPath }),
  spec({ key: 'tlsKey', env: ['VMSYNTH_TLS_KEY'], flag: 'tlsKey', doc: 'TLS private key (PEM)', default: null, parse: optPath }),
  spec({ key: 'maxSessions', env: ['VMSYNTH_MAX_SESSIONS'], flag: 'maxSessions', doc: 'sessions at once (more: VMS_BUSY)', default: DEFAULTS.maxSessions, parse: (k) => int(1, 1024)(k) }),
  spec({ key: 'maxSessionsPerClient', env: ['VMSYNTH_MAX_SESSIONS_PER_CLIENT'], flag: 'maxSessionsPerClient', doc: 'sessions at once per client name (more: VMS_LIMIT)', default: DEFAULTS.maxSessionsPerClient, parse: (k) => int(1, 1024)(k) }),
  spec({ key: 'sessionMemoryMib', env: ['VMSYNTH_SESSION_MEMORY_MIB'], flag: 'sessionMemoryMib', doc: 'guest RAM + in-flight segments one session may use, MiB (more: VMS_LIMIT)', default: DEFAULTS.sessionMemoryMib, parse: (k) => int(64)(k) }),
  spec({ key: 'maxInFlightKib', env: ['VMSYNTH_MAX_IN_FLIGHT_KIB'], flag: 'maxInFlightKib', doc: 'background segment bytes asked for and not yet applied, per session, KiB', default: DEFAULTS.maxInFlightKib, parse: (k) => int(64, 1 << 20)(k) }),
  spec({ key: 'threads', env: ['VMSYNTH_THREADS'], flag: 'threads', doc: 'worker threads per session for verify + decompress + apply', default: DEFAULTS.threads, parse: (k) => int(1, 64)(k) }),
  spec({ key: 'connectionsPerMinute', env: ['VMSYNTH_CONNECTIONS_PER_MINUTE'], flag: 'connectionsPerMinute', doc: 'new connections per minute from one address (more: VMS_RATE_LIMITED)', default: DEFAULTS.connectionsPerMinute, parse: (k) => int(1)(k) }),
  spec({ key: 'handshakeTimeoutS', env: ['VMSYNTH_HANDSHAKE_TIMEOUT_S'], flag: 'handshakeTimeout', doc: 'seconds a connection has to authenticate and open its session', default: DEFAULTS.handshakeTimeoutS, parse: (k) => int(1, 3600)(k) }),
  spec({ key: 'gracefulStopS', env: ['VMSYNTH_GRACEFUL_STOP_S'], doc: 'seconds SIGTERM waits for sessions to tear down before forcing (keep under the unit\'s TimeoutStopSec)', default: DEFAULTS.gracefulStopS, parse: (k) => int(1, 3600)(k) }),
  spec({ key: 'logLevel', env: ['LOG_LEVEL'], flag: 'logLevel', doc: 'debug | info | warn | error | silent', default: DEFAULTS.logLevel, parse: (k) => oneOf(k, ['debug', 'info', 'warn', 'error', 'silent'] as const) }),
  spec({ key: 'logFormat', env: ['LOG_FORMAT'], flag: 'logFormat', doc: 'json (pino, to stdout) | text (to stderr)', default: DEFAULTS.logFormat, parse: (k) => oneOf(k, ['json', 'text'] as const) }),
] as const;

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
  if (env.CONFIGURATION_DIRECTORY) return { file: path.join(env.CONFIGURATION_DIRECTORY.split(':')[0]!, 'vmsynth.json'), explicit: false };
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
      cause: err, details: { file, reason: 'unreadable', errno },
    });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new VmsynthError('VMS_CONFIG', `the config file ${file} is not valid JSON: ${(err as Error).message}`, {
      cause: err, details: { file, reason: 'json' },
    });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new VmsynthError('VMS_CONFIG', `the config file ${file} must hold one JSON object`, { details: { file, reason: 'not-object' } });
  }
  const known = new Set<string>(KEYS.map((k) => k.key));
  const unknown = Object.keys(v).filter((k) => !known.has(k) && k !== '$comment');
  if (unknown.length) {
    throw new VmsynthError('VMS_CONFIG', `the config file ${file} has unknown key(s) ${unknown.join(', ')}; known keys: ${[...known].join(', ')}`, {
      details: { file, reason: 'unknown-keys', keys: unknown },
    });
  }
  return v as Record<string, unknown>;
}

/**
 * Resolves the effective config. `flags` holds commander's parsed options:
 * a flag counts only when it was given (undefined otherwise; repeatable
 * flags count when non-empty).
 */
export function resolveConfig(opts: { flags?: Record<string, unknown>; configFile?: string; env?: NodeJS.ProcessEnv } = {}): Resolved {
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
    const [key, missing] = c.tlsCert === null ? ['tlsKey', 'tlsCert'] as const : ['tlsCert', 'tlsKey'] as const;
    throw new VmsynthError('VMS_CONFIG', 'tlsCert and tlsKey go together: set both for TLS, or neither', {
      details: { key, source: sources[key], reason: 'tls-pair', missing },
    });
  }
  return { config: c, sources, file: fileValues ? where.file : null };
}

/** An open server (no clients listed) is only allowed on loopback: anyone who reaches it may start VMs. */
export function checkExposure(c: Config): void {
  const loopback = c.listen.host === 'localhost' || c.listen.host === '::1' || c.listen.host.startsWith('127.');
  if (c.clients.length === 0 && !loopback) {
    const listen = `${c.listen.host}:${c.listen.port}`;
    const what = `none listed, so anyone who reaches ${listen} could start VMs; add clients (\`vmsynth token generate NAME\`) or listen on loopback`;
    throw new VmsynthError('VMS_CONFIG', `clients: ${what}`, { details: { key: 'clients', reason: 'open-server', listen } });
  }
}

/** Hands the path keys to lib/core/paths.ts, which reads them from the environment (as do child processes). */
export function exportPaths(c: Config, env: NodeJS.ProcessEnv = process.env): void {
  env.VMSYNTH_BASE_DIR = c.baseDir;
  env.VMSYNTH_RUN_DIR = c.runDir;
  env.VMSYNTH_KEY_DIR = c.keyDir;
  env.VMSYNTH_CACHE_DIR = c.cacheDir;
  env.LIBVIRT_URI = c.libvirtUri;
}

/** The config as `config check` prints it: secrets replaced by what they are. */
export function redacted(c: Config): Record<string, unknown> {
  return { ...c, clients: c.clients.map((cl) => ({ name: cl.name, tokenSha256: `${cl.tokenSha256.slice(0, 8)}…` })) };
}
