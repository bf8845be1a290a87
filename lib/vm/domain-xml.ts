/**
 * The libvirt domain XML of a vmsynth VM (pure: no I/O).
 *
 * libvirt owns the lifecycle and shows the VM in `virsh list`; what libvirt
 * cannot express goes through <qemu:commandline>: guest RAM as a
 * memory-backend-file at a path we choose (share=on to capture a base,
 * share=off over the FUSE memory image to resume), a private QMP socket,
 * user-mode networking with a host port forward, and `-incoming defer`.
 * The XML must be identical between capture and resume except for the RAM
 * file, the disk, the sockets and the port, so the device state loads.
 */
import type { Accel } from './accel.js';

export interface VmSpec {
  /** libvirt domain name, `vmsynth-<id>`. */
  name: string;
  accel: Accel;
  /** Machine type; an alias such as "q35" at capture, the expanded type (pc-q35-7.2) at resume. */
  machine: string;
  vcpus: number;
  memoryMiB: number;
  kernel: string;
  initrd: string;
  cmdline: string;
  /** discard: pass the guest's discards (TRIM) down to the image (a qcow2 then drops the clusters). */
  disk: { path: string; format: 'raw' | 'qcow2'; discard?: boolean };
  /**
   * Guest RAM: the file, and whether guest writes reach it (MAP_SHARED) or stay
   * private; path null means anonymous RAM (a classic restore loads it all from the stream).
   */
  memory: { path: string | null; share: boolean };
  qmpSocket: string;
  consoleLog: string;
  /** The app's port forward; `agent` adds the customization agent's (only while customizing). */
  net: { mac: string; hostPort: number; guestPort: number; agent?: { hostPort: number; guestPort: number } };
  /** Start waiting for an incoming migration (device state) instead of booting. */
  incoming: boolean;
  /**
   * The incoming state has no configuration section: the devices alone, as
   * QMP xen-save-devices-state writes them (a handoff's). QEMU then must not
   * expect one (migration.send-configuration=off).
   */
  devicesOnly?: boolean;
  /**
   * The VM generation ID (QEMU's vmgenid device, libvirt's <genid>), or none.
   * A base captured with one must be resumed with one; a fresh GUID per resume
   * makes the guest kernel reseed its RNG (hw/acpi/vmgenid.c post_load).
   */
  genid?: string;
  /** The vmsynth process that owns the domain; a later start destroys it once that process is gone. */
  owner: { pid: number; start: string; sessionDir: string };
}

export const OWNER_XMLNS = 'https://vmsynth.dev/xmlns/owner/1';

export const MEMORY_BACKEND_ID = 'vmsynth-ram';
const NETDEV_ID = 'vmsynth-net';

function esc(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/'/g, '&apos;')
    .replace(/"/g, '&quot;');
}

/** The QEMU arguments vmsynth adds through <qemu:commandline>. */
export function extraQemuArgs(spec: VmSpec): string[] {
  const args = [
    '-object',
    spec.memory.path === null
      ? `memory-backend-ram,id=${MEMORY_BACKEND_ID},size=${spec.memoryMiB}M`
      : `memory-backend-file,id=${MEMORY_BACKEND_ID},size=${spec.memoryMiB}M,mem-path=${spec.memory.path},share=${spec.memory.share ? 'on' : 'off'}`,
    '-machine',
    `memory-backend=${MEMORY_BACKEND_ID}`,
    '-qmp',
    `unix:${spec.qmpSocket},server=on,wait=off`,
    '-netdev',
    `user,id=${NETDEV_ID},hostfwd=tcp:127.0.0.1:${spec.net.hostPort}-:${spec.net.guestPort}${spec.net.agent ? `,hostfwd=tcp:127.0.0.1:${spec.net.agent.hostPort}-:${spec.net.agent.guestPort}` : ''}`,
    '-device',
    `virtio-net-pci,netdev=${NETDEV_ID},mac=${spec.net.mac},romfile=,bus=pcie.0,addr=0x10`,
  ];
  if (spec.incoming) args.push('-incoming', 'defer');
  if (spec.devicesOnly) args.push('-global', 'migration.send-configuration=off');
  return args;
}

export function domainXml(spec: VmSpec): string {
  const cpu =
    spec.accel === 'kvm' ? `<cpu mode='host-passthrough' check='none'/>` : `<cpu mode='maximum' check='none'/>`;
  const args = extraQemuArgs(spec)
    .map((a) => `    <qemu:arg value='${esc(a)}'/>`)
    .join('\n');
  return `<domain type='${spec.accel === 'kvm' ? 'kvm' : 'qemu'}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${esc(spec.name)}</name>${spec.genid ? `\n  <genid>${esc(spec.genid)}</genid>` : ''}
  <metadata>
    <vmsynth:owner xmlns:vmsynth='${OWNER_XMLNS}' pid='${spec.owner.pid}' start='${esc(spec.owner.start)}' session='${esc(spec.owner.sessionDir)}'/>
  </metadata>
  <memory unit='MiB'>${spec.memoryMiB}</memory>
  <vcpu>${spec.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='${esc(spec.machine)}'>hvm</type>
    <kernel>${esc(spec.kernel)}</kernel>
    <initrd>${esc(spec.initrd)}</initrd>
    <cmdline>${esc(spec.cmdline)}</cmdline>
  </os>
  ${cpu}
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='${spec.disk.format}'${spec.disk.discard ? ` discard='unmap'` : ''}/>
      <source file='${esc(spec.disk.path)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='${esc(spec.consoleLog)}'/>
      <target port='0'/>
    </serial>
    <memballoon model='virtio' freePageReporting='on'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'>
    <label>+0:+0</label>
  </seclabel>
  <qemu:commandline>
${args}
  </qemu:commandline>
</domain>
`;
}

/** Reads the expanded machine type (e.g. pc-q35-7.2) from a live domain's XML. */
export function machineFromXml(xml: string): string | null {
  return /<type[^>]*\smachine='([^']+)'/.exec(xml)?.[1] ?? /<type[^>]*\smachine="([^"]+)"/.exec(xml)?.[1] ?? null;
}

/** Reads the owner record vmsynth put in a domain's metadata. */
export function ownerFromXml(xml: string): { pid: number; start: string; sessionDir: string } | null {
  const m = /<(?:\w+:)?owner\b[^>]*>/.exec(xml);
  if (!m) return null;
  const attr = (name: string) => new RegExp(`\\s${name}=['"]([^'"]*)['"]`).exec(m[0])?.[1];
  const pid = Number(attr('pid'));
  if (!Number.isInteger(pid) || pid <= 0) return null;
  return { pid, start: attr('start') ?? '', sessionDir: attr('session') ?? '' };
}
