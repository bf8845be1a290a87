import t from 'tap';
import type { Base } from '../../lib/vm/base.js';
import { VMGENID_DEVICE, type BaseManifest } from '../../lib/vm/base-manifest.js';
import { restoreSpec } from '../../lib/vm/restore.js';
import type { RunDir } from '../../lib/vm/run-dir.js';

const vm = {
  accel: 'tcg',
  cpu: 'maximum',
  machine: 'pc-q35-7.2',
  vcpus: 1,
  memoryMiB: 256,
  cmdline: 'console=ttyS0',
  mac: '52:54:00:76:6d:01',
  appPort: 8000,
  devices: ['virtio-blk-pci:vda', 'virtio-net-pci:user'],
};
const base = (devices: string[]): Base =>
  ({
    name: 'b',
    manifest: { vm: { ...vm, devices } } as unknown as BaseManifest,
    file: (k: string) => `/b/${k}`,
  }) as unknown as Base;
const run = {
  domainName: 'vmsynth-x',
  file: (n: string) => `/r/${n}`,
  dir: '/r',
  owner: { pid: 1, start: '2' },
} as unknown as RunDir;
const at = {
  disk: { path: '/r/disk', format: 'qcow2' as const },
  memory: { path: '/r/mem', share: false },
  hostPort: 1234,
};

t.test('a base captured with a VM generation ID is resumed with a fresh one each time', async (t) => {
  const b = base([...vm.devices, VMGENID_DEVICE]);
  const one = restoreSpec(b, run, at).genid;
  const two = restoreSpec(b, run, at).genid;
  t.match(one, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a random (v4) GUID');
  t.not(one, two, 'a new one per resume');
});

t.test('a base captured without one is resumed without one (its device state has no vmgenid section)', async (t) => {
  t.equal(restoreSpec(base(vm.devices), run, at).genid, undefined);
});

t.test('a VM that goes on (a handoff) keeps the generation ID it is given', async (t) => {
  const b = base([...vm.devices, VMGENID_DEVICE]);
  const guid = '0b7c2a1e-5f1d-4c5e-9a43-2b1f6c0d9e11';
  t.equal(restoreSpec(b, run, { ...at, genid: guid }).genid, guid);
});
