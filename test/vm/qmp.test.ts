import t from 'tap';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promises as fsp } from 'node:fs';
import { QmpClient } from '../../lib/vm/qmp.js';

/** A fake QEMU monitor: greets, accepts qmp_capabilities, answers from a table. */
async function fakeQemu(t: { teardown(fn: () => unknown): void }, answer: (cmd: string, args: unknown) => unknown) {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-qmp-'));
  const sock = path.join(dir, 'qmp.sock');
  const clients: net.Socket[] = [];
  const server = net.createServer((c) => {
    clients.push(c);
    c.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + '\r\n');
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; arguments?: unknown; id: string };
        buf = buf.slice(nl + 1);
        const r = msg.execute === 'qmp_capabilities' ? {} : answer(msg.execute, msg.arguments);
        if (r === 'DIE') {
          c.destroy();
          return;
        }
        c.write(
          JSON.stringify(
            r instanceof Error
              ? { error: { class: 'GenericError', desc: r.message }, id: msg.id }
              : { return: r, id: msg.id },
          ) + '\n',
        );
        if (msg.execute === 'stop') c.write(JSON.stringify({ event: 'STOP', data: {} }) + '\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(sock, r));
  t.teardown(async () => {
    clients.forEach((c) => c.destroy());
    server.close();
    await fsp.rm(dir, { recursive: true, force: true });
  });
  return sock;
}

t.test('commands return values, errors become VMS_QMP, events are delivered', async (t) => {
  const sock = await fakeQemu(t, (cmd) =>
    cmd === 'query-status' ? { status: 'running' } : cmd === 'bad' ? new Error('nope') : {},
  );
  const qmp = await QmpClient.connect(sock);
  t.teardown(() => qmp.close());
  t.same(await qmp.execute('query-status'), { status: 'running' });
  await t.rejects(qmp.execute('bad'), {
    code: 'VMS_QMP',
    details: { command: 'bad', class: 'GenericError', desc: 'nope' },
  });
  const events: string[] = [];
  qmp.onEvent((e) => events.push(e.event));
  await qmp.execute('stop');
  await new Promise((r) => setTimeout(r, 20));
  t.same(events, ['STOP']);
});

t.test('a monitor that goes away fails pending and later calls with VMS_QEMU_DIED', async (t) => {
  const sock = await fakeQemu(t, (cmd) => (cmd === 'quit' ? 'DIE' : {}));
  const qmp = await QmpClient.connect(sock);
  await t.rejects(qmp.execute('quit'), { code: 'VMS_QEMU_DIED' });
  await t.rejects(qmp.execute('query-status'), { code: 'VMS_QEMU_DIED' });
});

t.test('connect gives up quickly when QEMU is known dead, and at the deadline otherwise', async (t) => {
  const missing = path.join(os.tmpdir(), `vmsynth-none-${process.pid}.sock`);
  await t.rejects(QmpClient.connect(missing, { alive: async () => false }), { code: 'VMS_QEMU_DIED' });
  await t.rejects(QmpClient.connect(missing, { timeoutMs: 200 }), { code: 'VMS_QMP' });
});
