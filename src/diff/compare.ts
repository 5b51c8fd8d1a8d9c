/**
 * Computing the layer between two filesystem trees, as containerd 1.6's walking differ does (continuity's
 * fs.Changes feeding archive's ChangeWriter), plus the overlay fast path containerd 1.6 does not have.
 *
 * Changes:
 *  - double walk (`walkChanges`): both trees are walked in the same order (pre-order, names sorted by byte
 *    value, `/` lowest) and merged. A path only in the lower tree is deleted, only in the upper tree added,
 *    in both compared with continuity's sameFile: same inode; else type+mode, uid, gid, rdev and the
 *    security.capability xattr must match, and for non-directories the size and the mtime in seconds; when
 *    both mtimes have a nanosecond part, equal nanoseconds mean "same" without reading anything and different
 *    ones mean "modified"; when both are whole seconds (a filesystem without sub-second times) the contents
 *    are compared (symlink targets, or the file bytes, streamed). Directories ignore mtime. So a file that was
 *    only touched is part of the layer, as in containerd: its new mtime is a change the layer must carry.
 *  - overlay fast path (`overlayChanges`): when the upper tree is an overlay whose lower layers are exactly the
 *    lower tree, only the upperdir is walked: 0/0 character devices are deletions, directories with the opaque
 *    xattr (trusted.overlay.opaque=y, user.overlay.opaque=y with `userxattr`) get a `.wh..wh..opq` entry and
 *    everything below them is added; other entries are compared with the lower tree as above (an overlay
 *    copy-up of an unchanged file is not a change). Not taken when the overlay may hold metacopy files or
 *    redirected directories (metacopy=on, redirect_dir=on, or those as the kernel's defaults).
 *
 * The tar (`changesTar`) is what containerd's ChangeWriter writes: entries in walk order, every parent directory
 * of an entry included before it (once), whiteouts `.wh.<name>` as empty regular files, hard links within the
 * upper tree as link entries to the first name written, security.capability as a PAX xattr record, sockets
 * skipped, mtimes truncated to seconds, no atime/ctime, no user/group names. Headers are written here rather
 * than with tar-stream's pack, which cannot carry binary PAX values and silently clamps uid/gid above 2^18:
 * ustar fields with PAX records (path, linkpath, uid, gid, size, mtime, SCHILY.xattr.*) for what does not fit,
 * as Go's archive/tar does in its PAX format.
 *
 * Node has no xattr API: xattrs are read in batches through one python3 helper per comparison (the applier
 * writes them the same way). Without python3, capabilities are neither compared nor written and the overlay
 * fast path is not taken (opaque directories could not be seen).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { BigIntStats } from 'node:fs';
import { constants } from 'node:fs';
import { lstat, open, readdir, readFile, readlink, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { notImplemented, StrataError, unknown } from '../core/errdefs.js';
import { readonlyMounts, withTempMount } from '../mount/index.js';

export { readonlyMounts };
import type { Mount } from '../core/mount.js';

export type ChangeKind = 'add' | 'modify' | 'delete' | 'unmodified';

export interface Change {
  kind: ChangeKind;
  /** Slash-separated, relative to the root, no leading slash. */
  path: string;
  /** lstat of the upper entry (not set for deletions). */
  stat?: BigIntStats;
  /** The upper entry's security.capability xattr, when it has one. */
  capability?: Buffer;
  /** Overlay fast path: the directory is opaque (the layer needs a `.wh..wh..opq` in it). */
  opaque?: boolean;
}

const WH_PREFIX = '.wh.';
const WH_OPAQUE = '.wh..wh..opq';
const CAPABILITY = 'security.capability';
/** Entries resolved (xattrs fetched, contents compared) per batch. */
const WINDOW = 512;
const COMPARE_CHUNK = 64 * 1024;
const READ_CHUNK = 1 << 20;
/** lstat calls in flight per directory. */
const STAT_BATCH = 32;
/** The tar writer reads files up to this size ahead, this many changes ahead (at most 4 MiB held). */
const PREFETCH_SIZE = 128 * 1024;
const LOOKAHEAD = 32;
const EMPTY = Buffer.alloc(0);

