/**
 * Reaching a synthesis server: the address a user gives, the TCP or TLS
 * connection (VMS_CONNECT, with the reason in details, when it fails), and
 * the server's error codes as the client's own.
 */
import net from 'node:net';
import tls from 'node:tls';
import { DEFAULTS } from '../core/defaults.js';
import { ERRORS, VmsynthError, type ErrorCode } from '../core/errors.js';
import type { SynthesizeOptions } from './types.js';

export function parseServer(spec: SynthesizeOptions['server']): { host: string; port: number } {
  if (typeof spec !== 'string') return spec;
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(spec.trim());
  const port = m?.[2] ? Number(m[2]) : DEFAULTS.port;
  if (!m || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new VmsynthError('VMS_USAGE', `--server must be HOST:PORT, got "${spec}"`, {
      details: { flag: '--server', value: spec },
    });
  }
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

export function serverError(code: string, message: string, targetCode?: string): VmsynthError {
  const known = Object.hasOwn(ERRORS, code) ? (code as ErrorCode) : 'VMS_PROTOCOL';
  const target = targetCode !== undefined ? { targetCode } : {};
  return new VmsynthError(known, `the server: ${message}`, { details: { serverCode: code, ...target } });
}

export function connect(
  host: string,
  port: number,
  signal?: AbortSignal,
  secure?: SynthesizeOptions['tls'],
  timeoutMs = 10_000,
): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const t = secure ? (secure === true ? {} : secure) : null;
    const socket = t
      ? tls.connect({
          host,
          port,
          timeout: timeoutMs,
          ...(t.ca ? { ca: t.ca } : {}),
          servername: t.servername ?? (net.isIP(host) ? undefined : host),
        })
      : net.connect({ host, port, timeout: timeoutMs });
    // details.reason: the Node error code (ECONNREFUSED, DEPTH_ZERO_SELF_SIGNED_CERT, ...), 'timeout' or 'cancelled'.
    const fail = (why: string, reason?: string) => {
      socket.destroy();
      const details = { host, port, tls: t !== null, ...(reason ? { reason } : {}) };
      reject(
        new VmsynthError('VMS_CONNECT', `cannot connect to ${host}:${port}${t ? ' over TLS' : ''}: ${why}`, {
          details,
        }),
      );
    };
    socket.once(t ? 'secureConnect' : 'connect', () => {
      socket.setTimeout(0);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('timeout', () => fail(`no answer within ${timeoutMs / 1000} s`, 'timeout'));
    socket.once('error', (err: NodeJS.ErrnoException) =>
      fail(err.message, typeof err.code === 'string' ? err.code : undefined),
    );
    signal?.addEventListener('abort', () => fail('cancelled', 'cancelled'), { once: true });
  });
}
