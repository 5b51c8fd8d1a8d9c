/**
 * The `fuse-native` road: npm's prebuilt addon over libfuse 2's high-level (path-based) API, run by
 * fuse_loop_mt in the addon's own threads; each operation crosses to the JS thread with a uv_async and waits
 * there (on a semaphore, in a libfuse worker thread) until JS answers, so a slow read holds one worker, never
 * the event loop. Kept for the comparison in bench/fuse.ts (docs/fuse.md says which binding serves).
 */
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { promisify } from 'node:util';
import type { Logger } from '../log/index.js';
import { isMounted } from './mounts.js';
import { blocksOf, lookupPath, rdevOf, statMode } from './tree.js';
import type { FuseMount, LayerNode, LayerSource, MountOptions } from './types.js';

const run = promisify(execFile);

type Cb = (...args: any[]) => void;
interface FuseNativeInstance {
  mount(cb: (err: Error | null) => void): void;
  unmount(cb: (err: Error | null) => void): void;
}
interface FuseNativeModule {
  new (mnt: string, ops: Record<string, unknown>, opts: Record<string, unknown>): FuseNativeInstance;
  EIO: number;
  ENOENT: number;
  ENODATA: number;
  EROFS: number;
  ENOTDIR: number;
  EACCES: number;
}

let cached: FuseNativeModule | undefined;
/** The addon, loaded on first use (it needs libfuse.so.2 at load time). */
export function loadFuseNative(): FuseNativeModule {
  if (!cached) cached = createRequire(import.meta.url)('fuse-native') as FuseNativeModule;
  return cached;
}

function stat(n: LayerNode) {
  const t = new Date(n.mtimeMs);
  return {
    mode: statMode(n),
    uid: n.uid,
    gid: n.gid,
    size: n.size,
    nlink: n.nlink,
    ino: n.ino,
    rdev: rdevOf(n),
    blksize: 4096,
    blocks: blocksOf(n),
    mtime: t,
    atime: t,
    ctime: t,
  };
}

export async function mountWithFuseNative(mountpoint: string, source: LayerSource, opts: MountOptions): Promise<FuseMount> {
  const Fuse = loadFuseNative();
  const log: Logger | undefined = opts.log;
  const node = (path: string) => lookupPath(source.root, path);
  const ops = {
    getattr(path: string, cb: Cb) {
      const n = node(path);
      if (!n) return cb(Fuse.ENOENT);
      cb(0, stat(n));
    },
    readdir(path: string, cb: Cb) {
      const n = node(path);
      if (!n) return cb(Fuse.ENOENT);
      if (!n.children) return cb(Fuse.ENOTDIR);
      // libfuse 2's high-level API lists only what it is given: '.' and '..' too (the parent's attributes
      // do not matter to a listing).
      const names = ['.', '..', ...n.children.keys()];
      cb(0, names, names.map((name) => stat(name === '.' || name === '..' ? n : n.children!.get(name)!)));
    },
    open(path: string, flags: number, cb: Cb) {
      const n = node(path);
      if (!n) return cb(Fuse.ENOENT);
      if ((flags & 3) !== 0) return cb(Fuse.EROFS);
      cb(0, 0);
    },
    release(_path: string, _fd: number, cb: Cb) {
      cb(0);
    },
    read(path: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
      const n = node(path);
      if (!n) return cb(Fuse.ENOENT);
      if (pos >= n.size) return cb(0);
      let reading: Promise<Buffer>;
      try {
        reading = source.read(n, pos, Math.min(len, n.size - pos));
      } catch (err) {
        reading = Promise.reject(err); // a source that throws instead of rejecting
      }
      reading.then(
        (data) => cb(data.copy(buf, 0, 0, Math.min(len, data.length))),
        (err: unknown) => {
          log?.warn('fuse read failed', { ino: n.ino, offset: pos, length: len, error: err });
          cb(Fuse.EIO);
        },
      );
    },
    readlink(path: string, cb: Cb) {
      const n = node(path);
      if (!n) return cb(Fuse.ENOENT);
      cb(0, n.linkName ?? '');
    },
    getxattr(path: string, name: string, _position: number, cb: Cb) {
      const n = node(path);
      if (!n) return cb(Fuse.ENOENT);
      const v = n.xattrs.get(name);
      // fuse-native copies the value into libfuse's buffer without a size probe: an empty answer (null) is ENODATA.
      cb(0, v ?? null);
    },
    listxattr(path: string, cb: Cb) {
      const n = node(path);
      if (!n) return cb(Fuse.ENOENT);
      cb(0, [...n.xattrs.keys()]);
    },
    statfs(_path: string, cb: Cb) {
      cb(0, { bsize: 4096, frsize: 4096, blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, favail: 0, fsid: 0, flag: 1, namemax: 255 });
    },
  };
  // fuse-native has no option for 'ro' or 'use_ino' (libfuse 2 ignores st_ino without it): they ride on the
  // fsname, which it appends to `-o` unescaped.
  const fsName = (opts.fsName ?? 'strata').replace(/[,\\]/g, '_');
  const fuse = new Fuse(mountpoint, ops, {
    allowOther: true,
    defaultPermissions: true,
    fsname: `${fsName},ro,use_ino,subtype=strata`,
    timeout: false,
    entryTimeout: 3600,
    attrTimeout: 3600,
    kernelCache: true,
  });
  await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
  let done: Promise<void> | undefined;
  return {
    mountpoint,
    unmount() {
      done ??= (async () => {
        // fuse-native's unmount runs `fusermount -uz` (a lazy detach) then stops its loop; when the mount was
        // already gone it reports an error, which is not one for us.
        const err = await new Promise<Error | null>((resolve) => fuse.unmount((e) => resolve(e)));
        if (err && (await isMounted(mountpoint))) await run('umount', ['-l', mountpoint]).catch(() => undefined);
      })();
      return done;
    },
  };
}