/* ------------------------------------------------------------------------------------------------------------
 * Ordering and walking.
 * ---------------------------------------------------------------------------------------------------------- */

/** UTF-16 code unit mapped so that comparing mapped units orders strings by code point (= UTF-8 byte order). */
function unit(s: string, i: number): number {
  const c = s.charCodeAt(i);
  if (c === 0x2f) return -1; // '/' sorts before everything (continuity's directoryCompare)
  if (c >= 0xd800 && c <= 0xdfff) return c + 0x2000;
  if (c >= 0xe000) return c - 0x800;
  return c;
}

/** Orders paths the way both walks produce them: byte order with `/` lowest. */
export function comparePaths(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const d = unit(a, i) - unit(b, i);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return a.length - b.length < 0 ? -1 : a.length === b.length ? 0 : 1;
}

async function readNames(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  if (names.some((n) => n.includes('\uFFFD'))) {
    for (const raw of await readdir(dir, { encoding: 'buffer' })) {
      if (!Buffer.from(raw.toString('utf8'), 'utf8').equals(raw)) {
        throw notImplemented(`file name ${JSON.stringify(raw.toString('utf8'))} in ${dir} is not valid UTF-8`);
      }
    }
  }
  return names.sort(comparePaths);
}

interface WalkEntry {
  path: string;
  stat: BigIntStats;
}

/** lstat of every name in dir, a few at a time (the thread pool does them in parallel). */
async function lstatAll(dir: string, names: string[]): Promise<BigIntStats[]> {
  const out: BigIntStats[] = new Array(names.length);
  for (let i = 0; i < names.length; i += STAT_BATCH) {
    const batch = names.slice(i, i + STAT_BATCH);
    const stats = await Promise.all(batch.map((n) => lstat(join(dir, n), { bigint: true })));
    for (let j = 0; j < stats.length; j++) out[i + j] = stats[j]!;
  }
  return out;
}

/** Every entry below root (not root itself), pre-order, names sorted: filepath.Walk's order. */
async function* walk(root: string): AsyncGenerator<WalkEntry> {
  const frame = async (rel: string) => {
    const dir = rel ? join(root, rel) : root;
    const names = await readNames(dir);
    return { rel, names, stats: await lstatAll(dir, names), i: 0 };
  };
  const stack = [await frame('')];
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    if (top.i >= top.names.length) {
      stack.pop();
      continue;
    }
    const i = top.i++;
    const path = top.rel ? `${top.rel}/${top.names[i]!}` : top.names[i]!;
    const stat = top.stats[i]!;
    yield { path, stat };
    if (stat.isDirectory()) stack.push(await frame(path));
  }
}

/* ------------------------------------------------------------------------------------------------------------
 * xattrs through python3.
 * ---------------------------------------------------------------------------------------------------------- */

const XATTR_SCRIPT = `
import os, struct, sys
out = sys.stdout.buffer
out.write(b'R'); out.flush()
buf = b''
while True:
    chunk = os.read(0, 1 << 16)
    if not chunk:
        break
    buf += chunk
    parts = buf.split(b'\\0')
    buf = parts.pop()
    if len(parts) % 2:
        buf = parts.pop() + b'\\0' + buf
    res = []
    for i in range(0, len(parts), 2):
        try:
            v = os.getxattr(parts[i + 1], parts[i].decode(), follow_symlinks=False)
            res.append(struct.pack('>I', len(v)) + v)
        except OSError:
            res.append(b'\\xff\\xff\\xff\\xff')
    if res:
        out.write(b''.join(res)); out.flush()
`;

/** One python3 process answering getxattr requests in order (absent, unreadable or missing: null). */
export class XattrReader {
  private buf: Buffer = Buffer.alloc(0);
  private readonly pending: { want: number; got: (Buffer | null)[]; resolve: (v: (Buffer | null)[]) => void; reject: (e: unknown) => void }[] = [];
  private failure: unknown;

