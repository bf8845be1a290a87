/**
 * Saving and loading VM state through QEMU migration, against a fake QEMU:
 * a QMP server on a unix socket that answers the migration commands, and,
 * like QEMU, connects to `migrate`'s unix: path and writes a stream there,
 * or listens on `migrate-incoming`'s path and reads one. Checks the QMP
 * command sequence, that the bytes land exactly, failures as VMS_MIGRATION,
 * socket cleanup, and that an abort stops the wait.
 */
import t from 'tap';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { QmpClient } from '../../lib/vm/qmp.js';
import { loadState, saveState } from '../../lib/vm/migration.js';

interface Command {
  execute: string;
  arguments?: Record<string, unknown>;
  /** The VM's run state when the command came. */
  status: string;
}

interface FakeOptions {
  /** What `migrate` does: write `stream` then complete, fail, stay active without connecting, or complete without connecting. */
  save?: 'ok' | 'fail' | 'hang' | 'no-connect';
  /** What `migrate-incoming` leads to once the stream is read: running, paused (needs cont), a failed migration, or inmigrate forever. */
  load?: 'running' | 'paused' | 'fail' | 'hang' | 'no-listen';
  /** The stream `migrate` writes. */
  stream?: Buffer;
  /** How long the incoming VM stays inmigrate after the stream ended. */
  settleMs?: number;
  /** `cont` is accepted but the VM stays paused. */
  stuck?: boolean;
}

/** A fake QEMU; `received` is what its incoming socket read, `runningAt` when it started running. */
async function fakeQemu(t: { teardown(fn: () => unknown): void }, dir: string, opts: FakeOptions) {
  const qmpPath = path.join(dir, 'qmp.sock');
  const commands: Command[] = [];
  const sockets: net.Socket[] = [];
  const servers: net.Server[] = [];
  const state = {
    status: opts.load ? 'inmigrate' : 'running',
    migration: { status: 'none' } as { status: string; 'error-desc'?: string },
    received: null as Buffer | null,
    runningAt: null as number | null,
  };
  const setStatus = (s: string) => {
    state.status = s;
    if (s === 'running') state.runningAt = performance.now();
  };
  const unixPath = (args?: Record<string, unknown>) => {
    const uri = String(args?.uri);
    if (!uri.startsWith('unix:')) throw new Error(`not a unix: URI: ${uri}`);
    return uri.slice('unix:'.length);
  };

  const migrate = (to: string) => {
    const outcome = opts.save ?? 'ok';
    if (outcome === 'fail')
      state.migration = { status: 'failed', 'error-desc': 'Unable to write to socket: Broken pipe' };
    else if (outcome === 'hang') state.migration = { status: 'active' };
    else if (outcome === 'no-connect') state.migration = { status: 'completed' };
    else {
      state.migration = { status: 'active' };
      const s = net.connect(to, () => s.end(opts.stream ?? Buffer.alloc(0)));
      s.on('error', () => undefined);
      sockets.push(s);
      // Completed once the other side has taken everything and closed: QEMU's completion never precedes the connection.
      s.on('close', () => {
        state.migration = { status: 'completed' };
        setStatus('postmigrate');
      });
    }
  };

  const incoming = async (at: string) => {
    if (opts.load === 'no-listen') return;
    const server = net.createServer((c) => {
      sockets.push(c);
      const parts: Buffer[] = [];
      c.on('data', (d: Buffer) => parts.push(d));
      c.on('end', () => {
        state.received = Buffer.concat(parts);
        c.end();
        state.migration = { status: 'active' };
        setTimeout(() => {
          if (opts.load === 'hang') return;
          if (opts.load === 'fail') {
            state.migration = { status: 'failed', 'error-desc': 'load of migration failed: Invalid argument' };
            setStatus('paused');
            return;
          }
          state.migration = { status: 'completed' };
          setStatus(opts.load === 'paused' ? 'paused' : 'running');
        }, opts.settleMs ?? 0);
      });
    });
    servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(at, resolve);
    });
  };

  const answer = async (cmd: string, args?: Record<string, unknown>): Promise<unknown> => {
    switch (cmd) {
      case 'qmp_capabilities':
      case 'migrate-set-capabilities':
        return {};
      case 'stop':
        setStatus('paused');
        return {};
      case 'cont':
        if (state.status !== 'paused' && state.status !== 'prelaunch')
          return new Error(`cannot continue in state ${state.status}`);
        if (!opts.stuck) setStatus('running');
        return {};
      case 'migrate':
        migrate(unixPath(args));
        return {};
      case 'migrate-incoming':
        await incoming(unixPath(args));
        return {};
      case 'query-migrate':
        return state.migration;
      case 'query-status':
        return { status: state.status, running: state.status === 'running' };
      default:
        return new Error(`unknown command ${cmd}`);
    }
  };

  const qmpServer = net.createServer((c) => {
    sockets.push(c);
    c.write(
      JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 } }, capabilities: [] } }) + '\r\n',
    );
    let buf = '';
    let chain = Promise.resolve();
    c.on('data', (d) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as {
          execute: string;
          arguments?: Record<string, unknown>;
          id: string;
        };
        buf = buf.slice(nl + 1);
        chain = chain.then(async () => {
          if (msg.execute !== 'qmp_capabilities')
            commands.push({ execute: msg.execute, arguments: msg.arguments, status: state.status });
          const r = await answer(msg.execute, msg.arguments).catch((e: Error) => e);
          c.write(
            JSON.stringify(
              r instanceof Error
                ? { error: { class: 'GenericError', desc: r.message }, id: msg.id }
                : { return: r, id: msg.id },
            ) + '\n',
          );
        });
      }
    });
  });
  servers.push(qmpServer);
  await new Promise<void>((r) => qmpServer.listen(qmpPath, r));
  const qmp = await QmpClient.connect(qmpPath);
  t.teardown(() => {
    qmp.close();
    sockets.forEach((s) => s.destroy());
    servers.forEach((s) => s.close());
  });
  return { qmp, commands, state, names: () => commands.map((c) => c.execute) };
}

