/**
 * The config keys: one table (KEYS) naming every key once, with its place in
 * the file, its environment variable, its flag, its parser and its default
 * (from core/defaults.ts). A parser turns a raw value from one source into
 * the key's type, or a VMS_CONFIG error naming the key, the source and the
 * reason in its details. Resolving the sources is config.ts's job.
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import { DEFAULTS } from './defaults.js';
import { VmsynthError } from './errors.js';

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

export type Raw = unknown;

export interface KeySpec<K extends keyof Config> {
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
  const source =
    from === 'env' ? 'environment' : from === 'flag' ? 'command line' : from === 'file' ? 'config file' : 'default';
  throw new VmsynthError('VMS_CONFIG', `${key} (${source}): ${what}`, { details: { key, source: from, ...details } });
}

const int =
  (min: number, max = Number.MAX_SAFE_INTEGER) =>
  (key: string) =>
  (v: Raw, from: Source): number => {
    const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < min || n > max) {
      fail(key, from, `must be a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 'integer',
        min,
        max,
      });
    }
    return n;
  };

const str =
  (key: string) =>
  (v: Raw, from: Source): string => {
    if (typeof v !== 'string' || v === '')
      fail(key, from, `must be a non-empty string, got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 'string',
      });
    return v;
  };

const absPath =
  (key: string) =>
  (v: Raw, from: Source): string =>
    path.resolve(str(key)(v, from));

const optPath =
  (key: string) =>
  (v: Raw, from: Source): string | null =>
    v === null || v === '' ? null : absPath(key)(v, from);

/** "[host:]port", "host" or "[v6]:port". */
function parseAddress(v: string, defaultPort: number = DEFAULTS.port): Address | null {
  const m = /^(?:(\[[^\]]+\]|[^:]*):)?(\d+)$/.exec(v) ?? /^(\[[^\]]+\]|[^:]+)$/.exec(v);
  if (!m) return null;
  const port = m[2] !== undefined ? Number(m[2]) : defaultPort;
  if (port > 65535) return null;
  return { host: (m[1] || DEFAULTS.listenHost).replace(/^\[|\]$/g, ''), port };
}

const address =
  (key: string, defaultPort: number) =>
  (v: Raw, from: Source): Address => {
    const a =
      typeof v === 'string'
        ? parseAddress(v, defaultPort)
        : typeof v === 'number'
          ? parseAddress(String(v), defaultPort)
          : null;
    if (!a)
      fail(key, from, `must be "[HOST:]PORT" or "HOST", got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 'address',
      });
    return a;
  };

const list =
  (key: string) =>
  (v: Raw, from: Source): string[] => {
    const items = typeof v === 'string' ? v.split(/[,:]/).filter(Boolean) : v;
    if (!Array.isArray(items) || !items.every((s) => typeof s === 'string' && s !== '')) {
      fail(key, from, `must be a list of file paths, got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 'paths',
      });
    }
    return (items as string[]).map((s) => path.resolve(s));
  };