  private constructor(private readonly proc: ChildProcess) {
    proc.stdout!.on('data', (chunk: Buffer) => this.onData(chunk));
    proc.on('exit', () => this.fail(new Error('xattr helper exited')));
    proc.on('error', (err) => this.fail(err));
    proc.stdin!.on('error', (err) => this.fail(err));
    proc.stdout!.on('error', (err) => this.fail(err));
  }

  /** Starts the helper; null when python3 cannot run here. */
  static async open(): Promise<XattrReader | null> {
    let proc: ChildProcess;
    try {
      proc = spawn('python3', ['-c', XATTR_SCRIPT], { stdio: ['pipe', 'pipe', 'ignore'] });
    } catch {
      return null;
    }
    const ready = await new Promise<boolean>((resolve) => {
      proc.once('error', () => resolve(false));
      proc.once('exit', () => resolve(false));
      // The helper writes nothing but this byte until it is asked something.
      proc.stdout!.once('data', (d: Buffer) => resolve(d.length === 1 && d[0] === 0x52));
    });
    if (!ready) {
      proc.kill('SIGKILL');
      return null;
    }
    proc.stdout!.removeAllListeners('data');
    return new XattrReader(proc);
  }

  /** The value of xattr name on path (never following a final symlink), for each request, in order. */
  get(requests: { path: string; name: string }[]): Promise<(Buffer | null)[]> {
    if (requests.length === 0) return Promise.resolve([]);
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const parts: Buffer[] = [];
    for (const r of requests) parts.push(Buffer.from(`${r.name}\0${r.path}\0`, 'utf8'));
    return new Promise((resolve, reject) => {
      this.pending.push({ want: requests.length, got: [], resolve, reject });
      this.proc.stdin!.write(Buffer.concat(parts));
    });
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    let off = 0;
    while (this.pending.length > 0 && this.buf.length - off >= 4) {
      const len = this.buf.readUInt32BE(off);
      const head = this.pending[0]!;
      if (len === 0xffffffff) {
        head.got.push(null);
        off += 4;
      } else {
        if (this.buf.length - off < 4 + len) break;
        head.got.push(Buffer.from(this.buf.subarray(off + 4, off + 4 + len)));
        off += 4 + len;
      }
      if (head.got.length === head.want) {
        this.pending.shift();
        head.resolve(head.got);
      }
    }
    this.buf = this.buf.subarray(off);
  }

  private fail(err: unknown): void {
    this.failure ??= err;
    for (const p of this.pending.splice(0)) p.reject(err);
  }

  close(): void {
    this.failure ??= new Error('xattr helper closed');
    this.proc.stdin!.end();
    this.proc.kill('SIGTERM');
  }
}

/* ------------------------------------------------------------------------------------------------------------
 * sameFile.
 * ---------------------------------------------------------------------------------------------------------- */

const NS = 1_000_000_000n;
const floorDiv = (a: bigint, b: bigint) => (a < 0n && a % b !== 0n ? a / b - 1n : a / b);
const mtimeSeconds = (st: BigIntStats) => floorDiv(st.mtimeNs, NS);
const mtimeNanos = (st: BigIntStats) => st.mtimeNs - mtimeSeconds(st) * NS;

/** Hard-linked non-directory (continuity's isLinked). */
const isLinked = (st: BigIntStats) => !st.isDirectory() && st.nlink > 1n;

/** Same inode, or different in type/mode, owner, rdev: decided from the stats alone; else undefined. */
function quickSame(a: BigIntStats, b: BigIntStats): boolean | undefined {
  if (a.dev === b.dev && a.ino === b.ino) return true;
  if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || a.rdev !== b.rdev) return false;
  return undefined;
}

