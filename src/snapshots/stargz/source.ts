/**
 * An eStargz layer as a FUSE LayerSource (runs in the lazyfs process, lazyfs.ts): the tree comes from the TOC at
 * once (no file data needed), a file's bytes from its chunks, each fetched once with a bounded Range request,
 * verified against its TOC digest (EstargzLayer.readChunk never returns bad bytes) and kept on disk under the
 * layer's cache directory, from where every later read is served.
 *
 * Whiteouts are given in overlay's format, so that the mount can be a lower of an overlay: `.wh.NAME` becomes a
 * character device 0:0 named NAME, `.wh..wh..opq` the `trusted.overlay.opaque = y` attribute of its directory.
 *
 * Fetch order: the prefetch landmark's span (the files the image's author put first) in one request right after
 * the mount, then the rest of the layer in the background, a few chunks at a time (a shared limit for every
 * layer of the process), after a delay so that the files a container reads at start come first.
 */
import { mkdirSync, openSync, closeSync, readSync, renameSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { EstargzLayer, FileChunk, ReadAt, TocEntry } from '../../estargz/index.js';
import { NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME } from '../../estargz/index.js';
import type { LayerNode, LayerSource } from '../../fuse/index.js';
import type { Logger } from '../../log/index.js';

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_WHITEOUT = '.wh..wh..opq';

/** The TOC's name cleaned: no leading './' or '/', no trailing '/', no empty or '.' components. */
export function cleanTocName(name: string): string {
  return name
    .split('/')
    .filter((c) => c !== '' && c !== '.')
    .join('/');
}

/** Runs at most `limit` tasks at once (the background fetches of every layer of a lazyfs process share one). */
export class TaskLimit {
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly limit: number) {}
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.running >= this.limit) await new Promise<void>((r) => this.waiting.push(r));
    else this.running++;
    try {
      return await task();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }
}

export interface FetchPolicy {
  /** Fetch the prefetch landmark's span right after the mount. */
  prefetch: boolean;
  /** Fetch every other chunk in the background. */
  background: boolean;
  /** Wait this long after the mount (and the prefetch) before the background fetch starts. */
  backgroundDelayMs: number;
  /** Shared by every layer of the process: most background chunk fetches at once. */
  backgroundLimit: TaskLimit;
}

export interface LayerStats {
  /** Chunks in the layer, and how many are in the cache. */
  chunks: number;
  cached: number;
  /** Bytes read from the registry for this layer (Range requests). */
  fetchedBytes: number;
  prefetchDone: boolean;
  backgroundDone: boolean;
}

interface FileRef {
  path: string;
  chunks?: FileChunk[];
}

export class EstargzSource implements LayerSource {
  readonly root: LayerNode;
  private readonly files = new Map<LayerNode, FileRef>();
  /** Chunks being fetched, by cache name: concurrent readers share one request. */
  private readonly inflight = new Map<string, Promise<string>>();
  private readonly allChunks: FileChunk[] = [];
  private cachedCount = 0;
  private fetchedBytes = 0;
  private prefetchDone = false;
  private backgroundDone = false;
  private closed = false;
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(
    private readonly layer: EstargzLayer,
    private readonly cacheDir: string,
    private readonly log: Logger,
  ) {
    mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
    this.root = buildTree(layer, this.files);
    const seen = new Set<string>();
    for (const ref of new Set(this.files.values())) {
      for (const c of this.chunksOf(ref)) {
        const name = cacheName(c);
        if (seen.has(name)) continue;
        seen.add(name);
        this.allChunks.push(c);
        if (existsSync(join(this.cacheDir, name))) this.cachedCount++;
      }
    }
    this.allChunks.sort((a, b) => a.blobOffset - b.blobOffset);
  }

  /** Counts bytes the readAt of this layer fetched (lazyfs wraps it). */
  noteFetched(n: number): void {
    this.fetchedBytes += n;
  }

  stats(): LayerStats {
    return {
      chunks: this.allChunks.length,
      cached: this.cachedCount,
      fetchedBytes: this.fetchedBytes,
      prefetchDone: this.prefetchDone,
      backgroundDone: this.backgroundDone,
    };
  }

  private chunksOf(ref: FileRef): FileChunk[] {
    ref.chunks ??= this.layer.chunks(ref.path);
    return ref.chunks;
  }

