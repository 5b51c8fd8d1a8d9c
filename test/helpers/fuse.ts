/**
 * FUSE test helpers: a tar turned into a LayerSource (the tree in memory, whiteouts in overlay format, as a
 * lazy snapshotter hands its layers to src/fuse), and a check that no FUSE mount is left under a directory.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { extract, type Header } from 'tar-stream';
import type { LayerNode, LayerSource } from '../../src/fuse/index.js';

const run = promisify(execFile);

export interface TarLayerSource extends LayerSource {
  /** Calls of read() so far. */
  reads: number;
  /** Replaces read() for some calls: return a promise to answer with it, undefined to read normally. */
  intercept?: (node: LayerNode, offset: number, length: number) => Promise<Buffer> | undefined;
  /** The node at a path ('etc/passwd'). */
  node(path: string): LayerNode | undefined;
}

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';

/** Reads a tar (an OCI layer: `.wh.` whiteouts, `.wh..wh..opq` opaque markers, PAX SCHILY.xattr records). */
export async function tarLayerSource(tar: Buffer): Promise<TarLayerSource> {
  let nextIno = 1;
  const bodies = new Map<number, Buffer>();
  const newNode = (type: LayerNode['type'], h: Partial<Header> = {}): LayerNode => ({
    ino: nextIno++,
    type,
    mode: (h.mode ?? (type === 'dir' ? 0o755 : 0o644)) & 0o7777,
    uid: h.uid ?? 0,
    gid: h.gid ?? 0,
    size: 0,
    mtimeMs: h.mtime ? h.mtime.getTime() : 0,
    nlink: type === 'dir' ? 2 : 1,
    xattrs: new Map(),
    ...(type === 'dir' ? { children: new Map() } : {}),
  });
  const root = newNode('dir');

  const parts = (name: string) => name.split('/').filter((p) => p !== '' && p !== '.');
  const dirAt = (segs: string[]): LayerNode => {
    let d = root;
    for (const s of segs) {
      let c = d.children!.get(s);
      if (!c) {
        c = newNode('dir');
        d.children!.set(s, c);
        d.nlink++;
      }
      d = c;
    }
    return d;
  };
  const lookup = (path: string): LayerNode | undefined => {
    let n: LayerNode | undefined = root;
    for (const s of parts(path)) n = n?.children?.get(s);
    return n;
  };

  const ex = extract();
  const done = (async () => {
    for await (const entry of ex) {
      const h = entry.header;
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(Buffer.from(c as Uint8Array));
      const segs = parts(h.name);
      if (segs.length === 0) {
        Object.assign(root, { mode: (h.mode ?? 0o755) & 0o7777, uid: h.uid ?? 0, gid: h.gid ?? 0 });
        continue;
      }
      const base = segs.pop()!;
      const parent = dirAt(segs);
      if (base === OPAQUE) {
        parent.xattrs.set('trusted.overlay.opaque', Buffer.from('y'));
        continue;
      }
      let n: LayerNode;
      let name = base;
      if (base.startsWith(WHITEOUT)) {
        name = base.slice(WHITEOUT.length);
        n = { ...newNode('char', h), mode: 0, devMajor: 0, devMinor: 0 };
      } else if (h.type === 'link') {
        n = lookup(h.linkname ?? '')!;
        if (!n) throw new Error(`hard link to a missing ${h.linkname}`);
        n.nlink++;
      } else if (h.type === 'directory') {
        const existing = parent.children!.get(base);
        n = existing?.type === 'dir' ? existing : newNode('dir', h);
        Object.assign(n, { mode: (h.mode ?? 0o755) & 0o7777, uid: h.uid ?? 0, gid: h.gid ?? 0 });
      } else if (h.type === 'symlink') {
        n = newNode('symlink', h);
        n.linkName = h.linkname ?? '';
        n.size = Buffer.byteLength(n.linkName);
      } else if (h.type === 'character-device' || h.type === 'block-device') {
        n = newNode(h.type === 'character-device' ? 'char' : 'block', h);
        n.devMajor = h.devmajor ?? 0;
        n.devMinor = h.devminor ?? 0;
      } else if (h.type === 'fifo') {
        n = newNode('fifo', h);
      } else {
        n = newNode('reg', h);
        const body = Buffer.concat(chunks);
        n.size = body.length;
        bodies.set(n.ino, body);
      }
      for (const [k, v] of Object.entries(h.pax ?? {})) {
        if (k.startsWith('SCHILY.xattr.')) n.xattrs.set(k.slice('SCHILY.xattr.'.length), Buffer.from(v, 'binary'));
      }
      if (!parent.children!.has(name) || parent.children!.get(name) !== n) {
        if (n.type === 'dir' && !parent.children!.has(name)) parent.nlink++;
        parent.children!.set(name, n);
      }
    }
  })();
  ex.end(tar);
  await done;

  const source: TarLayerSource = {
    root,
    reads: 0,
    node: lookup,
    async read(node, offset, length) {
      source.reads++;
      const custom = source.intercept?.(node, offset, length);
      if (custom) return custom;
      const body = bodies.get(node.ino);
      if (!body) throw new Error('not a regular file');
      return body.subarray(offset, offset + length);
    },
  };
  return source;
}

const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** FUSE mounts (fstype fuse or fuse.*) at or under `dir`, from /proc/self/mountinfo. */
export async function fuseMountsUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const point = unescape(f[4]!);
    const fstype = f[f.indexOf('-') + 1] ?? '';
    if ((fstype === 'fuse' || fstype.startsWith('fuse.')) && (point === dir || point.startsWith(dir + '/'))) out.push(point);
  }
  return out;
}

/** The fallback of a test's cleanup: lazily detach every FUSE mount under `dir` (innermost first). */
export async function detachFuseMountsUnder(dir: string): Promise<void> {
  for (const p of (await fuseMountsUnder(dir)).sort().reverse()) {
    await run('fusermount3', ['-u', '-z', p]).catch(() => run('umount', ['-l', p]).catch(() => undefined));
  }
}