async function sameContent(p1: string, p2: string): Promise<boolean> {
  const f1 = await open(p1, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const f2 = await open(p2, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      const b1 = Buffer.allocUnsafe(COMPARE_CHUNK);
      const b2 = Buffer.allocUnsafe(COMPARE_CHUNK);
      for (let pos = 0; ; ) {
        const [r1, r2] = await Promise.all([f1.read(b1, 0, COMPARE_CHUNK, pos), f2.read(b2, 0, COMPARE_CHUNK, pos)]);
        if (r1.bytesRead !== r2.bytesRead) return false;
        if (r1.bytesRead === 0) return true;
        if (!b1.subarray(0, r1.bytesRead).equals(b2.subarray(0, r2.bytesRead))) return false;
        pos += r1.bytesRead;
      }
    } finally {
      await f2.close();
    }
  } finally {
    await f1.close();
  }
}

/** The rest of continuity's sameFile once quickSame could not decide and the capabilities are equal. */
async function sameAfterStat(a: BigIntStats, aPath: string, b: BigIntStats, bPath: string): Promise<boolean> {
  if (a.isDirectory()) return true;
  if (a.size !== b.size) return false;
  if (mtimeSeconds(a) !== mtimeSeconds(b)) return false;
  const n1 = mtimeNanos(a);
  const n2 = mtimeNanos(b);
  if (n1 === 0n && n2 === 0n) {
    // Whole seconds on both sides: the filesystem may not keep more, so look at the data.
    if (a.isSymbolicLink()) return (await readlink(aPath)) === (await readlink(bPath));
    if (a.size === 0n || !a.isFile()) return true;
    return sameContent(aPath, bPath);
  }
  return n1 === n2;
}

/* ------------------------------------------------------------------------------------------------------------
 * Change streams.
 * ---------------------------------------------------------------------------------------------------------- */

/** A change whose kind may still depend on xattrs and contents. */
interface Raw {
  kind: ChangeKind;
  path: string;
  stat?: BigIntStats;
  /** Set for a path present on both sides whose sameness is not known yet. */
  lower?: BigIntStats;
  opaque?: boolean;
}

interface Roots {
  lower: string | null;
  upper: string;
}

/**
 * Resolves a window of raw changes: xattrs in one round trip, then pending comparisons; yields the changes
 * the tar needs (unmodified entries only when hard-linked, as the writer wants them).
 */
async function* resolveWindow(window: Raw[], roots: Roots, xattrs: XattrReader | null): AsyncGenerator<Change> {
  const requests: { path: string; name: string }[] = [];
  const slots: { raw: Raw; upperCap?: number; lowerCap?: number }[] = [];
  for (const raw of window) {
    const slot: (typeof slots)[number] = { raw };
    if (xattrs && raw.stat?.isFile()) {
      slot.upperCap = requests.push({ path: join(roots.upper, raw.path), name: CAPABILITY }) - 1;
      if (raw.lower?.isFile() && roots.lower !== null) {
        slot.lowerCap = requests.push({ path: join(roots.lower, raw.path), name: CAPABILITY }) - 1;
      }
    }
    slots.push(slot);
  }
  const values = xattrs ? await xattrs.get(requests) : [];
  for (const { raw, upperCap, lowerCap } of slots) {
    const capability = upperCap === undefined ? undefined : (values[upperCap] ?? undefined);
    let kind = raw.kind;
    if (raw.lower && raw.stat) {
      const lowerCapability = lowerCap === undefined ? undefined : (values[lowerCap] ?? undefined);
      const capsEqual = (capability ?? EMPTY).equals(lowerCapability ?? EMPTY);
      const same = capsEqual && (await sameAfterStat(raw.lower, join(roots.lower!, raw.path), raw.stat, join(roots.upper, raw.path)));
      kind = same ? 'unmodified' : 'modify';
    }
    if (kind === 'unmodified' && !(raw.stat && isLinked(raw.stat))) continue;
    const change: Change = { kind, path: raw.path };
    if (raw.stat) change.stat = raw.stat;
    if (capability) change.capability = capability;
    if (raw.opaque) change.opaque = true;
    yield change;
  }
}

