import t from 'tap';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { indexModules, loadOrder, modinfoDepends } from '../../lib/guest/kmod.js';

const ko = (deps: string) => Buffer.concat([Buffer.from('\x7fELF junk'), Buffer.from(`\0license=GPL\0depends=${deps}\0name=x\0`)]);

t.test('depends= is read from .modinfo', async (t) => {
  t.same(modinfoDepends(ko('virtio,virtio_ring')), ['virtio', 'virtio_ring']);
  t.same(modinfoDepends(ko('')), []);
  t.same(modinfoDepends(Buffer.from('no modinfo')), []);
});

t.test('load order puts dependencies first, once each; missing and cyclic modules are typed errors', async (t) => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmsynth-kmod-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  await fsp.mkdir(path.join(dir, 'kernel/drivers'), { recursive: true });
  const write = (name: string, deps: string) => fsp.writeFile(path.join(dir, 'kernel/drivers', `${name}.ko`), ko(deps));
  await write('virtio_ring', '');
  await write('virtio', 'virtio_ring');
  await write('virtio-pci', 'virtio,virtio_ring');
  await write('virtio_net', 'virtio,net_failover');
  await write('net_failover', 'failover');
  await write('failover', '');
  await write('a', 'b');
  await write('b', 'a');
  const index = await indexModules(dir);
  t.same(await loadOrder(index, ['virtio_pci', 'virtio_net']), ['virtio_ring', 'virtio', 'virtio_pci', 'failover', 'net_failover', 'virtio_net']);
  await t.rejects(loadOrder(index, ['nope']), { code: 'VMS_GUEST_BUILD', details: { reason: 'missing', module: 'nope' } });
  await t.rejects(loadOrder(index, ['a']), { code: 'VMS_GUEST_BUILD', details: { reason: 'cycle', module: 'a' } });
});