async function tmp(t: { teardown(fn: () => unknown): void }) {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-mig-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return { dir, file: path.join(dir, 'state.bin'), sock: path.join(dir, 'mig.sock') };
}

const exists = (p: string) =>
  fsp.lstat(p).then(
    () => true,
    () => false,
  );
const caps = (on: boolean) => ({ capabilities: [{ capability: 'x-ignore-shared', state: on }] });

t.test('saveState stops the VM, sets x-ignore-shared, and writes exactly the stream QEMU sent', async (t) => {
  const { dir, file, sock } = await tmp(t);
  const stream = randomBytes(3 * 1024 * 1024 + 123);
  const q = await fakeQemu(t, dir, { stream });
  const size = await saveState(q.qmp, file, sock, { ignoreShared: true, timeoutMs: 10_000 });
  t.equal(size, stream.length, 'returns the stream size');
  t.ok((await fsp.readFile(file)).equals(stream), 'the file holds the bytes QEMU wrote, in order');
  t.same(q.names().slice(0, 3), ['migrate-set-capabilities', 'stop', 'migrate']);
  t.same(q.commands[0]!.arguments, caps(true));
  t.equal(q.commands[2]!.status, 'paused', 'the VM was stopped before migrate');
  t.same(q.commands[2]!.arguments, { uri: `unix:${sock}` });
  t.same(new Set(q.names().slice(3)), new Set(['query-migrate']), 'then only polls');
  t.notOk(await exists(sock), 'the socket path is gone');
});

t.test(
  'saveState without ignoreShared turns x-ignore-shared off, and replaces a stale file at the socket path',
  async (t) => {
    const { dir, file, sock } = await tmp(t);
    await fsp.writeFile(sock, 'stale');
    const stream = Buffer.from('QEVM\x00\x00\x00\x03 a small device state');
    const q = await fakeQemu(t, dir, { stream });
    t.equal(await saveState(q.qmp, file, sock, { ignoreShared: false, timeoutMs: 10_000 }), stream.length);
    t.ok((await fsp.readFile(file)).equals(stream));
    t.same(q.commands[0]!.arguments, caps(false));
    t.notOk(await exists(sock));
  },
);

t.test('a failed save is VMS_MIGRATION, and the socket path is removed', async (t) => {
  const { dir, file, sock } = await tmp(t);
  const q = await fakeQemu(t, dir, { save: 'fail' });
  await t.rejects(saveState(q.qmp, file, sock, { ignoreShared: true }), { code: 'VMS_MIGRATION' });
  t.notOk(await exists(sock));
});

t.test('a save QEMU calls complete without ever connecting is VMS_MIGRATION', async (t) => {
  const { dir, file, sock } = await tmp(t);
  const q = await fakeQemu(t, dir, { save: 'no-connect' });
  await t.rejects(saveState(q.qmp, file, sock, { ignoreShared: true }), { code: 'VMS_MIGRATION' });
  t.notOk(await exists(sock));
});

t.test('a save that never completes is VMS_MIGRATION at the timeout', async (t) => {
  const { dir, file, sock } = await tmp(t);
  const q = await fakeQemu(t, dir, { save: 'hang' });
  const t0 = Date.now();
  await t.rejects(saveState(q.qmp, file, sock, { ignoreShared: true, timeoutMs: 150 }), { code: 'VMS_MIGRATION' });
  t.ok(Date.now() - t0 >= 150, 'not before the timeout');
  t.notOk(await exists(sock));
});

t.test('an aborted signal stops waiting for a save', async (t) => {
  const { dir, file, sock } = await tmp(t);
  const q = await fakeQemu(t, dir, { save: 'hang' });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  const t0 = Date.now();
  await t.rejects(saveState(q.qmp, file, sock, { ignoreShared: true, signal: ac.signal }), { code: 'VMS_INTERRUPTED' });
  t.ok(Date.now() - t0 < 5_000, 'well before the default two-minute timeout');
  t.ok(q.names().filter((n) => n === 'query-migrate').length >= 2, 'it was polling until the abort');
  t.notOk(await exists(sock));
});

