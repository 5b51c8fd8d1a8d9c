/**
 * The local content store: blobs and in-progress ingests on disk, in containerd's layout so that existing
 * tooling recognises a Strata root:
 *
 *   <root>/blobs/<alg>/<hex>            committed blobs, read-only (0444)
 *   <root>/ingest/<sha256(ref)>/        one directory per ingest, named by the hash of its ref
 *       ref        the ref string
 *       data       the bytes received so far (its length is the resume offset)
 *       startedat  RFC 3339 timestamp
 *       updatedat  RFC 3339 timestamp (refreshed on close; the data file's mtime covers writes in between)
 *       total      expected size, only when known
 *       expected   expected digest, only when known (Strata addition; containerd ignores the file)
 *
 * It has no namespaces, labels or filters: the metadata layer adds those and delegates bytes here.
 *
 * Crash consistency:
 *  - an ingest directory is built under a temporary name (".tmp-…") and renamed into place, so a directory with
 *    a hex name always has its ref and data files; listings skip anything else;
 *  - commit renames the data file onto the blob path, so a blob path only ever holds complete, verified bytes;
 *  - abort renames the directory away (".trash-…") before deleting it, so an ingest disappears as a whole.
 * Leftover temporary and trash directories are removed when a store is opened.
 */
import { randomBytes, createHash } from 'node:crypto';
import { crashPoint } from '../core/crashpoint.js';
import { chmod, mkdir, open, readdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import {
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  outOfRange,
  unavailable,
  unknown,
} from '../core/errdefs.js';
import { allocWithHeadroom, shrinkWithHeadroom } from './headroom.js';
import { Digester, isDigestAlgorithm, isValidDigest, isValidHex, parseDigest, type DigestAlgorithm } from './digest.js';
import type { CommitOptions, ContentWriter, Digest, IngestStatus, ReadOptions, WriterOptions } from './types.js';
import { fromNanos, fromParts, now as nowTime, parseRFC3339Nano, toNanos, toRFC3339Nano, type NanoTime } from '../core/time.js';

/** What the local store knows about a blob: no labels (the metadata layer keeps those). */
export interface LocalBlobInfo {
  digest: Digest;
  size: number;
  createdAt: Date;
  updatedAt: Date;
}

export interface LocalContentStore {
  readonly root: string;
  info(digest: Digest): Promise<LocalBlobInfo>;
  exists(digest: Digest): Promise<boolean>;
  list(): Promise<LocalBlobInfo[]>;
  delete(digest: Digest): Promise<void>;
  read(digest: Digest, opts?: ReadOptions): Promise<Readable>;
  status(ref: string): Promise<IngestStatus>;
  listStatuses(): Promise<IngestStatus[]>;
  abort(ref: string): Promise<void>;
  writer(opts: WriterOptions): Promise<ContentWriter>;
  /** Path of a committed blob, for in-process consumers that need a file (e.g. the differ). */
  blobPath(digest: Digest): string;
  /** Directory of a ref's ingest (whether or not it exists), for in-process consumers (the garbage collector). */
  ingestDir(ref: string): string;
}

const IO_CHUNK = 1 << 20;
const TMP_PREFIX = '.tmp-';
const TRASH_PREFIX = '.trash-';
/** A temporary ingest directory older than this cannot belong to a creation still in progress. */
const STALE_TMP_MS = 60 * 60 * 1000;
const ingestName = /^[0-9a-f]{64}$/;

// ---------------------------------------------------------------------------------------------------------------
// Ref locks. One writer per ingest in this process. Keyed by the ingest directory (root + hash of the ref), so two
// store instances on one root exclude each other while stores on different roots do not interfere.

const locks = new Map<string, number>();

function tryLock(key: string): boolean {
  if (locks.has(key)) return false;
  locks.set(key, Date.now());
  return true;
}

function unlock(key: string): void {
  locks.delete(key);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Takes the lock, retrying briefly like containerd does (10 attempts, random back-off doubling from 1 ms), so a
 * writer opened right after another one for the same ref closes or commits does not fail spuriously.
 */
async function lockWithRetry(key: string, ref: string): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    if (tryLock(key)) return;
    await sleep(Math.floor(Math.random() * (1 << attempt)));
  }
  if (tryLock(key)) return;
  throw unavailable(`ref ${ref} locked`);
}

