import t from 'tap';
import { parseBaseManifest, BASE_FORMAT } from '../../lib/vm/base-manifest.js';

const h = 'a'.repeat(64);
const file = (name: string, bytes: number) => ({ file: name, bytes, sha256: h });
const good = {
  format: BASE_FORMAT, name: 'b', chunkSize: 4096,
  disk: file('disk.raw', 1 << 20), memory: file('memory.raw', 256 << 20), deviceState: file('device.state', 1000),
  kernel: file('vmlinuz', 10), initrd: file('initrd.img', 10),
  vm: { accel: 'tcg', cpu: 'maximum', machine: 'pc-q35-7.2', vcpus: 1, memoryMiB: 256, cmdline: 'c', mac: 'm', appPort: 8000, devices: ['x'] },
  created: { at: 'now', host: 'h', qemu: 'q', vmsynth: '0', source: {}, bootMs: 1 },
};

t.test('a valid manifest parses', async (t) => {
  t.equal(parseBaseManifest(JSON.stringify(good), 'm').name, 'b');
});

t.test('damage is a typed error naming the field', async (t) => {
  t.throws(() => parseBaseManifest('{not json', 'm'), { code: 'VMS_BASE_CORRUPT' });
  t.throws(() => parseBaseManifest('[]', 'm'), { code: 'VMS_BASE_CORRUPT' });
  t.throws(() => parseBaseManifest(JSON.stringify({ ...good, format: 'other/9' }), 'm'), { code: 'VMS_BASE_CORRUPT', message: /unknown format/ });
  t.throws(() => parseBaseManifest(JSON.stringify({ ...good, format: 'vmsynth-base/1' }), 'm'), { code: 'VMS_BASE_OUTDATED', message: /older vmsynth/ }, 'a base from before the balloon says so');
  t.throws(() => parseBaseManifest(JSON.stringify({ ...good, disk: { ...good.disk, sha256: 'xyz' } }), 'm'), { code: 'VMS_BASE_CORRUPT', message: /sha256/ });
  t.throws(() => parseBaseManifest(JSON.stringify({ ...good, kernel: { ...good.kernel, file: '../etc/passwd' } }), 'm'), { code: 'VMS_BASE_CORRUPT' }, 'no path escapes');
  t.throws(() => parseBaseManifest(JSON.stringify({ ...good, vm: { ...good.vm, accel: 'xen' } }), 'm'), { code: 'VMS_BASE_CORRUPT' });
});

t.test('a memory image that does not match the VM size is VMS_MEMORY_SIZE_MISMATCH', async (t) => {
  t.throws(() => parseBaseManifest(JSON.stringify({ ...good, vm: { ...good.vm, memoryMiB: 512 } }), 'm'), { code: 'VMS_MEMORY_SIZE_MISMATCH' });
});
