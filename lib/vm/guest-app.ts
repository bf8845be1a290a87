/**
 * Talking to the offload app inside a guest over its forwarded host port
 * (127.0.0.1:<port>, QEMU user networking). waitForApp retries until the app
 * answers, and fails fast with a typed error when QEMU dies or time runs out.
 */
import http from 'node:http';
import type net from 'node:net';
import { guestNet } from './guest-netns.js';
import { promises as fsp } from 'node:fs';
import { VmsynthError } from '../core/errors.js';
import { sleep, throwIfAborted } from '../core/scope.js';

export interface AppReply {
  status: number;
  body: Record<string, unknown>;
}

export interface AppWork {
  memMb?: number;
  diskMb?: number;
  diskOffMb?: number;
}

export function workPath(work: AppWork = {}): string {
  return `/run?mem_mb=${work.memMb ?? 0}&disk_mb=${work.diskMb ?? 0}&disk_off_mb=${work.diskOffMb ?? 0}`;
}

export interface HttpReply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One HTTP request to a guest service on 127.0.0.1:<port> (in QEMU's network namespace); rejects on connection errors and on timeout. */
export async function guestRequest(
  port: number,
  method: string,
  path: string,
  timeoutMs: number,
  body?: Buffer,
  signal?: AbortSignal,
): Promise<HttpReply> {
  const gn = await guestNet();
  // From another namespace than QEMU's, the connection is made there (guest-netns.ts) and handed over.
  const createConnection = gn
    ? (_o: unknown, done: (err: Error | null, s?: net.Socket) => void) => {
        gn.dial(port).then(
          (s) => done(null, s),
          (err: Error) => done(err),
        );
        return undefined;
      }
    : undefined;
  return new Promise((resolve, reject) => {
    const headers = body ? { 'Content-Length': body.length } : undefined;
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        timeout: timeoutMs,
        headers,
        signal,
        // (http.request uses createConnection only without an agent: agent false would make one.)
        ...(createConnection ? { createConnection: createConnection as never } : { agent: false }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** How `askApp` ended: the app's reply, or none (at the deadline, or because the VM stopped), with the last failure. */
export interface AskResult {
  reply: HttpReply | null;
  last: string;
  /** The VM stopped while the request was retried. */
  dead: boolean;
}

/**
 * One offload request to the app in a VM, retried while the app's port
 * refuses connections (the guest's network stack may still be faulting its
 * pages in) until `deadline`; a reply of any status is the answer. Throws
 * what `stopped` returns as soon as it returns something (the session ended).
 */
export async function askApp(
  port: number,
  req: { method: string; path: string; body: Buffer },
  deadline: number,
  stopped: () => Error | null,
  alive: () => Promise<boolean>,
): Promise<AskResult> {
  let last = 'no attempt was made';
  for (;;) {
    const stop = stopped();
    if (stop) throw stop;
    const remaining = deadline - Date.now();
    if (remaining <= 0) return { reply: null, last, dead: false };
    try {
      const body = req.body.length ? req.body : undefined;
      return { reply: await guestRequest(port, req.method, req.path, remaining, body), last, dead: false };
    } catch (err) {
      last = (err as Error).message;
      if (!(await alive())) return { reply: null, last, dead: true };
      await sleep(50);
    }
  }
}

/** An app request: the test guest's is GET workPath(...); a real app's may POST an input. */
export interface AppRequest {
  method: 'GET' | 'POST' | 'PUT';
  path: string;
  body?: Buffer;
}

/** One HTTP request to the app, whose replies are JSON (GET unless `request` says otherwise). */
export async function appGet(
  port: number,
  path: string,
  timeoutMs: number,
  request?: Omit<AppRequest, 'path'>,
): Promise<AppReply> {
  const r = await guestRequest(port, request?.method ?? 'GET', path, timeoutMs, request?.body);
  const text = r.body.toString('utf8');
  try {
    return { status: r.status, body: JSON.parse(text) as Record<string, unknown> };
  } catch {
    throw new Error(`app answered with non-JSON: ${text.slice(0, 200)}`);
  }
}

export interface WaitOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /** Polled between attempts; false means QEMU is gone. */
  alive?: () => Promise<boolean>;
  /** Console log whose tail goes into the timeout error. */
  consoleLog?: string;
  path?: string;
  /** Method and body of the request (default GET, no body). */
  request?: Omit<AppRequest, 'path'>;
}

/** Retries a request until the app answers 200; returns the reply and the attempt count. */
export async function waitForApp(port: number, opts: WaitOptions): Promise<{ reply: AppReply; attempts: number }> {
  const deadline = Date.now() + opts.timeoutMs;
  const path = opts.path ?? '/health';
  let attempts = 0;
  let attemptTimeout = 1000;
  let lastError = 'no attempt made';
  for (;;) {
    throwIfAborted(opts.signal);
    attempts++;
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    try {
      // A real app's request may compute for seconds: give it the time left, not a probe's timeout
      // (a timed-out attempt would only queue a second computation behind the first).
      const reply = await appGet(
        port,
        path,
        opts.request ? remaining : Math.min(attemptTimeout, remaining),
        opts.request,
      );
      if (reply.status === 200) return { reply, attempts };
      lastError = `HTTP ${reply.status}: ${JSON.stringify(reply.body)}`;
    } catch (err) {
      lastError = (err as Error).message;
    }
    attemptTimeout = Math.min(attemptTimeout * 2, 8000);
    if (opts.alive && !(await opts.alive())) {
      throw new VmsynthError(
        'VMS_QEMU_DIED',
        `the VM stopped before its app answered (last attempt: ${lastError})${await consoleTail(opts.consoleLog)}`,
      );
    }
    await sleep(100, opts.signal);
  }
  const tail = await consoleTail(opts.consoleLog);
  const what = `the guest app on 127.0.0.1:${port} did not answer within ${opts.timeoutMs} ms (last attempt: ${lastError})`;
  throw new VmsynthError('VMS_GUEST_TIMEOUT', `${what}${tail}`, {
    // consoleTail: whether the message carries the tail of the console log (it may be gone with the run directory).
    details: {
      port,
      timeoutMs: opts.timeoutMs,
      attempts,
      consoleTail: tail !== '',
      ...(opts.consoleLog ? { consoleLog: opts.consoleLog } : {}),
    },
  });
}

/** The last lines of a console log, formatted for an error message ('' when unavailable). */
export async function consoleTail(file: string | undefined, bytes = 1500): Promise<string> {
  if (!file) return '';
  try {
    const text = await fsp.readFile(file, 'utf8');
    const tail = text.slice(-bytes).trim();
    return tail ? `\n--- guest console (last ${bytes} bytes of ${file}) ---\n${tail}` : '';
  } catch {
    return '';
  }
}
