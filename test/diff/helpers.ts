/** Shared helpers of the differ tests: content stores, tars, trees, xattrs. */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { createGunzip } from 'node:zlib';
import { extract } from 'tar-stream';
import { openLocalContentStore } from '../../src/content/local.js';
import type { ContentStore } from '../../src/content/types.js';
import { MetadataStore } from '../../src/metadata/index.js';

const run = promisify(execFile);

/** A namespaced content store (namespace "default") over a local store in dir. */
export async function contentStore(dir: string): Promise<{ content: ContentStore; md: MetadataStore }> {
  const local = await openLocalContentStore(join(dir, 'content'));
  const md = MetadataStore.open(join(dir, 'meta.db'), local);
  return { content: md.content.bind({ namespace: 'default' }), md };
}

export async function putBlob(content: ContentStore, data: Buffer, ref = `blob-${Math.random()}`): Promise<string> {
  const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  const w = await content.writer({ ref });
  try {
    await w.write(data);
    await w.commit(data.length, digest);
  } catch (err) {
    if (!String(err).includes('already exists')) throw err;
  } finally {
    await w.close();
  }
  return digest;
}

export async function readBlob(content: ContentStore, digest: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await content.read(digest)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export interface TarEntry {
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  pax?: Record<string, string>;
  body?: Buffer;
}

/** The entries of a (possibly gzipped) tar, bodies included. */
export async function listTar(data: Buffer): Promise<TarEntry[]> {
  const gz = data[0] === 0x1f && data[1] === 0x8b;
  const src = gz ? Readable.from([data]).pipe(createGunzip()) : Readable.from([data]);
  const ex = extract();
  const out: TarEntry[] = [];
  const done = (async () => {
    for await (const e of ex) {
      const chunks: Buffer[] = [];
      for await (const c of e) chunks.push(c as Buffer);
      const h = e.header;
      const t: TarEntry = {
        name: h.name,
        type: h.type ?? 'file',
        mode: h.mode ?? 0,
        uid: h.uid ?? 0,
        gid: h.gid ?? 0,
        size: h.size ?? 0,
        mtime: Math.floor((h.mtime?.getTime() ?? 0) / 1000),
      };
      if (h.linkname) t.linkname = h.linkname;
      if (h.type === 'character-device' || h.type === 'block-device') {
        t.devmajor = h.devmajor ?? 0;
        t.devminor = h.devminor ?? 0;
      }
      if (h.pax) t.pax = h.pax as Record<string, string>;
      if (chunks.length > 0) t.body = Buffer.concat(chunks);
      out.push(t);
    }
  })();
  for await (const c of src) if (!ex.write(c as Buffer)) await new Promise<void>((r) => ex.once('drain', () => r()));
  (ex as unknown as { end(): void }).end();
  await done;
  return out;
}

export interface Node {
  path: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size?: number;
  sha?: string;
  target?: string;
  rdev?: number;
  /** For the second and later names of an inode: the first name. */
  link?: string;
}

async function fileSha(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

/** Everything below root, sorted, with what a layer must carry (mtime in whole seconds). */
export async function snapshotTree(root: string, opts: { dirMtimes?: boolean } = {}): Promise<Node[]> {
  const out: Node[] = [];
  const inodes = new Map<string, string>();
  const walk = async (rel: string) => {
    for (const name of (await readdir(join(root, rel))).sort()) {
      const path = rel ? `${rel}/${name}` : name;
      const full = join(root, path);
      const st = await lstat(full, { bigint: true });
      const n: Node = {
        path,
        type: st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : st.isFIFO() ? 'fifo' : st.isCharacterDevice() ? 'char' : st.isBlockDevice() ? 'block' : 'other',
        mode: Number(st.mode & 0o7777n),
        uid: Number(st.uid),
        gid: Number(st.gid),
        mtime: Number(st.mtimeNs / 1_000_000_000n),
      };
      if (n.type === 'dir' && !opts.dirMtimes) n.mtime = 0;
      if (n.type === 'symlink') n.mode = 0;
      if (n.type === 'file') {
        n.size = Number(st.size);
        n.sha = await fileSha(full);
      }
      if (n.type === 'symlink') n.target = await readlink(full);
      if (n.type === 'char' || n.type === 'block') n.rdev = Number(st.rdev);
      if (n.type !== 'dir' && st.nlink > 1n) {
        const key = `${st.dev}:${st.ino}`;
        const first = inodes.get(key);
        if (first) n.link = first;
        else inodes.set(key, path);
      }
      out.push(n);
      if (n.type === 'dir') await walk(path);
    }
  };
  await walk('');
  return out;
}

export async function getxattr(path: string, key: string): Promise<Buffer | null> {
  const { stdout } = await run('python3', [
    '-c',
    'import os,sys,base64\ntry:\n  sys.stdout.write(base64.b64encode(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False)).decode())\nexcept OSError:\n  sys.stdout.write("-")',
    path,
    key,
  ]);
  return stdout === '-' ? null : Buffer.from(stdout, 'base64');
}

export async function setxattr(path: string, key: string, value: Buffer): Promise<void> {
  await run('python3', ['-c', 'import os,sys,base64\nos.setxattr(sys.argv[1], sys.argv[2], base64.b64decode(sys.argv[3]), follow_symlinks=False)', path, key, value.toString('base64')]);
}

/** Mount points whose path contains `needle` (left-overs of temporary mounts). */
export async function mountsContaining(needle: string): Promise<string[]> {
  const { readFile } = await import('node:fs/promises');
  return (await readFile('/proc/mounts', 'utf8'))
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((p) => p.includes(needle));
}
