/**
 * Kernel module dependencies without kmod: each .ko carries a .modinfo
 * section of NUL-separated key=value strings, one of which is depends=.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { VmsynthError } from '../core/errors.js';

export function modinfoDepends(ko: Buffer): string[] {
  const key = Buffer.from('\0depends=');
  const at = ko.indexOf(key);
  if (at < 0) return [];
  const start = at + key.length;
  const end = ko.indexOf(0, start);
  const value = ko.subarray(start, end < 0 ? ko.length : end).toString('utf8');
  return value.split(',').map((s) => s.trim()).filter(Boolean);
}

/** Finds every .ko under a modules tree, by module name (dashes and underscores are equivalent). */
export async function indexModules(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (dir: string): Promise<void> => {
    for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name.endsWith('.ko')) out.set(e.name.slice(0, -3).replace(/-/g, '_'), p);
    }
  };
  await walk(root);
  return out;
}

/** The wanted modules plus their dependencies, each after everything it depends on. */
export async function loadOrder(index: Map<string, string>, wanted: string[]): Promise<string[]> {
  const order: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = async (name: string): Promise<void> => {
    const key = name.replace(/-/g, '_');
    if (state.get(key) === 'done') return;
    if (state.get(key) === 'visiting') {
      throw new VmsynthError('VMS_GUEST_BUILD', `kernel module dependency cycle at ${key}`, { details: { reason: 'cycle', module: key } });
    }
    const file = index.get(key);
    if (!file) throw new VmsynthError('VMS_GUEST_BUILD', `kernel module ${key} is not in the kernel package`, { details: { reason: 'missing', module: key } });
    state.set(key, 'visiting');
    for (const dep of modinfoDepends(await fsp.readFile(file))) await visit(dep);
    state.set(key, 'done');
    order.push(key);
  };
  for (const w of wanted) await visit(w);
  return order;
}
