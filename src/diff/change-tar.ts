/**
 * Writing the layer tar of a stream of changes (changes.ts), as containerd's ChangeWriter does: entries in walk
 * order, every parent directory of an entry included before it (once), whiteouts `.wh.<name>` as empty regular
 * files, hard links within the upper tree as link entries to the first name written, security.capability as a
 * PAX xattr record, sockets skipped, mtimes truncated to seconds, no atime/ctime, no user/group names. The
 * header encoding is the tar module's (tar.ts).
 */
import type { BigIntStats } from 'node:fs';
import { constants } from 'node:fs';
import { lstat, open, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { unknown } from '../core/errdefs.js';
import { CAPABILITY, isLinked, mtimeSeconds, type Change } from './changes.js';
import { encodeHeader, endOfArchive, padding, PAX_XATTR, type TarWriteHeader, type TypeFlag } from './tar.js';
import { WH_OPAQUE, WH_PREFIX } from './whiteouts.js';

const READ_CHUNK = 1 << 20;
/** The tar writer reads files up to this size ahead, this many changes ahead (at most 4 MiB held). */
const PREFETCH_SIZE = 128 * 1024;
const LOOKAHEAD = 32;

// Linux dev_t encoding (glibc's gnu_dev_major/minor).
const devMajor = (rdev: bigint) => Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
const devMinor = (rdev: bigint) => Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));

function typeOf(st: BigIntStats): TypeFlag | null {
  if (st.isFile()) return '0';
  if (st.isDirectory()) return '5';
  if (st.isSymbolicLink()) return '2';
  if (st.isCharacterDevice()) return '3';
  if (st.isBlockDevice()) return '4';
  if (st.isFIFO()) return '6';
  return null; // sockets
}

const dirname = (p: string) => {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
};
const basename = (p: string) => p.slice(p.lastIndexOf('/') + 1);

/**
 * containerd's ChangeWriter: turns changes (in walk order) into tar bytes, reading entries from `root` (the
 * upper tree, or the upperdir on the fast path).
 */
export class ChangeTarWriter {
  private readonly whiteoutTime = BigInt(Math.floor(Date.now() / 1000));
  /** First name written per hard-linked inode ("dev:ino"). */
  private readonly inodeSrc = new Map<string, string>();
  /** Unmodified names of an inode none of whose names was written yet. */
  private readonly inodeRefs = new Map<string, string[]>();
  private readonly addedDirs = new Set<string>();

  constructor(private readonly root: string) {}

  /** Reads a small file whole (exactly its size at stat time), ahead of writing it. */
  prefetch(c: Change): Promise<Buffer> | undefined {
    const st = c.stat;
    if ((c.kind !== 'add' && c.kind !== 'modify') || !st?.isFile() || st.size === 0n || st.size > BigInt(PREFETCH_SIZE)) return undefined;
    const p = readExactly(join(this.root, c.path), Number(st.size));
    p.catch(() => undefined); // awaited (and its error thrown) when the entry is written
    return p;
  }