  async read(node: LayerNode, offset: number, length: number): Promise<Buffer> {
    const ref = this.files.get(node);
    if (!ref) throw new Error('not a regular file of this layer');
    const end = Math.min(node.size, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    const parts: Buffer[] = [];
    for (const c of this.chunksOf(ref)) {
      const cEnd = c.fileOffset + c.size;
      if (cEnd <= offset || c.fileOffset >= end) continue;
      const path = await this.ensureChunk(c);
      const from = Math.max(offset, c.fileOffset) - c.fileOffset;
      const to = Math.min(end, cEnd) - c.fileOffset;
      parts.push(readRange(path, from, to - from));
    }
    return Buffer.concat(parts);
  }

  /** The chunk's cache file, fetched and verified first when it is not there. */
  private ensureChunk(c: FileChunk): Promise<string> {
    const name = cacheName(c);
    const path = join(this.cacheDir, name);
    const pending = this.inflight.get(name);
    if (pending) return pending;
    if (existsSync(path)) return Promise.resolve(path);
    const p = (async () => {
      const bytes = await this.layer.readChunk(c);
      const tmp = join(this.cacheDir, `.tmp-${randomBytes(6).toString('hex')}`);
      writeFileSync(tmp, bytes, { mode: 0o600 });
      renameSync(tmp, path);
      this.cachedCount++;
      return path;
    })();
    this.inflight.set(name, p);
    p.then(
      () => this.inflight.delete(name),
      () => this.inflight.delete(name),
    );
    return p;
  }

  /**
   * Starts the fetch policy: the prefetch span first (one Range request through `span`, then every chunk in it
   * verified and cached from memory), then the background fetch after its delay.
   */
  start(policy: FetchPolicy, span: SpanReader): void {
    void (async () => {
      try {
        const size = this.layer.prefetchSize;
        if (policy.prefetch && size > 0) {
          await span.hold(0, size);
          try {
            const inSpan = this.allChunks.filter((c) => c.blobOffset + c.blobLength <= size);
            await Promise.all(inSpan.map((c) => this.ensureChunk(c)));
          } finally {
            span.release();
          }
        }
        this.prefetchDone = true;
      } catch (err) {
        this.log.warn('lazyfs: prefetch failed', { error: err });
      }
      if (!policy.background || this.closed) return;
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.timers.delete(t);
          resolve();
        }, policy.backgroundDelayMs);
        this.timers.add(t);
      });
      try {
        for (const c of this.allChunks) {
          if (this.closed) return;
          if (existsSync(join(this.cacheDir, cacheName(c)))) continue;
          await policy.backgroundLimit.run(() => (this.closed ? Promise.resolve('') : this.ensureChunk(c)));
        }
        this.backgroundDone = true;
      } catch (err) {
        if (!this.closed) this.log.warn('lazyfs: background fetch stopped', { error: err });
      }
    })();
  }

  /** Stops the background work (the mount is going away). */
  close(): void {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  /** Drops the cache directory (after close, the layer removed). */
  dropCache(): void {
    rmSync(this.cacheDir, { recursive: true, force: true });
  }
}

/** A chunk's file name in the cache: where its gzip member starts in the blob (unique within a layer). */
function cacheName(c: FileChunk): string {
  return `${c.blobOffset}.${c.innerOffset}.${c.fileOffset}`;
}

