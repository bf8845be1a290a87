/**
 * systemd service notifications (the sd_notify(3) protocol), for
 * packaging/vmsynth.service (Type=notify, WatchdogSec=): readiness, status,
 * stopping, watchdog pings.
 *
 * Every call reads NOTIFY_SOCKET; when it is unset (not run by systemd, or
 * a unit type that does not listen) every call is a no-op returning false.
 * A message is `KEY=value` lines in one datagram to that AF_UNIX socket
 * (a path, or `@name` for an abstract socket), sent by the small addon in
 * native/ because Node has no unix datagram sockets. The addon is loaded on
 * the first call that has a socket to send to; if it is missing then, that is
 * a VMS_NATIVE error (the install is incomplete), thrown.
 *
 * A send that fails (socket gone, manager busy) does not throw: the call
 * returns false and the caller decides whether to log it. Notifications are
 * advisory; the server must not stop serving because one was lost.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { VmsynthError } from './errors.js';
import { packageRoot } from './paths.js';

export type NotifyState = Record<string, string | number>;

interface Addon {
  send(socketPath: string, message: string): void;
}

const loaded = new Map<string, Addon>();

/** Where bootstrap's node-gyp build puts the addon. */
export function addonPath(): string {
  return path.join(packageRoot(), 'native', 'build', 'Release', 'sd_notify.node');
}

/** Loads the addon once per path; a missing or broken build is VMS_NATIVE. */
export function loadAddon(file = addonPath()): Addon {
  const cached = loaded.get(file);
  if (cached) return cached;
  let addon: Addon;
  try {
    addon = createRequire(import.meta.url)(file) as Addon;
  } catch (cause) {
    throw new VmsynthError(
      'VMS_NATIVE',
      `NOTIFY_SOCKET is set, but the sd_notify addon cannot be loaded from ${file}`,
      { cause, details: { file } },
    );
  }
  if (typeof addon?.send !== 'function')
    throw new VmsynthError('VMS_NATIVE', `${file} is not the sd_notify addon (it has no send())`, {
      details: { file },
    });
  loaded.set(file, addon);
  return addon;
}

/** The notification socket systemd gave us, or null (unset, or an address family we do not speak, e.g. vsock:). */
export function notifySocket(): string | null {
  const s = process.env.NOTIFY_SOCKET;
  if (!s || (s[0] !== '/' && s[0] !== '@')) return null;
  return s;
}

const KEY = /^[A-Z][A-Z0-9_]*$/;

/** Formats a state as sd_notify lines; a newline inside a value would start another assignment, so it becomes a space. */
export function formatState(state: NotifyState): string {
  let out = '';
  for (const [key, value] of Object.entries(state)) {
    if (!KEY.test(key))
      throw new VmsynthError('VMS_INTERNAL', `sd_notify: ${JSON.stringify(key)} is not a notification variable name`);
    out += `${key}=${String(value).replace(/[\r\n]+/g, ' ')}\n`;
  }
  return out;
}

/**
 * Sends one notification. True when it was delivered to the socket; false
 * when there is no socket (not under systemd) or the send failed.
 */
export function notify(state: NotifyState): boolean {
  const socket = notifySocket();
  if (socket === null || Object.keys(state).length === 0) return false;
  const message = formatState(state);
  const addon = loadAddon();
  try {
    addon.send(socket, message);
    return true;
  } catch {
    return false;
  }
}

/** The service is up (READY=1): Type=notify units count as started from here. */
export function ready(statusText?: string): boolean {
  return notify({ READY: 1, ...(statusText === undefined ? {} : { STATUS: statusText }), MAINPID: process.pid });
}

/** The service begins its graceful stop (STOPPING=1). */
export function stopping(statusText?: string): boolean {
  return notify({ STOPPING: 1, ...(statusText === undefined ? {} : { STATUS: statusText }) });
}

/** A one-line status that `systemctl status` shows. */
export function status(text: string): boolean {
  return notify({ STATUS: text });
}

/** Tells the watchdog the service is alive (WATCHDOG=1). */
export function watchdogPing(): boolean {
  return notify({ WATCHDOG: 1 });
}

/** Asks for more time for the current start or stop (EXTEND_TIMEOUT_USEC: from now, not added). */
export function extendTimeout(usec: number): boolean {
  if (!Number.isSafeInteger(usec) || usec <= 0)
    throw new VmsynthError('VMS_INTERNAL', `sd_notify: EXTEND_TIMEOUT_USEC must be a positive integer, not ${usec}`);
  return notify({ EXTEND_TIMEOUT_USEC: usec });
}

/**
 * How often to ping the watchdog, in ms: half of WATCHDOG_USEC (as
 * sd_watchdog_enabled(3) recommends), or null when no watchdog is asked of
 * this process (WATCHDOG_USEC unset or invalid, or WATCHDOG_PID names
 * another process).
 */
export function watchdogIntervalMs(): number | null {
  const usecText = process.env.WATCHDOG_USEC;
  if (!usecText || !/^\d+$/.test(usecText)) return null;
  const usec = Number(usecText);
  if (!Number.isSafeInteger(usec) || usec <= 0) return null;
  const pidText = process.env.WATCHDOG_PID;
  if (pidText !== undefined && pidText !== '' && Number(pidText) !== process.pid) return null;
  return Math.max(1, Math.floor(usec / 2000));
}

/**
 * Pings the watchdog every watchdogIntervalMs() until the returned stop
 * function is called; null when no watchdog is asked for (or there is no
 * NOTIFY_SOCKET). The timer does not
 * keep the process alive. onFailure hears of failed pings (to log them).
 */
export function startWatchdog(onFailure?: () => void): (() => void) | null {
  const every = watchdogIntervalMs();
  if (every === null || notifySocket() === null) return null;
  loadAddon(); // a missing addon is an error now, not in a timer later
  const timer = setInterval(() => {
    if (!watchdogPing()) onFailure?.();
  }, every);
  timer.unref();
  return () => clearInterval(timer);
}