// ---------------------------------------------------------------------------------------------------------------
// Small file helpers.

const errCode = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | null)?.code;
const isMissing = (err: unknown) => {
  const c = errCode(err);
  return c === 'ENOENT' || c === 'ENOTDIR';
};

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
}

const randomSuffix = () => randomBytes(8).toString('hex');

/** Replaces a small file atomically (write aside, rename over), so readers never see it half written. */
async function replaceFile(path: string, content: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFile(tmp, content, { mode: 0o644 });
  await rename(tmp, path);
}

/** Writes a new small file and fsyncs it. */
async function writeSynced(path: string, content: string): Promise<void> {
  const fh = await open(path, 'wx', 0o644);
  try {
    await fh.writeFile(content);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function fsyncDir(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Creates a directory (and its parents when missing); true if it was created. Not fs.promises.mkdir's recursive
 * mode alone: on a full disk Node 20's reports ENOENT where the file system said ENOSPC, and the client would get
 * "no such file or directory" for "no space left on device".
 */
async function ensureDir(dir: string): Promise<boolean> {
  try {
    await mkdir(dir, { mode: 0o755 });
    return true;
  } catch (err) {
    if (errCode(err) === 'EEXIST') return false;
    if (errCode(err) !== 'ENOENT') throw err;
  }
  await ensureDir(dirname(dir));
  return ensureDir(dir);
}

/** An ingest's startedat/updatedat: RFC 3339 with nanoseconds (older files: milliseconds). */
function parseTime(s: string | undefined): NanoTime | undefined {
  if (s === undefined) return undefined;
  const exact = parseRFC3339Nano(s);
  if (exact) return exact;
  const t = Date.parse(s.trim());
  return Number.isNaN(t) ? undefined : fromParts(t, 0);
}

/**
 * Feeds bytes [0, size) of a file into a digester, reading 1 MiB at a time into two alternating buffers so the
 * next read runs in the thread pool while the current buffer is hashed. Returns the number of bytes hashed, which
 * is less than `size` only if the file is shorter.
 */
async function hashFile(fh: FileHandle, size: number, digester: Digester): Promise<number> {
  if (size <= 0) return 0;
  const bufs = [Buffer.allocUnsafe(Math.min(IO_CHUNK, size)), Buffer.allocUnsafe(Math.min(IO_CHUNK, size))];
  let pos = 0;
  let which = 0;
  let pending = fh.read(bufs[0]!, 0, Math.min(IO_CHUNK, size), 0);
  for (;;) {
    const { bytesRead } = await pending;
    if (bytesRead === 0) return pos;
    const buf = bufs[which]!;
    pos += bytesRead;
    which ^= 1;
    const more = pos < size;
    if (more) pending = fh.read(bufs[which]!, 0, Math.min(IO_CHUNK, size - pos), pos);
    digester.update(bytesRead === buf.length ? buf : buf.subarray(0, bytesRead));
    if (!more) return pos;
  }
}

/** Opens an ingest's data file for reading and writing. */
async function openData(path: string, flags: 'r+' | 'wx+'): Promise<FileHandle> {
  try {
    return await open(path, flags, 0o644);
  } catch (err) {
    // A crash between commit's chmod and its rename leaves a read-only data file behind; make it writable again.
    if (flags === 'r+' && errCode(err) === 'EACCES') {
      await chmod(path, 0o644);
      return open(path, flags);
    }
    throw err;
  }
}

function checkCount(name: string, n: unknown): number {
  if (n === undefined) return 0;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw invalidArgument(`invalid ${name} ${String(n)}`);
  return n;
}

// ---------------------------------------------------------------------------------------------------------------

/**
 * Open blobs, shared by concurrent and back-to-back reads of the same digest. A client reading a blob through
 * containerd's ReaderAt sends one Read call per 1 MiB; without this each call would open, stat and close the
 * file (three thread-pool round trips) for one read. A handle is closed once unused for HANDLE_IDLE_MS.
 * Safe because blobs are content-addressed and never modified: a handle to a blob deleted meanwhile still
 * reads the right bytes (and callers check the record first); its disk space is freed when the handle closes.
 */
const HANDLE_IDLE_MS = 1000;
const MAX_IDLE_HANDLES = 64;

interface BlobHandle {
  fh: FileHandle;
  size: number;
  users: number;
  idle?: NodeJS.Timeout;
  /** The chunk after the last ranged read, read ahead (see readAhead); taken by the read that starts there. */
  ahead?: { pos: number; len: number; data: Promise<Buffer | undefined> };
  /** Where the last ranged read (one that stopped before the end) stopped. */
  nextPos?: number;
}

/**
 * Read-ahead for ranged reads. containerd's ReaderAt reads a blob sequentially in one Read call per ReadAt
 * (1 MiB each, gobench's content workload, a client streaming a layer through ReaderAt): the next call's first
 * chunk is read from the file while this one's answer travels and the client asks again, so that call starts
 * sending at once instead of waiting for a thread-pool read (0.5 ms of a 1 MiB call quiet; a p90 of 10-16 ms
 * at load 15, where every thread hop waits to be scheduled; issue 12). One chunk per open blob, at most
 * MAX_READ_AHEAD chunks in memory in all; a chunk not taken is dropped when its handle closes.
 */
const MAX_READ_AHEAD = 8;
let readAheadChunks = 0;

function readAhead(h: BlobHandle, pos: number, size: number): void {
  if (h.ahead || pos >= h.size || readAheadChunks >= MAX_READ_AHEAD) return;
  const len = Math.min(IO_CHUNK, size, h.size - pos);
  const buf = allocWithHeadroom(len);
  readAheadChunks++;
  const data = h.fh.read(buf, 0, len, pos).then(
    ({ bytesRead }) => (bytesRead === len ? buf : undefined),
    () => undefined,
  );
  h.ahead = { pos, len, data };
  // Counted until taken or dropped with its handle.
}

/** The read-ahead chunk of `h` if it starts at `pos` and holds `len` bytes or more: handed over once. */
function takeAhead(h: BlobHandle, pos: number, len: number): Promise<Buffer | undefined> | undefined {
  const a = h.ahead;
  if (!a || a.pos !== pos || a.len < len) return undefined;
  h.ahead = undefined;
  readAheadChunks--;
  return a.len === len ? a.data : a.data.then((buf) => buf && shrinkWithHeadroom(buf, len));
}

function dropAhead(h: BlobHandle): void {
  if (!h.ahead) return;
  h.ahead = undefined;
  readAheadChunks--;
}

class BlobHandles {
  private readonly open = new Map<string, Promise<BlobHandle>>();
  private idleCount = 0;

  async acquire(path: string): Promise<BlobHandle> {
    let p = this.open.get(path);
    if (!p) {
      p = (async () => {
        const fh = await open(path, 'r');
        try {
          return { fh, size: (await fh.stat()).size, users: 0 };
        } catch (err) {
          await fh.close().catch(() => undefined);
          throw err;
        }
      })();
      this.open.set(path, p);
      p.catch(() => this.open.delete(path));
    }
    const h = await p;
    if (h.idle) {
      clearTimeout(h.idle);
      h.idle = undefined;
      this.idleCount--;
    }
    h.users++;
    return h;
  }

  release(path: string, h: BlobHandle): void {
    if (--h.users > 0) return;
    const close = () => {
      if (h.idle) this.idleCount--;
      h.idle = undefined;
      if (h.users > 0) return;
      if (this.open.get(path) !== undefined) this.open.delete(path);
      dropAhead(h);
      void h.fh.close().catch(() => undefined);
    };
    if (this.idleCount >= MAX_IDLE_HANDLES) return close();
    h.idle = setTimeout(close, HANDLE_IDLE_MS);
    h.idle.unref();
    this.idleCount++;
  }
}

class Store implements LocalContentStore {
  readonly root: string;
  private readonly blobsRoot: string;
  private readonly ingestRoot: string;
  private readonly handles = new BlobHandles();

  constructor(root: string) {
    this.root = root;
    this.blobsRoot = join(root, 'blobs');
    this.ingestRoot = join(root, 'ingest');
  }

  blobPath(digest: Digest): string {
    const { algorithm, hex } = parseDigest(digest);
    return join(this.blobsRoot, algorithm, hex);
  }

  /** The ingest directory of a ref: named by the ref's SHA-256, so no ref can reach outside ingest/. */
  ingestDir(ref: string): string {
    return join(this.ingestRoot, createHash('sha256').update(ref, 'utf8').digest('hex'));
  }

  async info(digest: Digest): Promise<LocalBlobInfo> {
    const p = this.blobPath(digest);
    try {
      return blobInfo(digest, await stat(p));
    } catch (err) {
      if (isMissing(err)) throw notFound(`content ${digest}`);
      throw err;
    }
  }

  async exists(digest: Digest): Promise<boolean> {
    const p = this.blobPath(digest);
    try {
      await stat(p);
      return true;
    } catch (err) {
      if (isMissing(err)) return false;
      throw err;
    }
  }

  async list(): Promise<LocalBlobInfo[]> {
    let algs;
    try {
      algs = await readdir(this.blobsRoot, { withFileTypes: true });
    } catch (err) {
      if (isMissing(err)) return [];
      throw err;
    }
    const out: LocalBlobInfo[] = [];
    for (const a of algs) {
      if (!a.isDirectory() || !isDigestAlgorithm(a.name)) continue;
      const alg: DigestAlgorithm = a.name;
      const dir = join(this.blobsRoot, alg);
      const names = (await readdir(dir)).filter((n) => isValidHex(alg, n));
      const infos = await Promise.all(
        names.map(async (n) => {
          try {
            const st = await stat(join(dir, n));
            return st.isFile() ? blobInfo(`${alg}:${n}`, st) : undefined;
          } catch (err) {
            if (isMissing(err)) return undefined; // deleted while listing
            throw err;
          }
        }),
      );
      for (const i of infos) if (i) out.push(i);
    }
    return out.sort((x, y) => (x.digest < y.digest ? -1 : x.digest > y.digest ? 1 : 0));
  }

  async delete(digest: Digest): Promise<void> {
    const p = this.blobPath(digest);
    try {
      await unlink(p);
    } catch (err) {
      if (isMissing(err)) throw notFound(`content ${digest}`);
      throw err;
    }
  }

  async read(digest: Digest, opts: ReadOptions = {}): Promise<Readable> {
    const offset = checkCount('read offset', opts.offset);
    const size = checkCount('read size', opts.size);
    const p = this.blobPath(digest);
    let h: BlobHandle;
    try {
      h = await this.handles.acquire(p);
    } catch (err) {
      if (isMissing(err)) throw notFound(`content ${digest}`);
      throw err;
    }
    const release = () => this.handles.release(p, h);
    if (offset > h.size) {
      release();
      throw outOfRange(`read past object length ${h.size} bytes`);
    }
    const end = size > 0 ? Math.min(offset + size, h.size) : h.size;
    if (end <= offset) {
      release();
      return new Readable({
        read() {
          this.push(null);
        },
      });
    }
    return blobStream(h, offset, end, release);
  }

  /** Reads an ingest directory; undefined when it is not a complete ingest (missing data or ref). */
  async readIngest(dir: string): Promise<IngestStatus | undefined> {
    let st;
    try {
      st = await stat(join(dir, 'data'), { bigint: true });
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw err;
    }
    const [ref, startedS, updatedS, totalS, expectedS] = await Promise.all(
      ['ref', 'startedat', 'updatedat', 'total', 'expected'].map((f) => readOptional(join(dir, f))),
    );
    if (!ref) return undefined;
    const mtime = fromNanos(st.mtimeNs);
    const startedAt = parseTime(startedS) ?? mtime;
    // updatedat is only refreshed on close; a more recent write shows in the data file's mtime.
    const updated = parseTime(updatedS) ?? startedAt;
    const updatedAt = toNanos(updated) >= st.mtimeNs ? updated : mtime;
    const total = totalS !== undefined && /^\d+$/.test(totalS.trim()) ? Number(totalS.trim()) : 0;
    const expected = expectedS !== undefined && isValidDigest(expectedS.trim()) ? expectedS.trim() : '';
    return {
      ref,
      offset: Number(st.size),
      total: Number.isSafeInteger(total) ? total : 0,
      expected,
      startedAt,
      updatedAt,
    };
  }

  async status(ref: string): Promise<IngestStatus> {
    const st = await this.readIngest(this.ingestDir(ref));
    if (!st || st.ref !== ref) throw notFound(`ingest ref "${ref}"`);
    return st;
  }

  async listStatuses(): Promise<IngestStatus[]> {
    const names = (await readdir(this.ingestRoot)).filter((n) => ingestName.test(n));
    const all = await Promise.all(names.map((n) => this.readIngest(join(this.ingestRoot, n))));
    const out = all.filter((s): s is IngestStatus => s !== undefined);
    return out.sort((x, y) => (x.ref < y.ref ? -1 : x.ref > y.ref ? 1 : 0));
  }

  async abort(ref: string): Promise<void> {
    const dir = this.ingestDir(ref);
    // As containerd's: the ingest goes even under an open writer (which keeps its lock and its open file, so its
    // writes land nowhere and its commit fails). The lock is taken only when free, so that no writer starts on
    // this ref while the directory is being removed.
    const locked = tryLock(dir);
    try {
      if (!(await this.removeIngestDir(dir, true))) throw notFound(`ingest ref "${ref}"`);
    } finally {
      if (locked) unlock(dir);
    }
  }

  /** Moves an ingest directory out of the way, then deletes it. False if it did not exist. */
  async removeIngestDir(dir: string, aborting = false): Promise<boolean> {
    const trash = join(this.ingestRoot, `${TRASH_PREFIX}${randomSuffix()}`);
    try {
      if (aborting) crashPoint('content.abort.before-rename');
      await rename(dir, trash);
      if (aborting) crashPoint('content.abort.after-rename');
    } catch (err) {
      if (isMissing(err)) return false;
      throw err;
    }
    await rm(trash, { recursive: true, force: true });
    if (aborting) crashPoint('content.abort.after-remove');
    return true;
  }

  async writer(opts: WriterOptions): Promise<ContentWriter> {
    const ref = opts?.ref;
    if (typeof ref !== 'string' || ref === '') throw invalidArgument('ref must not be empty');
    const total = checkCount('total', opts.total);
    const expected = opts.expected ?? '';
    if (expected) parseDigest(expected);

    const dir = this.ingestDir(ref);
    await lockWithRetry(dir, ref);
    try {
      // Like containerd: nothing to ingest when the expected content is already here.
      if (expected && (await this.exists(expected))) throw alreadyExists(`content ${expected}`);
      return await this.openIngest(dir, ref, total, expected);
    } catch (err) {
      unlock(dir);
      throw err;
    }
  }

  /** Resumes the ingest in `dir` or starts a new one. The caller holds the lock. */
  private async openIngest(dir: string, ref: string, total: number, expected: Digest): Promise<LocalWriter> {
    const existing = await this.readIngest(dir);
    let resumable = existing !== undefined && existing.ref === ref;
    // containerd's rule: a total that contradicts the stored one means a different object; start over. Strata
    // applies the same rule to the expected digest, which it stores.
    if (existing && resumable) {
      if (total > 0 && existing.total > 0 && total !== existing.total) resumable = false;
      if (expected && existing.expected && expected !== existing.expected) resumable = false;
    }

    if (existing && resumable) {
      // Facts the first writer did not know are recorded; facts it did know are kept.
      const newTotal = existing.total || total;
      const newExpected = existing.expected || expected;
      const resume = async (): Promise<LocalWriter> => {
        if (newTotal !== existing.total) await replaceFile(join(dir, 'total'), String(newTotal));
        if (newExpected !== existing.expected) await replaceFile(join(dir, 'expected'), newExpected);
        const fh = await openData(join(dir, 'data'), 'r+');
        try {
          const digester = new Digester(newExpected ? parseDigest(newExpected).algorithm : 'sha256');
          const size = (await fh.stat()).size;
          const offset = await hashFile(fh, size, digester);
          if (offset !== size) await fh.truncate(offset); // shrank underneath us; keep what was hashed
          return new LocalWriter(this, dir, ref, fh, digester, offset, newTotal, newExpected, existing.startedAt, existing.updatedAt);
        } catch (err) {
          await fh.close();
          throw err;
        }
      };
      try {
        return await resume();
      } catch (err) {
        // An abort removed the ingest after it was read (abort does not wait for the lock, as containerd's): its
        // files are gone, so this writer starts a new one (a raw ENOENT reached clients as an unknown error).
        if (!isMissing(err)) throw err;
      }
    }

    // Whatever is in the way (a different object, a half-built directory from another tool, leftovers of a
    // commit interrupted after its rename) is discarded.
    await this.removeIngestDir(dir);
    const startedAt = nowTime();
    const tmp = join(this.ingestRoot, `${TMP_PREFIX}${randomSuffix()}`);
    await mkdir(tmp, { mode: 0o755 });
    let fh: FileHandle | undefined;
    try {
      const ts = toRFC3339Nano(startedAt);
      const files: Promise<void>[] = [
        writeSynced(join(tmp, 'ref'), ref),
        writeFile(join(tmp, 'startedat'), ts),
        writeFile(join(tmp, 'updatedat'), ts),
      ];
      if (total > 0) files.push(writeFile(join(tmp, 'total'), String(total)));
      if (expected) files.push(writeFile(join(tmp, 'expected'), expected));
      // Let everything settle before judging, so a failure cannot leak the data file's handle.
      const [opened, ...written] = await Promise.allSettled([openData(join(tmp, 'data'), 'wx+'), ...files]);
      if (opened.status === 'fulfilled') fh = opened.value;
      else throw opened.reason;
      for (const r of written) if (r.status === 'rejected') throw r.reason;
      // The handle stays valid across the rename of its directory.
      crashPoint('content.ingest.before-rename');
      await rename(tmp, dir);
      crashPoint('content.ingest.after-rename');
    } catch (err) {
      await fh?.close().catch(() => undefined);
      await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
    const digester = new Digester(expected ? parseDigest(expected).algorithm : 'sha256');
    return new LocalWriter(this, dir, ref, fh, digester, 0, total, expected, startedAt, startedAt);
  }

  /** Removes what interrupted operations leave behind. Best effort. */
  async cleanup(): Promise<void> {
    let entries;
    try {
      entries = await readdir(this.ingestRoot, { withFileTypes: true });
    } catch {
      return;
    }
    const now = Date.now();
    await Promise.all(
      entries.map(async (e) => {
        const p = join(this.ingestRoot, e.name);
        try {
          if (e.name.startsWith(TRASH_PREFIX)) {
            await rm(p, { recursive: true, force: true });
          } else if (e.name.startsWith(TMP_PREFIX)) {
            // Another store instance on this root may be building it right now: only remove old ones.
            if (now - (await stat(p)).mtimeMs > STALE_TMP_MS) await rm(p, { recursive: true, force: true });
          } else if (ingestName.test(e.name) && e.isDirectory()) {
            // An ingest without data is what a commit interrupted after its rename leaves.
            if (!locks.has(p) && !(await this.hasData(p))) await this.removeIngestDir(p);
          }
        } catch {
          // best effort
        }
      }),
    );
  }

  private async hasData(dir: string): Promise<boolean> {
    try {
      await stat(join(dir, 'data'));
      return true;
    } catch (err) {
      if (isMissing(err)) return false;
      throw err;
    }
  }
}

/**
 * Streams [start, end) of an open blob in IO_CHUNK pieces, each read into a buffer with headroom (see
 * headroom.ts) so the gRPC layer can frame it without a copy. The stream releases the handle once, at its end
 * or when the consumer destroys it early.
 */
function blobStream(h: BlobHandle, start: number, end: number, release: () => void): Readable {
  const fh = h.fh;
  let pos = start;
  let closed = false;
  // A ranged read that starts where the previous one stopped: the next is likely to follow (see readAhead).
  const sequential = end < h.size && h.nextPos === start;
  if (end < h.size) h.nextPos = end;
  const readChunk = (at: number, want: number): Promise<Buffer> => {
    const buf = allocWithHeadroom(want);
    return fh.read(buf, 0, want, at).then(({ bytesRead }) => {
      if (bytesRead === 0) throw new Error(`blob shorter than expected at offset ${at}`);
      return bytesRead === want ? buf : shrinkWithHeadroom(buf, bytesRead);
    });
  };
  const close = async () => {
    if (closed) return;
    closed = true;
    release();
  };
  return new Readable({
    highWaterMark: 2,
    objectMode: true,
    read() {
      const want = Math.min(IO_CHUNK, end - pos);
      if (want <= 0) {
        void close().then(() => this.push(null));
        return;
      }
      const at = pos;
      const ahead = takeAhead(h, at, want);
      const chunk = ahead ? ahead.then((buf) => buf ?? readChunk(at, want)) : readChunk(at, want);
      if (sequential && at + want === end) readAhead(h, end, end - start);
      chunk.then(
        (buf) => {
          pos += buf.length;
          this.push(buf);
        },
        (err: unknown) => this.destroy(err as Error),
      );
    },
    destroy(err, cb) {
      close().then(() => cb(err), cb);
    },
  });
}

function blobInfo(digest: Digest, st: { size: number; mtimeMs: number }): LocalBlobInfo {
  // containerd reports the mtime (set at commit) as the creation time. Its update time is the atime, which
  // its labelled store rewrites on label updates; this store has no labels, and reads would move the atime,
  // so both are the commit time here.
  // Rounded: the commit stamps whole milliseconds, which come back from the file system as e.g. x.999999 ms.
  const ms = Math.round(st.mtimeMs);
  return { digest, size: st.size, createdAt: new Date(ms), updatedAt: new Date(ms) };
}

// ---------------------------------------------------------------------------------------------------------------

class LocalWriter implements ContentWriter {
  /** Undefined once closed or committed. */
  private fh: FileHandle | undefined;
  private off: number;
  private updatedAt: Date;
  private persistedUpdatedAt: Date;
  /** Operations run one at a time in call order, even when a caller does not await each one. */
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: Store,
    private readonly dir: string,
    readonly ref: string,
    fh: FileHandle,
    private digester: Digester,
    offset: number,
    private readonly total: number,
    private readonly expected: Digest,
    private readonly startedAt: Date,
    updatedAt: Date,
  ) {
    this.fh = fh;
    this.off = offset;
    this.updatedAt = updatedAt;
    this.persistedUpdatedAt = updatedAt;
  }

  get offset(): number {
    return this.off;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.tail.then(fn);
    this.tail = p.catch(() => undefined);
    return p;
  }

  private handle(): FileHandle {
    if (!this.fh) throw failedPrecondition(`writer for ref ${this.ref} is closed`);
    return this.fh;
  }

  async status(): Promise<IngestStatus> {
    return {
      ref: this.ref,
      offset: this.off,
      total: this.total,
      expected: this.expected,
      startedAt: this.startedAt,
      updatedAt: this.updatedAt,
    };
  }

  digest(): Digest {
    return this.digester.digest();
  }

  write(chunk: Uint8Array): Promise<void> {
    return this.serial(async () => {
      const fh = this.handle();
      const len = chunk.byteLength;
      if (len === 0) return;
      const pos = this.off;
      const before = this.digester.clone();
      // Hash on this thread while the thread pool writes: both only read the chunk.
      const writing = fh.write(chunk, 0, len, pos);
      this.digester.update(chunk);
      try {
        let done = (await writing).bytesWritten;
        while (done < len) {
          const n = (await fh.write(chunk, done, len - done, pos + done)).bytesWritten;
          if (n <= 0) throw new Error(`short write to ingest ${this.ref}`);
          done += n;
        }
      } catch (err) {
        // Leave the ingest as it was before this chunk: the digest must describe exactly the data file.
        this.digester = before;
        await fh.truncate(pos).catch(() => undefined);
        throw err;
      }
      this.off = pos + len;
      this.updatedAt = nowTime();
    });
  }

  truncate(size: number): Promise<void> {
    return this.serial(async () => {
      const fh = this.handle();
      if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || size > this.off) {
        throw invalidArgument(`cannot truncate ingest ${this.ref} to ${String(size)} bytes: ${this.off} written`);
      }
      await fh.truncate(size);
      const digester = new Digester(this.digester.algorithm);
      const hashed = await hashFile(fh, size, digester);
      this.digester = digester;
      this.off = hashed;
      this.updatedAt = nowTime();
    });
  }

  /**
   * Like containerd, a commit ends the writer whatever its outcome: the file is closed and the ref lock released.
   * On a size or digest mismatch the ingest stays on disk, so a new writer can resume or truncate it.
   */
  commit(size: number, expected?: Digest, _opts?: CommitOptions): Promise<void> {
    return this.serial(async () => {
      const fh = this.fh;
      if (!fh) throw failedPrecondition('cannot commit on closed writer');
      this.fh = undefined;
      try {
        await this.commitData(fh, size, expected);
      } finally {
        await fh.close().catch(() => undefined);
        unlock(this.dir);
      }
    });
  }

  private async commitData(fh: FileHandle, size: number, expectedArg: Digest | undefined): Promise<void> {
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
      throw invalidArgument(`invalid commit size ${String(size)}`);
    }
    const want = expectedArg || this.expected;
    const wantAlg = want ? parseDigest(want).algorithm : this.digester.algorithm;

    // The file is the truth: if it differs from what this writer believes, re-read it.
    const onDisk = (await fh.stat()).size;
    if (onDisk !== this.off || wantAlg !== this.digester.algorithm) {
      const digester = new Digester(wantAlg);
      this.off = await hashFile(fh, onDisk, digester);
      this.digester = digester;
    }
    if (size > 0 && size !== this.off) {
      throw failedPrecondition(`unexpected commit size ${this.off}, expected ${size}`);
    }
    const actual = this.digester.digest();
    if (want && want !== actual) {
      throw failedPrecondition(`unexpected commit digest ${actual}, expected ${want}`);
    }

    const target = this.store.blobPath(actual);
    const targetDir = dirname(target);
    const created = await ensureDir(targetDir);
    if (await this.store.exists(actual)) {
      await this.store.removeIngestDir(this.dir);
      throw alreadyExists(`content ${actual}`);
    }
    crashPoint('content.commit.before-fsync');
    await fh.sync();
    crashPoint('content.commit.after-fsync');
    // Read-only and stamped with the commit time before it becomes visible under its digest.
    await fh.chmod(0o444);
    const now = nowTime();
    await fh.utimes(now, now);
    try {
      crashPoint('content.commit.before-rename');
      await rename(join(this.dir, 'data'), target);
      crashPoint('content.commit.after-rename');
    } catch (err) {
      await fh.chmod(0o644).catch(() => undefined);
      // The ingest was aborted under this writer: containerd's rename fails the same way (an unknown error).
      if (isMissing(err)) throw unknown(`failed to commit ingest ref ${JSON.stringify(this.ref)}: the ingest was aborted`);
      throw err;
    }
    await fsyncDir(targetDir);
    if (created) await fsyncDir(dirname(targetDir)).catch(() => undefined);
    crashPoint('content.commit.after-fsync-dir');
    crashPoint('content.commit.before-remove-ingest');
    await this.store.removeIngestDir(this.dir).catch(() => undefined);
    crashPoint('content.commit.after-remove-ingest');
    this.updatedAt = now;
  }

  /** Releases the lock; the ingest stays for a later writer. Idempotent, and a no-op after commit. */
  close(): Promise<void> {
    return this.serial(async () => {
      const fh = this.fh;
      if (!fh) return;
      this.fh = undefined;
      try {
        await fh.sync();
      } finally {
        await fh.close().catch(() => undefined);
        if (this.updatedAt !== this.persistedUpdatedAt) {
          await replaceFile(join(this.dir, 'updatedat'), toRFC3339Nano(this.updatedAt)).catch(
            () => undefined,
          );
        }
        unlock(this.dir);
      }
    });
  }
}

/** Opens (creating if needed) a local content store rooted at `root`, e.g. <daemon root>/io.containerd.content.v1.content. */
export async function openLocalContentStore(root: string): Promise<LocalContentStore> {
  const abs = resolve(root);
  await mkdir(join(abs, 'blobs'), { recursive: true, mode: 0o755 });
  await mkdir(join(abs, 'ingest'), { recursive: true, mode: 0o755 });
  const store = new Store(abs);
  await store.cleanup();
  return store;
}
