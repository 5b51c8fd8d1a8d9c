/**
 * The libfuse 3 road: Strata's own N-API binding (native/fuse3-napi.c, built by scripts/setup.sh into
 * native/bin/strata-fuse3.node) of the low-level, inode-based API. The binding's loop thread hands every
 * request to this thread and goes on reading; the answer is sent from here whenever it is ready, so a slow
 * source.read holds only its own request.
 */
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { nativeArtifact } from '../core/native.js';
import { promisify } from 'node:util';
import { blocksOf, indexInodes, rdevOf, statMode } from './tree.js';
import type { FuseMount, LayerNode, LayerSource, MountOptions } from './types.js';

type Req = object;
interface Binding {
  mount(mountpoint: string, options: string, handler: (op: number, req: Req | null, ino: number, a: number, b: number, name?: string) => void): object;
  unmount(handle: object, mountpoint: string): number;
  destroy(handle: object): void;
  unref(handle: object): void;
  replyErr(req: Req, errno: number): void;
  replyEntry(req: Req, attr: Float64Array, timeout: number): void;
  replyAttr(req: Req, attr: Float64Array, timeout: number): void;
  replyReadlink(req: Req, target: string): void;
  replyBuf(req: Req, data: Buffer): void;
  replyXattrSize(req: Req, size: number): void;
  replyDir(req: Req, size: number, firstOffset: number, names: string[], attrs: Float64Array, plusTimeout: number): void;
}

const run = promisify(execFile);

const OP = { EXITED: 0, LOOKUP: 1, GETATTR: 2, READLINK: 3, READ: 4, READDIR: 5, GETXATTR: 6, LISTXATTR: 7, READDIRPLUS: 8 } as const;
const EPERM = 1;
const ENOENT = 2;
const EIO = 5;
const ENOTDIR = 20;
const EINVAL = 22;
const ERANGE = 34;
const ENODATA = 61;

/** The tree never changes while mounted: the kernel may cache names and attributes for long. */
const TIMEOUT_S = 3600;

/** Where the built binding is, or undefined when scripts/setup.sh has not built it. */
export const fuse3BindingPath = (): string | undefined => nativeArtifact('strata-fuse3.node');

let cached: Binding | undefined;
export function loadFuse3(): Binding {
  if (!cached) {
    const path = fuse3BindingPath();
    if (!path) throw new Error('the FUSE binding (native/bin/strata-fuse3.node) is not built: run scripts/setup.sh');
    cached = createRequire(import.meta.url)(path) as Binding;
  }
  return cached;
}

function attrOf(n: LayerNode, out = new Float64Array(9)): Float64Array {
  out[0] = n.ino;
  out[1] = statMode(n);
  out[2] = n.nlink;
  out[3] = n.uid;
  out[4] = n.gid;
  out[5] = n.size;
  out[6] = rdevOf(n);
  out[7] = blocksOf(n);
  out[8] = n.mtimeMs;
  return out;
}

/** A directory's listing as the kernel reads it: '.', '..', then the children, each with a stable offset. */
interface Listing {
  names: string[];
  attrs: Float64Array;
}

