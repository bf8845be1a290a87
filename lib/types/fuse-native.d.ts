// Minimal typings for fuse-native 2.x (the package ships none): only what vmsynth uses.
declare module 'fuse-native' {
  export interface Stat {
    mtime: Date;
    atime: Date;
    ctime: Date;
    size: number;
    mode: number;
    uid: number;
    gid: number;
    nlink?: number;
  }
  export interface Handlers {
    readdir?(path: string, cb: (err: number, names?: string[]) => void): void;
    getattr?(path: string, cb: (err: number, stat?: Stat) => void): void;
    open?(path: string, flags: number, cb: (err: number, fd?: number) => void): void;
    release?(path: string, fd: number, cb: (err: number) => void): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void;
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void;
  }
  export interface Options {
    force?: boolean;
    mkdir?: boolean;
    timeout?: number | false;
    allowOther?: boolean;
    defaultPermissions?: boolean;
    maxRead?: number;
    fsname?: string;
    subtype?: string;
    kernelCache?: boolean;
    debug?: boolean;
  }
  export default class Fuse {
    constructor(mnt: string, handlers: Handlers, opts?: Options);
    mnt: string;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    static ENOENT: number;
    static EIO: number;
    static EROFS: number;
    static EISDIR: number;
    static ENOTDIR: number;
    static EBADF: number;
  }
}
