/**
 * A deterministic cpio "newc" archive writer for initramfs images: fixed
 * inode numbers, owner root, mtime 0, so the same inputs give the same bytes.
 */

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'char'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function header(fields: number[], name: string): Buffer {
  const hex = fields.map((f) => f.toString(16).padStart(8, '0')).join('');
  const nameBuf = Buffer.from(name + '\0', 'utf8');
  const head = Buffer.from('070701' + hex, 'ascii');
  return Buffer.concat([head, nameBuf, Buffer.alloc(pad4(head.length + nameBuf.length))]);
}

export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '');
    let mode: number;
    let data: Buffer = Buffer.alloc(0);
    let rdevMajor = 0;
    let rdevMinor = 0;
    switch (e.kind) {
      case 'dir': mode = S_IFDIR | (e.mode ?? 0o755); break;
      case 'file': mode = S_IFREG | (e.mode ?? 0o644); data = e.data; break;
      case 'symlink': mode = S_IFLNK | 0o777; data = Buffer.from(e.target, 'utf8'); break;
      case 'char': mode = S_IFCHR | (e.mode ?? 0o600); rdevMajor = e.major; rdevMinor = e.minor; break;
    }
    const nlink = e.kind === 'dir' ? 2 : 1;
    const nameSize = Buffer.byteLength(name, 'utf8') + 1;
    parts.push(header([ino++, mode, 0, 0, nlink, 0, data.length, 0, 0, rdevMajor, rdevMinor, nameSize, 0], name));
    parts.push(data, Buffer.alloc(pad4(data.length)));
  }
  parts.push(header([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 'TRAILER!!!'.length + 1, 0], 'TRAILER!!!'));
  const out = Buffer.concat(parts);
  // Pad the archive to a 512-byte boundary, as cpio does.
  return Buffer.concat([out, Buffer.alloc((512 - (out.length % 512)) % 512)]);
}