const oneOf =
  <T extends string>(key: string, values: readonly T[]) =>
  (v: Raw, from: Source): T => {
    if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
      fail(key, from, `must be one of ${values.join(', ')}, got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 'one-of',
        allowed: values,
      });
    }
    return v as T;
  };

export function tokenSha256(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** File: a list of { name, tokenSha256 }. Environment and flag: one plain token, for a client named after its source. */
const clients =
  (key: string) =>
  (v: Raw, from: Source): ClientCredential[] => {
    if (from === 'env' || from === 'flag')
      return [{ name: from === 'env' ? 'env-token' : 'flag-token', tokenSha256: tokenSha256(str(key)(v, from)) }];
    if (!Array.isArray(v)) {
      const what =
        'must be a list of { "name": ..., "tokenSha256": ... } (make entries with `vmsynth token generate NAME`)';
      fail(key, from, what, { reason: 'invalid', expected: 'clients' });
    }
    const names = new Set<string>();
    return v.map((c: unknown, i) => {
      const o = c as Record<string, unknown>;
      if (typeof o !== 'object' || o === null || typeof o.name !== 'string' || !/^[\w.-]{1,64}$/.test(o.name)) {
        fail(`${key}[${i}].name`, from, 'must be 1-64 letters, digits, ".", "_" or "-"', {
          reason: 'invalid',
          expected: 'name',
        });
      }
      if (typeof o.tokenSha256 !== 'string' || !/^[0-9a-f]{64}$/.test(o.tokenSha256)) {
        fail(`${key}[${i}].tokenSha256`, from, 'must be 64 lowercase hex digits (the SHA-256 of the token)', {
          reason: 'invalid',
          expected: 'sha256',
        });
      }
      const extra = Object.keys(o).filter((k) => k !== 'name' && k !== 'tokenSha256');
      if (extra.length)
        fail(`${key}[${i}]`, from, `unknown field ${extra.join(', ')}`, { reason: 'unknown-field', fields: extra });
      if (names.has(o.name))
        fail(`${key}[${i}].name`, from, `"${o.name}" is listed twice`, { reason: 'duplicate', name: o.name });
      names.add(o.name);
      return { name: o.name, tokenSha256: o.tokenSha256 };
    });
  };

const spec = <K extends keyof Config>(
  s: Omit<KeySpec<K>, 'parse'> & { parse: (key: string) => (v: Raw, from: Source) => Config[K] },
): KeySpec<K> => ({ ...s, parse: s.parse(s.key) });

export const KEYS = [
  spec({
    key: 'listen',
    env: ['VMSYNTH_LISTEN'],
    flag: 'listen',
    doc: 'synthesis protocol address, [HOST:]PORT',
    default: { host: DEFAULTS.listenHost, port: DEFAULTS.port },
    parse: (k) => address(k, DEFAULTS.port),
  }),
  spec({
    key: 'metricsListen',
    env: ['VMSYNTH_METRICS_LISTEN'],
    flag: 'metricsListen',
    doc: 'HTTP /healthz, /readyz, /metrics address, [HOST:]PORT, or "off"',
    default: null,
    parse: (k) => (v, from) => (v === 'off' || v === null ? null : address(k, DEFAULTS.metricsPort)(v, from)),
  }),
  spec({
    key: 'baseDir',
    env: ['VMSYNTH_BASE_DIR'],
    doc: 'base VM directories',
    default: DEFAULTS.baseDir,
    parse: absPath,
  }),
  spec({
    key: 'runDir',
    env: ['VMSYNTH_RUN_DIR'],
    doc: 'session directories and FUSE mounts',
    default: DEFAULTS.runDir,
    parse: absPath,
  }),
  spec({
    key: 'keyDir',
    env: ['VMSYNTH_KEY_DIR'],
    doc: 'signing keys, and trusted public keys in trusted/',
    default: DEFAULTS.keyDir,
    parse: absPath,
  }),
  spec({
    key: 'cacheDir',
    env: ['VMSYNTH_CACHE_DIR'],
    doc: 'test guest build cache',
    default: DEFAULTS.cacheDir,
    parse: absPath,
  }),
  spec({
    key: 'libvirtUri',
    env: ['VMSYNTH_LIBVIRT_URI', 'LIBVIRT_URI'],
    doc: 'libvirt connection',
    default: DEFAULTS.libvirtUri,
    parse: str,
  }),
  spec({
    key: 'trust',
    env: ['VMSYNTH_TRUST'],
    flag: 'trust',
    doc: 'more trusted overlay public key files (env: separated by "," or ":")',
    default: [],
    parse: list,
  }),
  spec({
    key: 'clients',
    env: ['VMSYNTH_TOKEN'],
    flag: 'token',
    doc: 'clients allowed in: file, [{name, tokenSha256}]; env/flag, one token',
    default: [],
    parse: clients,
    secret: true,
  }),
  spec({
    key: 'tlsCert',
    env: ['VMSYNTH_TLS_CERT'],
    flag: 'tlsCert',
    doc: 'TLS certificate (PEM); with tlsKey the server speaks TLS',
    default: null,
    parse: optPath,
  }),
  spec({
    key: 'tlsKey',
    env: ['VMSYNTH_TLS_KEY'],
    flag: 'tlsKey',
    doc: 'TLS private key (PEM)',
    default: null,
    parse: optPath,
  }),
  spec({
    key: 'maxSessions',
    env: ['VMSYNTH_MAX_SESSIONS'],
    flag: 'maxSessions',
    doc: 'sessions at once (more: VMS_BUSY)',
    default: DEFAULTS.maxSessions,
    parse: (k) => int(1, 1024)(k),
  }),
  spec({
    key: 'maxSessionsPerClient',
    env: ['VMSYNTH_MAX_SESSIONS_PER_CLIENT'],
    flag: 'maxSessionsPerClient',
    doc: 'sessions at once per client name (more: VMS_LIMIT)',
    default: DEFAULTS.maxSessionsPerClient,
    parse: (k) => int(1, 1024)(k),
  }),
  spec({
    key: 'sessionMemoryMib',
    env: ['VMSYNTH_SESSION_MEMORY_MIB'],
    flag: 'sessionMemoryMib',
    doc: 'guest RAM + in-flight segments one session may use, MiB (more: VMS_LIMIT)',
    default: DEFAULTS.sessionMemoryMib,
    parse: (k) => int(64)(k),
  }),
  spec({
    key: 'maxInFlightKib',
    env: ['VMSYNTH_MAX_IN_FLIGHT_KIB'],
    flag: 'maxInFlightKib',
    doc: 'background segment bytes asked for and not yet applied, per session, KiB',
    default: DEFAULTS.maxInFlightKib,
    parse: (k) => int(64, 1 << 20)(k),
  }),
  spec({
    key: 'threads',
    env: ['VMSYNTH_THREADS'],
    flag: 'threads',
    doc: 'worker threads per session for verify + decompress + apply',
    default: DEFAULTS.threads,
    parse: (k) => int(1, 64)(k),
  }),
  spec({
    key: 'connectionsPerMinute',
    env: ['VMSYNTH_CONNECTIONS_PER_MINUTE'],
    flag: 'connectionsPerMinute',
    doc: 'new connections per minute from one address (more: VMS_RATE_LIMITED)',
    default: DEFAULTS.connectionsPerMinute,
    parse: (k) => int(1)(k),
  }),
  spec({
    key: 'handshakeTimeoutS',
    env: ['VMSYNTH_HANDSHAKE_TIMEOUT_S'],
    flag: 'handshakeTimeout',
    doc: 'seconds a connection has to authenticate and open its session',
    default: DEFAULTS.handshakeTimeoutS,
    parse: (k) => int(1, 3600)(k),
  }),
  spec({
    key: 'gracefulStopS',
    env: ['VMSYNTH_GRACEFUL_STOP_S'],
    doc: "seconds SIGTERM waits for sessions to tear down before forcing (keep under the unit's TimeoutStopSec)",
    default: DEFAULTS.gracefulStopS,
    parse: (k) => int(1, 3600)(k),
  }),
  spec({
    key: 'logLevel',
    env: ['LOG_LEVEL'],
    flag: 'logLevel',
    doc: 'debug | info | warn | error | silent',
    default: DEFAULTS.logLevel,
    parse: (k) => oneOf(k, ['debug', 'info', 'warn', 'error', 'silent'] as const),
  }),
  spec({
    key: 'logFormat',
    env: ['LOG_FORMAT'],
    flag: 'logFormat',
    doc: 'json (pino, to stdout) | text (to stderr)',
    default: DEFAULTS.logFormat,
    parse: (k) => oneOf(k, ['json', 'text'] as const),
  }),
] as const;