export async function mountWithFuse3(mountpoint: string, source: LayerSource, opts: MountOptions): Promise<FuseMount> {
  const b = loadFuse3();
  const log = opts.log;
  const byIno = indexInodes(source);
  const parentOf = new Map<number, LayerNode>([[1, source.root]]);
  for (const n of byIno.values()) for (const c of n.children?.values() ?? []) if (c.type === 'dir') parentOf.set(c.ino, n);
  const listings = new Map<number, Listing>();
  const listing = (dir: LayerNode): Listing => {
    let l = listings.get(dir.ino);
    if (!l) {
      const entries: [string, LayerNode][] = [['.', dir], ['..', parentOf.get(dir.ino) ?? dir], ...dir.children!];
      const attrs = new Float64Array(entries.length * 9);
      entries.forEach(([, n], i) => attrOf(n, attrs.subarray(i * 9, i * 9 + 9)));
      l = { names: entries.map(([name]) => name), attrs };
      listings.set(dir.ino, l);
    }
    return l;
  };

  let pending = 0;
  let exited = false;
  let destroyed = false;
  let resolveExit!: () => void;
  const exit = new Promise<void>((r) => (resolveExit = r));
  const maybeDestroy = () => {
    if (exited && pending === 0 && !destroyed) {
      destroyed = true;
      b.destroy(handle);
      resolveExit();
    }
  };
  const attr = new Float64Array(9);

  const handler = (op: number, req: Req | null, ino: number, a: number, off: number, name?: string): void => {
    if (op === OP.EXITED) {
      exited = true;
      maybeDestroy();
      return;
    }
    // Every request gets exactly one answer: an unanswered one would hang its caller in the kernel.
    try {
      answer(op, req!, ino, a, off, name);
    } catch (err) {
      log?.error('fuse request failed', { op, ino, error: err });
      b.replyErr(req!, EIO);
    }
  };

  const answer = (op: number, r: Req, ino: number, a: number, off: number, name?: string): void => {
    const node = byIno.get(ino);
    if (!node) return b.replyErr(r, ENOENT);
    switch (op) {
      case OP.LOOKUP: {
        const child = node.children?.get(name!);
        return child ? b.replyEntry(r, attrOf(child, attr), TIMEOUT_S) : b.replyErr(r, node.children ? ENOENT : ENOTDIR);
      }
      case OP.GETATTR:
        return b.replyAttr(r, attrOf(node, attr), TIMEOUT_S);
      case OP.READLINK:
        return node.type === 'symlink' ? b.replyReadlink(r, node.linkName ?? '') : b.replyErr(r, EINVAL);
      case OP.READDIR:
      case OP.READDIRPLUS: {
        if (!node.children) return b.replyErr(r, ENOTDIR);
        const l = listing(node);
        // An entry takes at least 32 bytes (plus: 152): never hand the binding more names than can fit.
        const first = Math.min(off, l.names.length);
        const last = Math.min(l.names.length, first + Math.ceil(a / (op === OP.READDIR ? 32 : 152)));
        const plus = op === OP.READDIR ? -1 : TIMEOUT_S;
        return b.replyDir(r, a, first, l.names.slice(first, last), l.attrs.subarray(first * 9, last * 9), plus);
      }
      case OP.GETXATTR: {
        const v = node.xattrs.get(name!);
        if (!v) return b.replyErr(r, ENODATA);
        if (a === 0) return b.replyXattrSize(r, v.length);
        return v.length > a ? b.replyErr(r, ERANGE) : b.replyBuf(r, v);
      }
      case OP.LISTXATTR: {
        const list = Buffer.from([...node.xattrs.keys()].map((k) => k + '\0').join(''));
        if (a === 0) return b.replyXattrSize(r, list.length);
        return list.length > a ? b.replyErr(r, ERANGE) : b.replyBuf(r, list);
      }
      case OP.READ: {
        if (node.type !== 'reg') return b.replyErr(r, EINVAL);
        const length = Math.min(a, node.size - off);
        if (length <= 0) return b.replyBuf(r, Buffer.alloc(0));
        let reading: Promise<Buffer>;
        try {
          reading = source.read(node, off, length);
        } catch (err) {
          reading = Promise.reject(err); // a source that throws instead of rejecting
        }
        pending++;
        reading.then(
          (data) => {
            pending--;
            b.replyBuf(r, data.length > length ? data.subarray(0, length) : data);
            maybeDestroy();
          },
          (err: unknown) => {
            pending--;
            log?.warn('fuse read failed', { ino: node.ino, offset: off, length, error: err });
            b.replyErr(r, EIO);
            maybeDestroy();
          },
        );
        return;
      }
      default:
        return b.replyErr(r, EINVAL);
    }
  };

  const fsName = (opts.fsName ?? 'strata').replace(/[,\\]/g, '_');
  const handle = b.mount(mountpoint, `ro,allow_other,default_permissions,fsname=${fsName},subtype=strata`, handler);
  let detached = false;
  return {
    mountpoint,
    async unmount() {
      if (!detached && !destroyed) {
        detached = true;
        const errno = b.unmount(handle, mountpoint);
        // EINVAL: not mounted (any more); EPERM: not root, fusermount3 (setuid) detaches for us.
        if (errno === EPERM) await run('fusermount3', ['-u', '-z', mountpoint]).catch(() => undefined);
        else if (errno !== 0 && errno !== EINVAL && errno !== ENOENT) log?.warn('fuse unmount failed', { errno });
      }
      // Not busy: the loop ends at once; busy (a file open), it serves until the last close, without keeping
      // this process alive for it.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exit, new Promise((r) => (timer = setTimeout(r, 200)))]);
      clearTimeout(timer);
      if (!destroyed) b.unref(handle);
    },
  };
}
