/**
 * The base VM manifest (manifest.json in a base directory): what a base is,
 * how to check it, and what QEMU needs to resume it. Parsing validates
 * every field, so a damaged manifest is a typed error, never a crash later.
 */
import { VmsynthError } from '../core/errors.js';
import type { Accel } from './accel.js';

/**
 * vmsynth-base/2: the VM has a virtio balloon with free page reporting (its
 * device state cannot be loaded into a VM without one, nor the reverse), and
 * free pages were returned before the save. /1 had no balloon.
 */
export const BASE_FORMAT = 'vmsynth-base/2';

export interface BaseFile {
  file: string;
  bytes: number;
  sha256: string;
}

export interface BaseManifest {
  format: typeof BASE_FORMAT;
  name: string;
  chunkSize: number;
  /** Identity of the base: overlays name their base by these two hashes. */
  disk: BaseFile;
  memory: BaseFile;
  deviceState: BaseFile;
  kernel: BaseFile;
  initrd: BaseFile;
  vm: {
    accel: Accel;
    /** libvirt CPU mode: "maximum" under TCG, "host-passthrough" under KVM. */
    cpu: string;
    machine: string;
    vcpus: number;
    memoryMiB: number;
    cmdline: string;
    mac: string;
    appPort: number;
    devices: string[];
  };
  created: {
    at: string;
    host: string;
    qemu: string;
    vmsynth: string;
    source: Record<string, unknown>;
    bootMs: number;
  };
}

/**
 * In vm.devices: the base was captured with a VM generation ID device. Such a
 * base must be resumed with one (its device state has a vmgenid section), and
 * each resume gets a fresh GUID; a base without it is resumed without.
 */
export const VMGENID_DEVICE = 'vmgenid';

export const hasGenid = (m: BaseManifest): boolean => m.vm.devices.includes(VMGENID_DEVICE);

type Check = (v: unknown) => boolean;
const isStr: Check = (v) => typeof v === 'string' && v.length > 0;
const isInt: Check = (v) => Number.isSafeInteger(v) && (v as number) >= 0;
const isHash: Check = (v) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
const isFileName: Check = (v) => isStr(v) && !(v as string).includes('/') && v !== '..' && v !== '.';

/** details: `field` names the bad field by its path ("disk.sha256"), or `reason` says why there are no fields to check. */
function fail(where: string, what: string, details: Record<string, unknown>): never {
  throw new VmsynthError('VMS_BASE_CORRUPT', `base manifest ${where}: ${what}`, {
    details: { manifest: where, ...details },
  });
}

/** `parent` is the object `obj` is found at ("disk", "vm"), or '' for the top level. */
function need(obj: Record<string, unknown>, key: string, check: Check, where: string, parent = ''): void {
  const field = parent ? `${parent}.${key}` : key;
  if (!check(obj[key])) fail(parent ? `${where} ${parent}` : where, `field "${key}" is missing or invalid`, { field });
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses and validates manifest text; `where` names it in errors. */
export function parseBaseManifest(text: string, where: string): BaseManifest {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch (err) {
    fail(where, `not valid JSON (${(err as Error).message})`, { reason: 'json' });
  }
  if (!isObj(m)) fail(where, 'not a JSON object', { reason: 'not-object' });
  if (m.format === 'vmsynth-base/1') {
    const why = 'is from an older vmsynth, whose VMs had no free-page-reporting balloon; this version cannot resume it';
    throw new VmsynthError('VMS_BASE_OUTDATED', `base manifest ${where}: format vmsynth-base/1 ${why}`, {
      details: { manifest: where, field: 'format', format: m.format, expected: BASE_FORMAT },
    });
  }
  if (m.format !== BASE_FORMAT) {
    fail(where, `unknown format ${JSON.stringify(m.format)}, expected ${BASE_FORMAT}`, {
      field: 'format',
      format: m.format,
      expected: BASE_FORMAT,
    });
  }
  need(m, 'name', isStr, where);
  need(m, 'chunkSize', (v) => v === 4096, where);
  for (const key of ['disk', 'memory', 'deviceState', 'kernel', 'initrd']) {
    const f = m[key];
    if (!isObj(f)) fail(where, `field "${key}" is missing`, { field: key });
    need(f, 'file', isFileName, where, key);
    need(f, 'bytes', isInt, where, key);
    need(f, 'sha256', isHash, where, key);
  }
  const vm = m.vm;
  if (!isObj(vm)) fail(where, 'field "vm" is missing', { field: 'vm' });
  need(vm, 'accel', (v) => v === 'kvm' || v === 'tcg', where, 'vm');
  for (const k of ['cpu', 'machine', 'cmdline', 'mac']) need(vm, k, isStr, where, 'vm');
  for (const k of ['vcpus', 'memoryMiB', 'appPort']) need(vm, k, (v) => isInt(v) && (v as number) > 0, where, 'vm');
  need(vm, 'devices', (v) => Array.isArray(v) && v.every(isStr), where, 'vm');
  const memoryBytes = (m.memory as BaseFile).bytes;
  if (memoryBytes !== (vm.memoryMiB as number) * 1024 * 1024) {
    const what = `memory image is ${memoryBytes} bytes but the VM has ${vm.memoryMiB as number} MiB`;
    throw new VmsynthError('VMS_MEMORY_SIZE_MISMATCH', `base manifest ${where}: ${what}`, {
      details: { manifest: where, bytes: memoryBytes, memoryMiB: vm.memoryMiB },
    });
  }
  if (!isObj(m.created)) fail(where, 'field "created" is missing', { field: 'created' });
  return m as unknown as BaseManifest;
}
