/**
 * The FUSE filesystem of a launch VM: a flat directory of read-only image
 * files (disk.img, memory.img) served by ImageFile objects, mounted with
 * fuse-native in this process.
 *
 * Rules this adapter keeps: every FUSE callback is answered (errors become
 * EIO, never an unanswered request); no op times out on its own (a read of a
 * chunk that has not arrived may legitimately wait); writes are refused
 * (guest memory is MAP_PRIVATE, the disk has a local copy-on-write layer);
 * and unmount always completes, by aborting the connection if it must.
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import path from 'node:path';
import Fuse, { type Handlers } from 'fuse-native';
import { publish } from '../core/diagnostics.js';
import { VmsynthError } from '../core/errors.js';
import type { ImageFile } from './image.js';
import { abortConnection, lazyUnmount, listFuseMounts } from './mounts.js';

export interface MountOptions {
  /** The FUSE device to require; tests point it elsewhere to check the error path. */
  fuseDevice?: string;
  /** How long a clean unmount may take before the connection is aborted. */
  unmountTimeoutMs?: number;
}

const DIR_MODE = 0o040555;
const FILE_MODE = 0o100444;

export async function checkFuseDevice(device = '/dev/fuse'): Promise<void> {
  try {
    await fsp.access(device, fsc.R_OK | fsc.W_OK);
  } catch (cause) {
    throw new VmsynthError('VMS_NO_FUSE', `cannot open ${device}: FUSE is not available to this process`, {
      cause,
      details: { device },
    });
  }
}

export class ImageMount {
  private unmounted: Promise<{ forced: boolean }> | null = null;

  private constructor(
    readonly mountpoint: string,
    private readonly fuse: Fuse,
    private readonly connection: number,
    private readonly unmountTimeoutMs: number,
  ) {}

  /** Mounts the images at mountpoint (created if missing). */
  static async mount(mountpoint: string, images: ImageFile[], options: MountOptions = {}): Promise<ImageMount> {
    await checkFuseDevice(options.fuseDevice);
    const byName = new Map(images.map((img) => [`/${img.name}`, img]));
    const started = new Date();
    let nextFd = 1;
    const fuse = new Fuse(
      mountpoint,
      fuseHandlers(byName, started, () => nextFd++),
      {
        mkdir: true,
        force: true,
        timeout: false,
        fsname: 'vmsynth',
        subtype: 'vmsynth',
      },
    );
    await new Promise<void>((resolve, reject) => {
      fuse.mount((err) =>
        err
          ? reject(
              new VmsynthError('VMS_FUSE_MOUNT', `cannot mount FUSE at ${mountpoint}: ${err.message}`, { cause: err }),
            )
          : resolve(),
      );
    });
    const mp = path.resolve(mountpoint);
    const entry = (await listFuseMounts()).find((m) => m.mountpoint === mp);
    publish('fuseMounted', { mountpoint: mp });
    return new ImageMount(mp, fuse, entry?.connection ?? -1, options.unmountTimeoutMs ?? 5000);
  }

  path(name: string): string {
    return path.join(this.mountpoint, name);
  }

  /** Unmounts; aborts the FUSE connection if a clean unmount does not finish in time. Idempotent. */
  unmount(): Promise<{ forced: boolean }> {
    this.unmounted ??= this.doUnmount();
    return this.unmounted;
  }

  private async doUnmount(): Promise<{ forced: boolean }> {
    const clean = new Promise<boolean>((resolve) => this.fuse.unmount((err) => resolve(!err)));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), this.unmountTimeoutMs);
    });
    const ok = await Promise.race([clean, timedOut]);
    clearTimeout(timer);
    let forced = false;
    if (!ok || (await listFuseMounts()).some((m) => m.mountpoint === this.mountpoint)) {
      forced = true;
      if (this.connection >= 0) await abortConnection(this.connection);
      await lazyUnmount(this.mountpoint).catch(() => undefined);
    }
    await fsp.rmdir(this.mountpoint).catch(() => undefined);
    publish('fuseUnmounted', { mountpoint: this.mountpoint, forced });
    return { forced };
  }
}

/** The FUSE operations over a set of images (exported for unit tests that need no FUSE). */
export function fuseHandlers(images: Map<string, ImageFile>, started: Date, newFd: () => number): Handlers {
  return {
    readdir(p, cb) {
      if (p !== '/') return cb(Fuse.ENOTDIR);
      cb(
        0,
        [...images.keys()].map((k) => k.slice(1)),
      );
    },
    getattr(p, cb) {
      const base = { mtime: started, atime: started, ctime: started, uid: 0, gid: 0 };
      if (p === '/') return cb(0, { ...base, size: 4096, mode: DIR_MODE, nlink: 2 });
      const img = images.get(p);
      if (!img) return cb(Fuse.ENOENT);
      cb(0, { ...base, size: img.size, mode: FILE_MODE, nlink: 1 });
    },
    open(p, _flags, cb) {
      if (!images.has(p)) return cb(Fuse.ENOENT);
      cb(0, newFd());
    },
    release(_p, _fd, cb) {
      cb(0);
    },
    read(p, _fd, buf, len, pos, cb) {
      const img = images.get(p);
      if (!img) return cb(Fuse.ENOENT);
      img.read(buf, len, pos).then(cb, (error: unknown) => {
        publish('fuseReadFailed', { path: p, offset: pos, length: len, error });
        cb(Fuse.EIO);
      });
    },
    write(_p, _fd, _buf, _len, _pos, cb) {
      cb(Fuse.EROFS);
    },
  };
}
