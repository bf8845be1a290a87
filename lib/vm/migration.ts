/**
 * Saving and loading a VM's state through QEMU migration over unix sockets
 * (libvirt's seccomp forbids exec: URIs; QEMU 7.2 has no file: URI).
 *
 * With x-ignore-shared, RAM that lives in a shared named file is not put in
 * the stream: the stream is only the device state (a few hundred KB) and the
 * RAM stays in the file. Without it, the stream carries all of RAM — the
 * classic full save/restore the benchmark compares against.
 */
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import net from 'node:net';
import { pipeline } from 'node:stream/promises';
import { VmsynthError } from '../core/errors.js';
import { sleep, throwIfAborted, untilAborted } from '../core/scope.js';
import type { QmpClient } from './qmp.js';

interface MigrateInfo {
  status?: string;
  'error-desc'?: string;
}

async function setIgnoreShared(qmp: QmpClient, on: boolean): Promise<void> {
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: on }] });
}

export interface StateOptions {
  /** Leave RAM in its shared file out of the stream (x-ignore-shared): the stream is the device state alone. */
  ignoreShared: boolean;
  signal?: AbortSignal;
  /** How long the migration may take (default 120 s). */
  timeoutMs?: number;
}

/** Stops the VM and writes its migration stream to `file`. Returns the stream size. */
export async function saveState(qmp: QmpClient, file: string, socketPath: string, opts: StateOptions): Promise<number> {
  await setIgnoreShared(qmp, opts.ignoreShared);
  await qmp.execute('stop');
  await fsp.rm(socketPath, { force: true });
  const server = net.createServer();
  let written: Promise<void> | null = null;
  server.on('connection', (sock) => {
    written ??= pipeline(sock, createWriteStream(file));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, resolve);
  });
  try {
    await qmp.execute('migrate', { uri: `unix:${socketPath}` });
    const deadline = Date.now() + (opts.timeoutMs ?? 120_000);
    for (;;) {
      throwIfAborted(opts.signal);
      const info = await qmp.execute<MigrateInfo>('query-migrate');
      if (info.status === 'completed') break;
      if (info.status === 'failed' || info.status === 'cancelled') {
        throw new VmsynthError('VMS_MIGRATION', `saving the VM state failed: ${info['error-desc'] ?? info.status}`);
      }
      if (Date.now() > deadline) throw new VmsynthError('VMS_MIGRATION', 'saving the VM state timed out');
      await sleep(20, opts.signal);
    }
    if (!written) throw new VmsynthError('VMS_MIGRATION', 'QEMU reported the save complete but never connected');
    await untilAborted(written, opts.signal);
  } finally {
    server.close();
    await fsp.rm(socketPath, { force: true });
  }
  return (await fsp.stat(file)).size;
}

/**
 * Feeds a saved migration stream to a VM started with `-incoming defer`, and
 * waits until it runs (continuing it if it stays paused).
 */
export async function loadState(qmp: QmpClient, file: string, socketPath: string, opts: StateOptions): Promise<void> {
  await setIgnoreShared(qmp, opts.ignoreShared);
  await fsp.rm(socketPath, { force: true });
  await qmp.execute('migrate-incoming', { uri: `unix:${socketPath}` });
  const sock = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect(socketPath, () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
    // After the pipeline settles, a QEMU that dies with state unread resets the socket:
    // that must not become an uncaught error that takes the whole server down.
    s.on('error', () => undefined);
  }).catch((cause: unknown) => {
    throw new VmsynthError('VMS_MIGRATION', `cannot connect to QEMU's incoming socket: ${(cause as Error).message}`, {
      cause,
    });
  });
  try {
    const fed = pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), sock).catch((cause: unknown) => {
      throw new VmsynthError('VMS_MIGRATION', `feeding the saved state to QEMU failed: ${(cause as Error).message}`, {
        cause,
      });
    });
    fed.catch(() => undefined);
    const deadline = Date.now() + (opts.timeoutMs ?? 120_000);
    for (;;) {
      throwIfAborted(opts.signal);
      const { status } = await qmp.execute<{ status: string }>('query-status');
      if (status === 'running') break;
      if (status !== 'inmigrate') {
        const info = await qmp.execute<MigrateInfo>('query-migrate');
        if (info.status === 'failed')
          throw new VmsynthError('VMS_MIGRATION', `loading the VM state failed: ${info['error-desc'] ?? 'unknown'}`);
        // Loaded and paused: continue it (again on the next round if it stays paused, within the deadline).
        if (status === 'paused' || status === 'prelaunch') await qmp.execute('cont');
      }
      if (Date.now() > deadline)
        throw new VmsynthError('VMS_MIGRATION', `loading the VM state timed out (status ${status})`);
      await sleep(5, opts.signal);
    }
    // The VM runs, so QEMU has read the whole state. It may close its end before our
    // side of the pipeline has seen 'finish' (seen under load): that premature close is
    // not a failure; any other error of the feed still is.
    await fed.catch((err: unknown) => {
      if (
        (err as VmsynthError).cause &&
        ((err as VmsynthError).cause as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE'
      )
        return;
      throw err;
    });
  } finally {
    // Failed or not: the feed's socket closed and the incoming socket's path gone.
    sock.destroy();
    await fsp.rm(socketPath, { force: true });
  }
}

/**
 * Stops the VM (if it runs) and writes its device state without RAM to
 * `file` (QMP xen-save-devices-state, live false: QEMU writes the file
 * itself, so it must be where QEMU may write, the run directory). It loads
 * into a QEMU started with `-global migration.send-configuration=off`
 * (restore.ts `devicesOnly`). Returns the bytes.
 */
export async function saveDevices(qmp: QmpClient, file: string): Promise<Buffer> {
  await qmp.execute('stop');
  await fsp.rm(file, { force: true });
  await qmp.execute('xen-save-devices-state', { filename: file, live: false });
  try {
    return await fsp.readFile(file);
  } finally {
    await fsp.rm(file, { force: true });
  }
}