  /** The tar bytes of one change; `data`: its prefetched content, if any. */
  async *change(c: Change, data?: Promise<Buffer>): AsyncGenerator<Buffer> {
    if (c.kind === 'delete') {
      const dir = dirname(c.path);
      const name = `${dir ? `${dir}/` : ''}${WH_PREFIX}${basename(c.path)}`;
      const h: TarWriteHeader = { name, type: '0', mode: 0, uid: 0, gid: 0, size: 0, mtime: this.whiteoutTime };
      yield* this.includeParents(name, false);
      yield encodeHeader(h);
      return;
    }
    const st = c.stat;
    if (!st) throw new TypeError(`change ${c.path} has no stat`);
    const type = typeOf(st);
    if (type === null) return; // sockets are not part of layers
    const full = join(this.root, c.path);
    const isDir = type === '5';
    const name = isDir ? `${c.path}/` : c.path;
    const h: TarWriteHeader = {
      name,
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: type === '0' ? Number(st.size) : 0,
      mtime: mtimeSeconds(st),
    };
    if (type === '2') h.linkname = await readlink(full);
    if (type === '3' || type === '4') {
      h.devmajor = devMajor(st.rdev);
      h.devminor = devMinor(st.rdev);
    }

    let additionalLinks: string[] | undefined;
    if (isLinked(st)) {
      const inode = `${st.dev}:${st.ino}`;
      const source = this.inodeSrc.get(inode);
      if (source !== undefined) {
        h.type = '1';
        h.linkname = source;
        h.size = 0;
      } else {
        if (c.kind === 'unmodified') {
          const refs = this.inodeRefs.get(inode) ?? [];
          refs.push(name);
          this.inodeRefs.set(inode, refs);
          return;
        }
        this.inodeSrc.set(inode, name);
        additionalLinks = this.inodeRefs.get(inode);
        this.inodeRefs.delete(inode);
      }
    } else if (c.kind === 'unmodified') {
      return;
    }
    if (c.capability && h.type !== '1') h.pax = [[`${PAX_XATTR}${CAPABILITY}`, c.capability]];

    yield* this.includeParents(name, isDir);
    yield encodeHeader(h);
    if (h.type === '0' && h.size > 0) {
      if (data) {
        yield await data;
        const pad = padding(h.size);
        if (pad > 0) yield Buffer.alloc(pad);
      } else yield* this.fileData(full, h.size);
    }

    if (additionalLinks) {
      for (const extra of additionalLinks) {
        const link: TarWriteHeader = { ...h, name: extra, type: '1', linkname: name, size: 0 };
        delete link.pax;
        yield* this.includeParents(extra, false);
        yield encodeHeader(link);
      }
    }
    if (c.opaque && isDir) {
      yield encodeHeader({ name: `${name}${WH_OPAQUE}`, type: '0', mode: 0, uid: 0, gid: 0, size: 0, mtime: this.whiteoutTime });
    }
  }

  /** The end-of-archive marker. */
  end(): Buffer {
    return endOfArchive();
  }

  private async *includeParents(hdrName: string, isDir: boolean): AsyncGenerator<Buffer> {
    const name = hdrName.replace(/\/+$/, '');
    const parent = dirname(name);
    if (name !== '' && parent !== '' && !this.addedDirs.has(parent)) {
      this.addedDirs.add(parent);
      const st = await lstat(join(this.root, parent), { bigint: true });
      yield* this.change({ kind: 'modify', path: parent, stat: st });
    }
    if (isDir) this.addedDirs.add(name);
  }

  private async *fileData(path: string, size: number): AsyncGenerator<Buffer> {
    const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      let left = size;
      while (left > 0) {
        const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, left));
        const { bytesRead } = await fh.read(buf, 0, buf.length, size - left);
        if (bytesRead === 0) throw unknown(`${path} shrank while the diff was written (${size - left} of ${size} bytes)`);
        left -= bytesRead;
        yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
      }
    } finally {
      await fh.close();
    }
    const pad = padding(size);
    if (pad > 0) yield Buffer.alloc(pad);
  }
}

async function readExactly(path: string, size: number): Promise<Buffer> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const buf = Buffer.allocUnsafe(size);
    let got = 0;
    while (got < size) {
      const { bytesRead } = await fh.read(buf, got, size - got, got);
      if (bytesRead === 0) throw unknown(`${path} shrank while the diff was written (${got} of ${size} bytes)`);
      got += bytesRead;
    }
    return buf;
  } finally {
    await fh.close();
  }
}

/**
 * The whole layer tar for a stream of changes read from `root`. Small files are read a few changes ahead, so
 * that their reads overlap in the thread pool instead of running one after the other.
 */
export async function* changesTar(changes: AsyncIterable<Change>, root: string): AsyncGenerator<Buffer> {
  const w = new ChangeTarWriter(root);
  const it = changes[Symbol.asyncIterator]();
  const queue: { c: Change; data?: Promise<Buffer> }[] = [];
  let ended = false;
  try {
    for (;;) {
      while (!ended && queue.length < LOOKAHEAD) {
        const r = await it.next();
        if (r.done) ended = true;
        else queue.push({ c: r.value, data: w.prefetch(r.value) });
      }
      const head = queue.shift();
      if (!head) break;
      yield* w.change(head.c, head.data);
    }
    yield w.end();
  } finally {
    await it.return?.(undefined);
  }
}