function readRange(path: string, position: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, buf, done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
    return done === length ? buf : buf.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

/**
 * A ReadAt that serves ranges inside a span held in memory (the prefetch span, read in one request), and asks
 * `fetch` for anything else.
 */
export class SpanReader {
  private span: { offset: number; data: Buffer } | undefined;
  constructor(private readonly fetch: ReadAt) {}
  readonly readAt: ReadAt = async (offset, length) => {
    const s = this.span;
    if (s && offset >= s.offset && offset + length <= s.offset + s.data.length) {
      return s.data.subarray(offset - s.offset, offset - s.offset + length);
    }
    return this.fetch(offset, length);
  };
  async hold(offset: number, length: number): Promise<void> {
    this.span = { offset, data: await this.fetch(offset, length) };
  }
  release(): void {
    this.span = undefined;
  }
}

const parseMtime = (s: string | undefined): number => {
  if (!s) return 0;
  const t = Date.parse(s);
  return Number.isFinite(t) ? t : 0;
};

/**
 * The node tree of a layer from its TOC. Directories a name implies without an entry of their own are 0755
 * root (as tar extraction makes them). Regular files are recorded in `files` with the path their chunks are
 * found under; a hard link is the same node under another name.
 */
function buildTree(layer: EstargzLayer, files: Map<LayerNode, FileRef>): LayerNode {
  let ino = 1;
  const newDir = (): LayerNode => ({ ino: ino++, type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtimeMs: 0, nlink: 2, xattrs: new Map(), children: new Map() });
  const root = newDir();
  const byPath = new Map<string, LayerNode>([['', root]]);
  const dirOf = (path: string): LayerNode => {
    const found = byPath.get(path);
    if (found && found.type === 'dir') return found;
    const i = path.lastIndexOf('/');
    const parent = dirOf(i < 0 ? '' : path.slice(0, i));
    const d = newDir();
    if (found) {
      // A non-directory replaced by a directory of the same name (a later entry wins, as in tar extraction).
      parent.children!.delete(path.slice(i + 1));
    }
    parent.children!.set(path.slice(i + 1), d);
    parent.nlink++;
    byPath.set(path, d);
    return d;
  };
  const attrs = (e: TocEntry, n: LayerNode): void => {
    n.mode = (e.mode ?? n.mode) & 0o7777;
    n.uid = e.uid ?? 0;
    n.gid = e.gid ?? 0;
    n.mtimeMs = parseMtime(e.modtime);
    for (const [k, v] of Object.entries(e.xattrs ?? {})) n.xattrs.set(k, Buffer.from(v, 'base64'));
  };
  const hardlinks: { path: string; target: string }[] = [];
  for (const e of layer.toc.entries) {
    if (e.type === 'chunk') continue;
    const path = cleanTocName(e.name);
    if (path === '' && e.type === 'dir') {
      attrs(e, root);
      continue;
    }
    if (path === '' || path.split('/').includes('..')) continue;
    if (path === TOC_TAR_NAME || path === PREFETCH_LANDMARK || path === NO_PREFETCH_LANDMARK) continue;
    const slash = path.lastIndexOf('/');
    const dirPath = slash < 0 ? '' : path.slice(0, slash);
    const base = path.slice(slash + 1);
    const parent = dirOf(dirPath);
    if (base === OPAQUE_WHITEOUT) {
      parent.xattrs.set('trusted.overlay.opaque', Buffer.from('y'));
      continue;
    }
    if (base.startsWith(WHITEOUT_PREFIX)) {
      const name = base.slice(WHITEOUT_PREFIX.length);
      parent.children!.set(name, { ino: ino++, type: 'char', mode: 0, uid: 0, gid: 0, size: 0, mtimeMs: parseMtime(e.modtime), nlink: 1, devMajor: 0, devMinor: 0, xattrs: new Map() });
      continue;
    }
    if (e.type === 'dir') {
      attrs(e, dirOf(path));
      continue;
    }
    if (e.type === 'hardlink') {
      hardlinks.push({ path, target: cleanTocName(e.linkName ?? '') });
      continue;
    }
    const node: LayerNode = { ino: ino++, type: e.type, mode: 0, uid: 0, gid: 0, size: 0, mtimeMs: 0, nlink: 1, xattrs: new Map() };
    attrs(e, node);
    if (e.type === 'reg') {
      node.size = e.size ?? 0;
      files.set(node, { path });
    } else if (e.type === 'symlink') {
      node.linkName = e.linkName ?? '';
      node.size = Buffer.byteLength(node.linkName);
    } else if (e.type === 'char' || e.type === 'block') {
      node.devMajor = e.devMajor ?? 0;
      node.devMinor = e.devMinor ?? 0;
    }
    const old = parent.children!.get(base);
    if (old?.type === 'dir') parent.nlink--;
    parent.children!.set(base, node);
    byPath.set(path, node);
  }
  for (const h of hardlinks) {
    const target = byPath.get(h.target);
    if (!target || target.type === 'dir') continue;
    const slash = h.path.lastIndexOf('/');
    const parent = dirOf(slash < 0 ? '' : h.path.slice(0, slash));
    parent.children!.set(h.path.slice(slash + 1), target);
    target.nlink++;
    byPath.set(h.path, target);
  }
  return root;
}