async function* windowed(raws: AsyncGenerator<Raw>, roots: Roots): AsyncGenerator<Change> {
  const xattrs = await XattrReader.open();
  try {
    let window: Raw[] = [];
    for await (const raw of raws) {
      window.push(raw);
      if (window.length >= WINDOW) {
        yield* resolveWindow(window, roots, xattrs);
        window = [];
      }
    }
    yield* resolveWindow(window, roots, xattrs);
  } finally {
    xattrs?.close();
  }
}

async function* emptyWalk(): AsyncGenerator<WalkEntry> {}

/** continuity's doubleWalkDiff, with sameFile decided per window. lower null: an empty tree. */
async function* doubleWalk(lower: string | null, upper: string): AsyncGenerator<Raw> {
  const a = lower === null ? emptyWalk() : walk(lower);
  const b = walk(upper);
  try {
    let f1 = (await a.next()).value as WalkEntry | undefined;
    let f2 = (await b.next()).value as WalkEntry | undefined;
    let rmdir = '';
    while (f1 || f2) {
      const c = !f1 ? 1 : !f2 ? -1 : comparePaths(f1.path, f2.path);
      if (c > 0) {
        // Only in upper: added.
        rmdir = '';
        yield { kind: 'add', path: f2!.path, stat: f2!.stat };
        f2 = (await b.next()).value as WalkEntry | undefined;
      } else if (c < 0) {
        // Only in lower: deleted, unless below a directory already deleted.
        const e = f1!;
        f1 = (await a.next()).value as WalkEntry | undefined;
        if (rmdir && e.path.startsWith(rmdir)) continue;
        rmdir = e.stat.isDirectory() ? `${e.path}/` : '';
        yield { kind: 'delete', path: e.path };
      } else {
        const l = f1!;
        const u = f2!;
        rmdir = l.stat.isDirectory() && !u.stat.isDirectory() ? `${l.path}/` : '';
        f1 = (await a.next()).value as WalkEntry | undefined;
        f2 = (await b.next()).value as WalkEntry | undefined;
        const q = quickSame(l.stat, u.stat);
        if (q === true) {
          if (isLinked(u.stat)) yield { kind: 'unmodified', path: u.path, stat: u.stat };
        } else if (q === false) {
          yield { kind: 'modify', path: u.path, stat: u.stat };
        } else {
          yield { kind: 'modify', path: u.path, stat: u.stat, lower: l.stat };
        }
      }
    }
  } finally {
    await a.return(undefined);
    await b.return(undefined);
  }
}

/** Changes turning tree `lower` (null: empty) into tree `upper`, both plain directories. */
export function walkChanges(lower: string | null, upper: string): AsyncGenerator<Change> {
  return windowed(doubleWalk(lower, upper), { lower, upper });
}

