/**
 * The values config keys take, and their parsers: each turns a raw value from
 * one source (file, environment, flag) into its type, or throws VMS_CONFIG
 * naming the key, the source and the reason in its details. config-keys.ts
 * names the keys.
 */
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
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

export type Source = 'default' | 'file' | 'env' | 'flag';

export type Raw = unknown;

/**
 * A bad value. details: the key and its source, the `reason` ('invalid', with what was `expected`;
 * 'unknown-field'; 'duplicate') and its specifics.
 */
function fail(key: string, from: Source, what: string, details: Record<string, unknown>): never {
  const source =
    from === 'env' ? 'environment' : from === 'flag' ? 'command line' : from === 'file' ? 'config file' : 'default';
  throw new VmsynthError('VMS_CONFIG', `${key} (${source}): ${what}`, { details: { key, source: from, ...details } });
}

export const int =
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

export const bool =
  (key: string) =>
  (v: Raw, from: Source): boolean => {
    if (typeof v === 'boolean') return v;
    const s = typeof v === 'string' ? v.trim().toLowerCase() : '';
    if (['true', 'yes', 'on', '1'].includes(s)) return true;
    if (['false', 'no', 'off', '0'].includes(s)) return false;
    return fail(key, from, `must be true or false, got ${JSON.stringify(v)}`, {
      reason: 'invalid',
      expected: 'boolean',
    });
  };

export const str =
  (key: string) =>
  (v: Raw, from: Source): string => {
    if (typeof v !== 'string' || v === '')
      fail(key, from, `must be a non-empty string, got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 'string',
      });
    return v;
  };

/** A SHA-256 in hex (a token's, as `vmsynth token generate` prints it), or null. */
export const optSha256 =
  (key: string) =>
  (v: Raw, from: Source): string | null => {
    if (v === null || v === '') return null;
    if (typeof v !== 'string' || !/^[0-9a-f]{64}$/i.test(v))
      fail(key, from, `must be a SHA-256 in hex (64 digits), got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 'sha256',
      });
    return v.toLowerCase();
  };

export const absPath =
  (key: string) =>
  (v: Raw, from: Source): string =>
    path.resolve(str(key)(v, from));

export const optPath =
  (key: string) =>
  (v: Raw, from: Source): string | null =>
    v === null || v === '' ? null : absPath(key)(v, from);

/** "[host:]port", "host" or "[v6]:port". */
export function parseAddress(v: string, defaultPort: number = DEFAULTS.port): Address | null {
  const m = /^(?:(\[[^\]]+\]|[^:]*):)?(\d+)$/.exec(v) ?? /^(\[[^\]]+\]|[^:]+)$/.exec(v);
  if (!m) return null;
  const port = m[2] !== undefined ? Number(m[2]) : defaultPort;
  if (port > 65535) return null;
  return { host: (m[1] || DEFAULTS.listenHost).replace(/^\[|\]$/g, ''), port };
}

export const address =
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

/** A list of HOST:PORT addresses (env: separated by "," or spaces). */
export const addresses =
  (key: string, defaultPort: number) =>
  (v: Raw, from: Source): Address[] => {
    const items = typeof v === 'string' ? v.split(/[,\s]+/).filter(Boolean) : v;
    if (!Array.isArray(items))
      fail(key, from, `must be a list of HOST:PORT, got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 'addresses',
      });
    return (items as Raw[]).map((x) => address(key, defaultPort)(x, from));
  };

/** An IPv4 or IPv6 address, or null. */
export const optIp =
  (key: string) =>
  (v: Raw, from: Source): string | null => {
    if (v === null || v === '') return null;
    if (typeof v !== 'string' || isIP(v) === 0)
      fail(key, from, `must be an IP address (an interface's), got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 'ip',
      });
    return v;
  };

/** A list of s3:// URLs (env: separated by "," or spaces). */
export const s3Urls =
  (key: string) =>
  (v: Raw, from: Source): string[] => {
    const items = typeof v === 'string' ? v.split(/[,\s]+/).filter(Boolean) : v;
    const ok = (s: unknown) => typeof s === 'string' && /^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/.*)?$/.test(s);
    if (!Array.isArray(items) || !items.every(ok))
      fail(key, from, `must be a list of s3://BUCKET[/PREFIX] URLs, got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 's3 urls',
      });
    return (items as string[]).map((s) => s.replace(/\/+$/, ''));
  };

/** An http(s) URL, or null ("" or "off"). */
export const optUrl =
  (key: string) =>
  (v: Raw, from: Source): string | null => {
    if (v === null || v === '' || v === 'off') return null;
    if (typeof v !== 'string' || !/^https?:\/\/[^\s/]+/.test(v))
      fail(key, from, `must be an http:// or https:// URL, got ${JSON.stringify(v)}`, {
        reason: 'invalid',
        expected: 'url',
      });
    return v;
  };

export const list =
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

export const oneOf =
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
export const clients =
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
