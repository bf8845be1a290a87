/**
 * What a running VM has written to its memory since it was resumed, found
 * from outside QEMU, for a handoff's delta.
 *
 * A resumed VM's RAM is the memory image mapped MAP_PRIVATE (share=off). A
 * page the guest (or QEMU) wrote is then a private anonymous copy, and
 * /proc/PID/pagemap says so: present (bit 63) or swapped (bit 62), and not a
 * file page (bit 61). A page never written is either not present or a page of
 * the file. The pages are read through /proc/PID/mem (root; CAP_SYS_PTRACE
 * where Yama is on). The set only grows: to see what changed since an earlier
 * pass, compare the pages' hashes (see docs/DESIGN-NOTES.md, "Handoff").
 */
import { promises as fsp } from 'node:fs';
import { VmsynthError } from '../core/errors.js';

export const PAGE_SIZE = 4096;

const PRESENT = 1n << 63n;
const SWAPPED = 1n << 62n;
const FILE_PAGE = 1n << 61n;

/** One mapping of a file in a process, from /proc/PID/maps (addresses and offset in bytes). */
export interface FileMapping {
  start: number;
  end: number;
  /** Offset in the file of `start`. */
  offset: number;
  perms: string;
}

/** The mappings of `file` in a /proc/PID/maps text (pure). */
export function mappingsOf(maps: string, file: string): FileMapping[] {
  const out: FileMapping[] = [];
  for (const line of maps.split('\n')) {
    // start-end perms offset dev inode path (the path may contain spaces)
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+\s+(.*)$/.exec(line);
    if (!m || m[5] !== file) continue;
    out.push({ start: parseInt(m[1]!, 16), end: parseInt(m[2]!, 16), perms: m[3]!, offset: parseInt(m[4]!, 16) });
  }
  return out;
}

/**
 * Pages written, from pagemap entries (8 bytes a page, little-endian), as
 * indexes into those entries (pure).
 */
export function writtenInPagemap(entries: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i + 8 <= entries.length; i += 8) {
    const e = entries.readBigUInt64LE(i);
    if ((e & (PRESENT | SWAPPED)) !== 0n && (e & FILE_PAGE) === 0n) out.push(i / 8);
  }
  return out;
}

export interface WrittenScan {
  /** Pages of the file (offset / PAGE_SIZE) the process holds private copies of, ascending. */
  pages: number[];
  /** The mapping scanned. */
  mapping: FileMapping;
  ms: number;
}

function procError(pid: number, what: string, err: unknown): VmsynthError {
  const e = err as NodeJS.ErrnoException;
  const hint =
    e.code === 'EACCES' || e.code === 'EPERM' ? ' (this needs root, and CAP_SYS_PTRACE where Yama is on)' : '';
  return new VmsynthError('VMS_VM_MEMORY', `cannot read ${what} of process ${pid}: ${e.message}${hint}`, {
    details: { pid, what, errno: e.code ?? null },
    cause: err,
  });
}

/** The one writable private mapping of `file` in process `pid` (QEMU's guest RAM). */
export async function ramMapping(pid: number, file: string): Promise<FileMapping> {
  const maps = await fsp.readFile(`/proc/${pid}/maps`, 'utf8').catch((err: unknown) => {
    throw procError(pid, 'the memory map', err);
  });
  const found = mappingsOf(maps, file).filter((m) => m.perms.startsWith('rw') && m.perms[3] === 'p');
  if (found.length !== 1) {
    throw new VmsynthError(
      'VMS_VM_MEMORY',
      `process ${pid} maps ${file} privately and writably ${found.length} times, not once`,
      {
        details: { pid, file, mappings: found.length },
      },
    );
  }
  return found[0]!;
}

/** Scans which pages of `file` process `pid` has written since it mapped it. */
export async function scanWritten(pid: number, file: string): Promise<WrittenScan> {
  const t0 = performance.now();
  const mapping = await ramMapping(pid, file);
  const pagemap = await fsp.open(`/proc/${pid}/pagemap`, 'r').catch((err: unknown) => {
    throw procError(pid, 'the page map', err);
  });
  try {
    const count = (mapping.end - mapping.start) / PAGE_SIZE;
    const pages: number[] = [];
    const first = mapping.offset / PAGE_SIZE;
    const batch = 1 << 16; // entries per read: 512 KiB of pagemap, 256 MiB of RAM
    const buf = Buffer.alloc(batch * 8);
    for (let at = 0; at < count; at += batch) {
      const n = Math.min(batch, count - at);
      const { bytesRead } = await pagemap.read(buf, 0, n * 8, (mapping.start / PAGE_SIZE + at) * 8);
      for (const i of writtenInPagemap(buf.subarray(0, bytesRead))) pages.push(first + at + i);
    }
    return { pages, mapping, ms: performance.now() - t0 };
  } catch (err) {
    throw procError(pid, 'the page map', err);
  } finally {
    await pagemap.close();
  }
}

/** Reads pages of the file as process `pid` sees them (its private copies), in runs of adjacent pages. */
export async function* readPages(
  pid: number,
  mapping: FileMapping,
  pages: number[],
  maxRun = 256,
): AsyncGenerator<{ page: number; data: Buffer }> {
  const mem = await fsp.open(`/proc/${pid}/mem`, 'r').catch((err: unknown) => {
    throw procError(pid, 'the memory', err);
  });
  try {
    for (let i = 0; i < pages.length;) {
      let j = i + 1;
      while (j < pages.length && j - i < maxRun && pages[j] === pages[j - 1]! + 1) j++;
      const first = pages[i]!;
      const buf = Buffer.alloc((j - i) * PAGE_SIZE);
      const addr = mapping.start + (first * PAGE_SIZE - mapping.offset);
      const { bytesRead } = await mem.read(buf, 0, buf.length, addr).catch((err: unknown) => {
        throw procError(pid, 'the memory', err);
      });
      if (bytesRead !== buf.length) throw procError(pid, 'the memory', new Error(`short read at page ${first}`));
      for (let k = 0; k < j - i; k++) yield { page: first + k, data: buf.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE) };
      i = j;
    }
  } finally {
    await mem.close();
  }
}