async function lstatOrNull(path: string): Promise<BigIntStats | null> {
  try {
    return await lstat(path, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw err;
  }
}

/** Walks an overlay upperdir against the merged lower tree (null: empty). */
async function* upperdirWalk(lower: string | null, upperdir: string, xattrs: XattrReader, opaqueKey: string): AsyncGenerator<Raw> {
  // Directories below which the lower tree has nothing visible (absent there, not a directory there, or hidden
  // by an opaque directory): their descendants are added without looking them up in the lower tree (whose
  // path could cross a symlink).
  const hidden: string[] = [];
  for await (const { path, stat } of walk(upperdir)) {
    while (hidden.length > 0 && !path.startsWith(hidden[hidden.length - 1]!)) hidden.pop();
    const lowerStat = lower === null || hidden.length > 0 ? null : await lstatOrNull(join(lower, path));
    if (stat.isCharacterDevice() && stat.rdev === 0n) {
      // An overlay whiteout: deletes what the lower tree has there (nothing to do if it has nothing).
      if (lowerStat) yield { kind: 'delete', path };
      continue;
    }
    if (stat.isDirectory()) {
      const [opaqueValue] = await xattrs.get([{ path: join(upperdir, path), name: opaqueKey }]);
      const opaque = opaqueValue?.toString('latin1') === 'y';
      if (opaque || !lowerStat || !lowerStat.isDirectory()) hidden.push(`${path}/`);
      if (opaque) yield { kind: lowerStat ? 'modify' : 'add', path, stat, opaque: true };
      else if (!lowerStat) yield { kind: 'add', path, stat };
      else if (quickSame(lowerStat, stat) === false) yield { kind: 'modify', path, stat };
      // else: the same directory (continuity ignores directory mtimes); written only as a parent of a change.
      continue;
    }
    if (!lowerStat) {
      yield { kind: 'add', path, stat };
      continue;
    }
    const q = quickSame(lowerStat, stat);
    if (q === true) {
      if (isLinked(stat)) yield { kind: 'unmodified', path, stat };
    } else if (q === false) yield { kind: 'modify', path, stat };
    else yield { kind: 'modify', path, stat, lower: lowerStat };
  }
}

/**
 * Changes turning the merged lower tree (`lower`, null: empty) into the overlay whose upper layer is
 * `upperdir` on top of exactly that tree. `userxattr`: the overlay keeps its xattrs in user.overlay.*.
 * `xattrs` (the caller's, closed by the caller) must be able to read the opaque xattr.
 */
export async function* overlayChanges(lower: string | null, upperdir: string, userxattr: boolean, xattrs: XattrReader): AsyncGenerator<Change> {
  const opaqueKey = userxattr ? 'user.overlay.opaque' : 'trusted.overlay.opaque';
  const roots = { lower, upper: upperdir };
  let window: Raw[] = [];
  for await (const raw of upperdirWalk(lower, upperdir, xattrs, opaqueKey)) {
    window.push(raw);
    if (window.length >= WINDOW) {
      yield* resolveWindow(window, roots, xattrs);
      window = [];
    }
  }
  yield* resolveWindow(window, roots, xattrs);
}

/* ------------------------------------------------------------------------------------------------------------
 * The tar writer.
 * ---------------------------------------------------------------------------------------------------------- */

type TypeFlag = '0' | '1' | '2' | '3' | '4' | '5' | '6' | 'x';

export interface TarWriteHeader {
  name: string;
  type: TypeFlag;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch. */
  mtime: bigint;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** PAX records beyond the ones the header needs (e.g. SCHILY.xattr.*), binary-safe. */
  pax?: [string, Buffer][];
}

const BLOCK = 512;
const MAX_OCTAL_7 = 0o7777777;
const MAX_OCTAL_11 = 0o77777777777;
const isAscii = (s: string) => /^[\x00-\x7f]*$/.test(s);
const toAscii = (s: string) => s.replace(/[^\x00-\x7f]/g, '');

function putString(buf: Buffer, off: number, len: number, s: string): void {
  buf.write(toAscii(s).slice(0, len), off, len, 'latin1');
}

function putOctal(buf: Buffer, off: number, len: number, v: number | bigint): void {
  const s = v.toString(8).padStart(len - 1, '0');
  buf.write(s, off, len - 1, 'latin1');
  buf[off + len - 1] = 0;
}

function paxRecord(key: string, value: Buffer): Buffer {
  // "<len> <key>=<value>\n", len counting its own digits.
  const rest = Buffer.byteLength(key) + value.length + 3;
  let len = rest + String(rest).length;
  if (String(len).length !== String(rest).length) len = rest + String(len).length;
  return Buffer.concat([Buffer.from(`${len} ${key}=`, 'utf8'), value, Buffer.from('\n')]);
}

function rawHeader(h: TarWriteHeader): Buffer {
  const b = Buffer.alloc(BLOCK);
  putString(b, 0, 100, h.name);
  putOctal(b, 100, 8, h.mode & 0o7777);
  putOctal(b, 108, 8, h.uid <= MAX_OCTAL_7 && h.uid >= 0 ? h.uid : 0);
  putOctal(b, 116, 8, h.gid <= MAX_OCTAL_7 && h.gid >= 0 ? h.gid : 0);
  putOctal(b, 124, 12, h.size <= MAX_OCTAL_11 ? h.size : 0);
  putOctal(b, 136, 12, h.mtime >= 0n && h.mtime <= BigInt(MAX_OCTAL_11) ? h.mtime : 0n);
  b.fill(0x20, 148, 156); // checksum: spaces while summing
  b.write(h.type, 156, 1, 'latin1');
  if (h.linkname) putString(b, 157, 100, h.linkname);
  b.write('ustar\x0000', 257, 8, 'latin1');
  putOctal(b, 329, 8, h.devmajor ?? 0);
  putOctal(b, 337, 8, h.devminor ?? 0);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i]!;
  putOctal(b, 148, 7, sum); // six digits and a NUL; the eighth byte stays a space
  return b;
}