t.test("loadState feeds the file's exact bytes to the incoming socket and resolves once the VM runs", async (t) => {
  const { dir, file, sock } = await tmp(t);
  const stream = randomBytes(2 * 1024 * 1024 + 4567);
  await fsp.writeFile(file, stream);
  const q = await fakeQemu(t, dir, { load: 'running', settleMs: 100 });
  await loadState(q.qmp, file, sock, { ignoreShared: true, timeoutMs: 10_000 });
  const doneAt = performance.now();
  t.ok(q.state.received?.equals(stream), 'QEMU read the file byte for byte');
  t.ok(q.state.runningAt !== null && doneAt >= q.state.runningAt, 'not before query-status said running');
  t.same(q.names().slice(0, 2), ['migrate-set-capabilities', 'migrate-incoming']);
  t.same(q.commands[0]!.arguments, caps(true));
  t.same(q.commands[1]!.arguments, { uri: `unix:${sock}` });
  t.notOk(q.names().includes('cont'), 'a VM that runs by itself is not continued');
  t.notOk(q.names().includes('stop'));
  t.notOk(await exists(sock), 'the socket path is gone');
});

t.test('loadState continues a VM that stays paused after loading', async (t) => {
  const { dir, file, sock } = await tmp(t);
  await fsp.writeFile(sock, 'stale');
  const stream = randomBytes(64 * 1024);
  await fsp.writeFile(file, stream);
  const q = await fakeQemu(t, dir, { load: 'paused', settleMs: 30 });
  await loadState(q.qmp, file, sock, { ignoreShared: false, timeoutMs: 10_000 });
  t.ok(q.state.received?.equals(stream));
  t.same(q.commands[0]!.arguments, caps(false));
  const conts = q.commands.filter((c) => c.execute === 'cont');
  t.equal(conts.length, 1, 'cont once');
  t.equal(conts[0]!.status, 'paused', 'sent when the VM was paused');
  t.equal(q.state.status, 'running');
  t.notOk(await exists(sock));
});

t.test('a failed load is VMS_MIGRATION and the VM is not continued', async (t) => {
  const { dir, file, sock } = await tmp(t);
  await fsp.writeFile(file, randomBytes(4096));
  const q = await fakeQemu(t, dir, { load: 'fail' });
  await t.rejects(loadState(q.qmp, file, sock, { ignoreShared: true }), { code: 'VMS_MIGRATION' });
  t.ok(q.names().includes('query-migrate'), 'the failure was read from query-migrate');
  t.notOk(q.names().includes('cont'));
  t.notOk(await exists(sock), 'the socket path is gone after a failure too');
});

t.test('a VM that stays paused after cont is asked again, paced, and times out', async (t) => {
  const { dir, file, sock } = await tmp(t);
  await fsp.writeFile(file, randomBytes(4096));
  const q = await fakeQemu(t, dir, { load: 'paused', stuck: true });
  await t.rejects(loadState(q.qmp, file, sock, { ignoreShared: true, timeoutMs: 200 }), { code: 'VMS_MIGRATION' });
  const conts = q.names().filter((n) => n === 'cont').length;
  // One cont per 5 ms poll at most: it used to send cont in a tight loop, never reaching the deadline.
  t.ok(conts >= 2 && conts <= 200 / 5 + 1, `cont sent ${conts} times in 200 ms`);
  t.notOk(await exists(sock), 'the socket path is gone');
});

t.test('an incoming socket nobody listens on is VMS_MIGRATION', async (t) => {
  const { dir, file, sock } = await tmp(t);
  await fsp.writeFile(file, randomBytes(4096));
  const q = await fakeQemu(t, dir, { load: 'no-listen' });
  await t.rejects(loadState(q.qmp, file, sock, { ignoreShared: true }), { code: 'VMS_MIGRATION' });
});

t.test('a load that never finishes is VMS_MIGRATION at the timeout', async (t) => {
  const { dir, file, sock } = await tmp(t);
  await fsp.writeFile(file, randomBytes(4096));
  const q = await fakeQemu(t, dir, { load: 'hang' });
  const t0 = Date.now();
  await t.rejects(loadState(q.qmp, file, sock, { ignoreShared: true, timeoutMs: 150 }), { code: 'VMS_MIGRATION' });
  t.ok(Date.now() - t0 >= 150, 'not before the timeout');
});

t.test('an aborted signal stops waiting for a load', async (t) => {
  const { dir, file, sock } = await tmp(t);
  await fsp.writeFile(file, randomBytes(4096));
  const q = await fakeQemu(t, dir, { load: 'hang' });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  const t0 = Date.now();
  await t.rejects(loadState(q.qmp, file, sock, { ignoreShared: true, signal: ac.signal }), { code: 'VMS_INTERRUPTED' });
  t.ok(Date.now() - t0 < 5_000, 'well before the default two-minute timeout');
  t.ok(q.names().filter((n) => n === 'query-status').length >= 2, 'it was polling until the abort');
  t.notOk(q.names().includes('cont'));
});
