import t from 'tap';
import { domainXml, extraQemuArgs, machineFromXml, ownerFromXml, type VmSpec } from '../../lib/vm/domain-xml.js';

const spec: VmSpec = {
  name: 'vmsynth-abc',
  accel: 'tcg',
  machine: 'pc-q35-7.2',
  vcpus: 1,
  memoryMiB: 256,
  kernel: '/b/vmlinuz',
  initrd: '/b/initrd.img',
  cmdline: 'console=ttyS0 a=<b>',
  disk: { path: '/s/disk.qcow2', format: 'qcow2' },
  memory: { path: '/s/mnt/memory.img', share: false },
  qmpSocket: '/s/qmp.sock',
  consoleLog: '/s/console.log',
  net: { mac: '52:54:00:00:00:01', hostPort: 4321, guestPort: 8000 },
  incoming: true,
  owner: { pid: 42, start: '777', sessionDir: '/s' },
};

t.test('resume XML maps RAM private from the FUSE image and waits for incoming state', async (t) => {
  const args = extraQemuArgs(spec);
  t.ok(args.includes('memory-backend-file,id=vmsynth-ram,size=256M,mem-path=/s/mnt/memory.img,share=off'));
  t.ok(args.includes('memory-backend=vmsynth-ram'));
  t.same(args.slice(-2), ['-incoming', 'defer']);
  t.ok(args.includes('user,id=vmsynth-net,hostfwd=tcp:127.0.0.1:4321-:8000'), 'app port forwarded on loopback only');
  const xml = domainXml(spec);
  t.match(xml, /<domain type='qemu'/, 'TCG uses domain type qemu');
  t.match(xml, /<cpu mode='maximum'/);
  t.match(xml, /console=ttyS0 a=&lt;b&gt;/, 'text is escaped');
  t.match(xml, /<driver name='qemu' type='qcow2'\/>/);
  t.match(
    xml,
    /<memballoon model='virtio' freePageReporting='on'\/>/,
    'every VM has the free-page-reporting balloon (its device state depends on it)',
  );
});

t.test('capture XML shares RAM into the file and boots', async (t) => {
  const xml = domainXml({ ...spec, accel: 'kvm', incoming: false, memory: { path: '/b/memory.raw', share: true } });
  t.match(xml, /<domain type='kvm'/);
  t.match(xml, /host-passthrough/);
  t.match(xml, /share=on/);
  t.notMatch(xml, /-incoming/);
});

t.test('owner and machine round-trip through XML', async (t) => {
  const xml = domainXml(spec);
  t.same(ownerFromXml(xml), { pid: 42, start: '777', sessionDir: '/s' });
  t.equal(ownerFromXml('<domain/>'), null);
  t.equal(machineFromXml(xml), 'pc-q35-7.2');
  t.equal(machineFromXml(`<os><type arch="x86_64" machine="pc-q35-7.2">hvm</type></os>`), 'pc-q35-7.2');
});

t.test('a VM generation ID becomes <genid>, and only when the spec has one', async (t) => {
  const guid = '0b7c2a1e-5f1d-4c5e-9a43-2b1f6c0d9e11';
  t.match(domainXml({ ...spec, genid: guid }), new RegExp(`\\n  <genid>${guid}</genid>\\n`));
  t.notMatch(domainXml(spec), /genid/);
});

t.test('a devices-only state (a handoff) makes QEMU expect no configuration section', async (t) => {
  t.same(extraQemuArgs({ ...spec, devicesOnly: true }).slice(-2), ['-global', 'migration.send-configuration=off']);
  t.notOk(extraQemuArgs(spec).includes('migration.send-configuration=off'));
});