/** The header block(s) of one entry: a PAX extended header first when a field does not fit ustar. */
export function encodeHeader(h: TarWriteHeader): Buffer {
  const records: [string, Buffer][] = [];
  if (Buffer.byteLength(h.name) > 100 || !isAscii(h.name)) records.push(['path', Buffer.from(h.name, 'utf8')]);
  if (h.linkname && (Buffer.byteLength(h.linkname) > 100 || !isAscii(h.linkname))) {
    records.push(['linkpath', Buffer.from(h.linkname, 'utf8')]);
  }
  if (h.uid > MAX_OCTAL_7 || h.uid < 0) records.push(['uid', Buffer.from(String(h.uid))]);
  if (h.gid > MAX_OCTAL_7 || h.gid < 0) records.push(['gid', Buffer.from(String(h.gid))]);
  if (h.size > MAX_OCTAL_11) records.push(['size', Buffer.from(String(h.size))]);
  if (h.mtime < 0n || h.mtime > BigInt(MAX_OCTAL_11)) records.push(['mtime', Buffer.from(String(h.mtime))]);
  for (const r of h.pax ?? []) records.push(r);
  const header = rawHeader(h);
  if (records.length === 0) return header;
  records.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  const data = Buffer.concat(records.map(([k, v]) => paxRecord(k, v)));
  const base = h.name.replace(/\/+$/, '').split('/').pop() ?? '';
  const paxHeader = rawHeader({ name: `PaxHeaders.0/${base}`, type: 'x', mode: 0, uid: 0, gid: 0, size: data.length, mtime: 0n });
  return Buffer.concat([paxHeader, data, Buffer.alloc(padding(data.length)), header]);
}

const padding = (size: number) => (BLOCK - (size % BLOCK)) % BLOCK;

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
    if (c.capability && h.type !== '1') h.pax = [[`SCHILY.xattr.${CAPABILITY}`, c.capability]];

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
    return Buffer.alloc(2 * BLOCK);
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

/* ------------------------------------------------------------------------------------------------------------
 * Mounts.
 * ---------------------------------------------------------------------------------------------------------- */

export const isBindMount = (m: Mount) => m.type === 'bind' || m.options.includes('bind') || m.options.includes('rbind');

/** Mounts `mounts` on a temporary directory for fn (src/mount's withTempMount: unmounted after, rmdir only). */
export const withMountedDir = withTempMount;

/**
 * A tree to read, seen through mounts: none is the empty tree (null), a single bind mount is read at its
 * source, anything else is mounted read-only on a temporary directory for the duration of fn.
 */
export async function withReadonlyTree<T>(mounts: Mount[], fn: (root: string | null) => Promise<T>): Promise<T> {
  if (mounts.length === 0) return fn(null);
  if (mounts.length === 1 && isBindMount(mounts[0]!)) return fn(mounts[0]!.source);
  return withMountedDir(readonlyMounts(mounts), fn);
}

interface OverlayOptions {
  upperdir?: string;
  lowerdirs: string[];
  userxattr: boolean;
  options: string[];
}

function parseOverlay(m: Mount): OverlayOptions {
  const out: OverlayOptions = { lowerdirs: [], userxattr: false, options: m.options };
  for (const o of m.options) {
    if (o.startsWith('upperdir=')) out.upperdir = o.slice('upperdir='.length);
    else if (o.startsWith('lowerdir=')) out.lowerdirs = o.slice('lowerdir='.length).split(':').filter((d) => d !== '');
    else if (o === 'userxattr') out.userxattr = true;
  }
  return out;
}

