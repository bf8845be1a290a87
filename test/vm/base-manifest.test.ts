import t from 'tap';
import { parseBaseManifest, BASE_FORMAT } from '../../lib/vm/base-manifest.js';

const h = 'a'.repeat(64);
const file = (name: string, bytes: number) => ({ file: name, bytes, sha256: h });
const good = {
  format: BASE_FORMAT,
  name: 'b',
  chunkSize: 4096,
  disk: file('disk.raw', 1 << 20),
  memory: file('memory.raw', 256 << 20),
  deviceState: file('device.state', 1000),
  kernel: file('vmlinuz', 10),
  initrd: file('initrd.img', 10),
  vm: {
    accel: 'tcg',
    cpu: 'maximum',
    machine: 'pc-q35-7.2',
    vcpus: 1,
    memoryMiB: 256,
    cmdline: 'c',
    mac: 'm',
    appPort: 8000,
    devices: ['x'],
  },
  created: { at: 'now', host: 'h', qemu: 'q', vmsynth: '0', source: {}, bootMs: 1 },
};

t.test('a valid manifest parses', async (t) => {
  t.equal(parseBaseManifest(JSON.stringify(good), 'm').name, 'b');
});

t.test('damage is a typed error naming the field', async (t) => {
  const parse = (m: unknown) => () => parseBaseManifest(JSON.stringify(m), 'm');
  t.throws(() => parseBaseManifest('{not json', 'm'), {
    code: 'VMS_BASE_CORRUPT',
    details: { manifest: 'm', reason: 'json' },
  });
  t.throws(() => parseBaseManifest('[]', 'm'), { code: 'VMS_BASE_CORRUPT', details: { reason: 'not-object' } });
  t.throws(parse({ ...good, format: 'other/9' }), {
    code: 'VMS_BASE_CORRUPT',
    details: { field: 'format', format: 'other/9' },
  });
  t.throws(
    parse({ ...good, format: 'vmsynth-base/1' }),
    { code: 'VMS_BASE_OUTDATED', details: { format: 'vmsynth-base/1', expected: BASE_FORMAT } },
    'a base from before the balloon says so',
  );
  t.throws(parse({ ...good, disk: { ...good.disk, sha256: 'xyz' } }), {
    code: 'VMS_BASE_CORRUPT',
    details: { field: 'disk.sha256' },
  });
  t.throws(
    parse({ ...good, kernel: { ...good.kernel, file: '../etc/passwd' } }),
    { code: 'VMS_BASE_CORRUPT', details: { field: 'kernel.file' } },
    'no path escapes',
  );
  t.throws(parse({ ...good, vm: { ...good.vm, accel: 'xen' } }), {
    code: 'VMS_BASE_CORRUPT',
    details: { field: 'vm.accel' },
  });
});

t.test('a memory image that does not match the VM size is VMS_MEMORY_SIZE_MISMATCH', async (t) => {
  t.throws(() => parseBaseManifest(JSON.stringify({ ...good, vm: { ...good.vm, memoryMiB: 512 } }), 'm'), {
    code: 'VMS_MEMORY_SIZE_MISMATCH',
    details: { bytes: 256 << 20, memoryMiB: 512 },
  });
});