async function kernelDefault(param: string): Promise<boolean> {
  try {
    return (await readFile(`/sys/module/overlay/parameters/${param}`, 'utf8')).trim() === 'Y';
  } catch {
    return false;
  }
}

/** Whether upperdir entries can be metacopy files or redirected directories (then only the merged view is right). */
async function mayRedirect(options: string[]): Promise<boolean> {
  const opt = (k: string) => options.find((o) => o.startsWith(`${k}=`))?.slice(k.length + 1);
  const metacopy = opt('metacopy');
  if (metacopy === 'on' || (metacopy === undefined && (await kernelDefault('metacopy')))) return true;
  const redirect = opt('redirect_dir');
  if (redirect === 'on' || (redirect === undefined && (await kernelDefault('redirect_dir')))) return true;
  return false;
}

/** The directories making up a tree, top first, when they can be listed: [] for none. */
function layerDirs(mounts: Mount[]): string[] | null {
  if (mounts.length === 0) return [];
  if (mounts.length !== 1) return null;
  const m = mounts[0]!;
  if (isBindMount(m)) return [m.source];
  if (m.type !== 'overlay') return null;
  const o = parseOverlay(m);
  if (o.lowerdirs.length === 0) return null;
  return o.upperdir ? [o.upperdir, ...o.lowerdirs] : o.lowerdirs;
}

/**
 * When `upper` is one overlay mount with an upperdir over exactly the layers of `lower`: its upperdir and
 * whether it uses userxattr. Else null.
 */
export async function overlayUpperOf(lower: Mount[], upper: Mount[]): Promise<{ upperdir: string; userxattr: boolean } | null> {
  if (upper.length !== 1 || upper[0]!.type !== 'overlay') return null;
  const o = parseOverlay(upper[0]!);
  if (!o.upperdir || o.lowerdirs.length === 0) return null;
  const dirs = layerDirs(lower);
  if (!dirs || dirs.length !== o.lowerdirs.length) return null;
  if (![o.upperdir, ...o.lowerdirs, ...dirs].every((d) => d.startsWith('/'))) return null;
  if (await mayRedirect(o.options)) return null;
  try {
    const [a, b] = await Promise.all([Promise.all(o.lowerdirs.map((d) => realpath(d))), Promise.all(dirs.map((d) => realpath(d)))]);
    if (!a.every((d, i) => d === b[i])) return null;
    return { upperdir: await realpath(o.upperdir), userxattr: o.userxattr };
  } catch {
    return null;
  }
}

/** How a comparison was made (reported for logs and tests). */
export type DiffMethod = 'overlay' | 'walk';

/**
 * Runs fn with the layer tar turning `lower` into `upper` (a stream to consume within fn), and how it is
 * computed: the overlay fast path when it applies, else the double walk over read-only mounts.
 */
export async function withDiffTar<T>(
  lower: Mount[],
  upper: Mount[],
  fn: (tar: AsyncGenerator<Buffer>, method: DiffMethod) => Promise<T>,
): Promise<T> {
  const fast = await overlayUpperOf(lower, upper);
  // Without a way to read xattrs, opaque directories would go unseen: then only the double walk is right.
  const xattrs = fast ? await XattrReader.open() : null;
  if (fast && xattrs) {
    try {
      return await withReadonlyTree(lower, (lowerRoot) =>
        fn(changesTar(overlayChanges(lowerRoot, fast.upperdir, fast.userxattr, xattrs), fast.upperdir), 'overlay'),
      );
    } finally {
      xattrs.close();
    }
  }
  return withReadonlyTree(lower, (lowerRoot) =>
    withReadonlyTree(upper, (upperRoot) => {
      if (upperRoot === null) throw new StrataError('invalid argument', 'no mounts for the upper tree of the diff');
      return fn(changesTar(walkChanges(lowerRoot, upperRoot), upperRoot), 'walk');
    }),
  );
}
