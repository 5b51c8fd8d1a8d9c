/**
 * The layer applier proper: synchronous file system calls driven by the tar reader (src/diff/tar.ts). It runs
 * in a worker thread (src/diff/apply-worker.ts), where blocking calls cost a syscall each instead of a
 * thread-pool round trip and a promise: that is the difference between 35 s and about 1.5 s for 50k files.
 *
 * Semantics, as containerd's archive.Apply:
 *  - names are cleaned as if under `/` (containerd's filepath.Clean / fs.RootPath): a leading `/` is stripped
 *    and `..` that would climb above the target stays at the target, so `../x` lands at `<target>/x`;
 *  - symlinks met in parent components are resolved with the target as `/` (continuity's fs.RootPath), and the
 *    final component is never followed (files are created with O_EXCL|O_NOFOLLOW after removing what was there);
 *  - a later entry replaces an earlier one, directories merge; directory times are set last;
 *  - hardlinks must point at something inside the target that exists (and is not a directory);
 *  - whiteouts: 'delete' removes what they name (opaque: everything in the directory this layer did not add);
 *    'overlay' writes overlayfs whiteouts (0/0 character devices, the opaque xattr);
 *  - parent directories missing in an overlay upperdir are created with the metadata of the same directory
 *    in the lower layers when there is one (so a layer adding /tmp/x keeps /tmp 1777), else 0755 root.
 */
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  chmodSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
  utimesSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { join } from 'node:path';
import { invalidArgument, noSpaceCode, notImplemented, StrataError } from '../core/errdefs.js';
import { removeTreeSync } from '../core/remove.js';
import { limitError, type LayerLimits } from './limits.js';
import { TarParser, type TarHeader } from './tar.js';
import { OVERLAY_OPAQUE, OVERLAY_WHITEOUT_MKNOD, overlayOpaqueXattr, WH_OPAQUE, WH_PREFIX } from './whiteouts.js';

export interface CoreOptions {
  whiteouts: 'delete' | 'overlay';
  userxattr: boolean;
  /** Lower directories of an overlay upperdir target, top first (metadata for implicitly created parents). */
  parents: string[];
  isRoot: boolean;
  warn: (msg: string, fields: Record<string, unknown>) => void;
  /** Limits checked per entry (./limits.ts; 0: none). The uncompressed size is bounded by the caller. */
  limits?: Pick<LayerLimits, 'max_entries' | 'max_path_length' | 'max_path_depth' | 'max_xattrs' | 'max_xattr_size' | 'max_layer_xattr_size' | 'max_pax_header_size'>;
}

const MAX_LINKS = 255;
/** The largest uid or gid chown takes (2^32 - 1, which chown reads as "unchanged", as containerd passes it). */
const MAX_ID = 0xffffffff;
const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** The process umask, from /proc (process.umask() cannot be called in a worker); 0o022 if unknown. */
function readUmask(): number {
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number.parseInt(m[1]!, 8);
  } catch {
    // not Linux /proc: assume the usual
  }
  return 0o022;
}

const UMASK = readUmask();

function errnoOf(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null ? (err as NodeJS.ErrnoException).code : undefined;
}

/** A tar name as error messages show it: quoted, and shortened when long (a hostile name may be 1 MiB). */
export function shown(name: string): string {
  if (name.length <= 200) return JSON.stringify(name);
  return `${JSON.stringify(name.slice(0, 80))}...(${Buffer.byteLength(name)} bytes)...${JSON.stringify(name.slice(-40))}`;
}

/** Errors of setting an xattr that say the layer's value is wrong (a malformed capability, too large...). */
const XATTR_LAYER_ERRNOS = new Set(['EINVAL', 'ERANGE', 'E2BIG', 'ENAMETOOLONG']);

/** Errors of a file call that say something is wrong with the layer (rather than with the host). */
const LAYER_ERRNOS = new Set(['ENAMETOOLONG', 'ELOOP', 'ENOTDIR', 'EISDIR', 'EMLINK', 'EINVAL']);

/**
 * The error a failed apply reports: never a host path (Node's file errors name the full path, and the target
 * is the daemon's snapshot directory). A file call's error becomes "tar entry <name>: <call>: <what> (<errno>)",
 * 'invalid argument' when the layer asked for what cannot be (a name too long, a symlink loop...), else
 * 'resource exhausted' when the disk is full (ENOSPC, EDQUOT), else 'unknown' (I/O...); any other message has the target's path taken out and is cut short.
 */
export function layerError(err: unknown, root: string, entry: string | undefined): StrataError {
  if (err instanceof StrataError) return err;
  const at = entry !== undefined ? `tar entry ${shown(entry)}: ` : '';
  const e = err as NodeJS.ErrnoException | undefined;
  if (e && typeof e.code === 'string' && typeof e.syscall === 'string') {
    const what = /^[A-Z0-9_]+: ([^,]+)/.exec(e.message)?.[1] ?? e.code;
    const kind = LAYER_ERRNOS.has(e.code) ? 'invalid argument' : noSpaceCode(e) ? 'resource exhausted' : 'unknown';
    return new StrataError(kind, `${at}${e.syscall}: ${what} (${e.code})`, { cause: err });
  }
  return new StrataError('unknown', `${at}${withoutPaths(err instanceof Error ? err.message : String(err), root)}`, { cause: err });
}

/** `msg` with every occurrence of `root` (and what follows it up to a quote or space) replaced, at most 300 characters. */
function withoutPaths(msg: string, root: string): string {
  let out = msg.split(root).map((part, i) => (i === 0 ? part : `<layer>${part.replace(/^[^\s'"]*/, (p) => (p.length > 60 ? `${p.slice(0, 60)}...` : p))}`)).join('');
  if (out.length > 300) out = `${out.slice(0, 300)}...`;
  return out;
}

/** mknod(1)'s complaints that mean the layer asked for what cannot be (a device number the kernel refuses...). */
const MKNOD_LAYER_ERRORS: [RegExp, string, string][] = [
  [/Invalid argument/, 'invalid argument', 'EINVAL'],
  [/Value too large/, 'value too large', 'EOVERFLOW'],
  [/invalid (major|minor) device number/, 'invalid device number', 'EINVAL'],
  [/File name too long/, 'name too long', 'ENAMETOOLONG'],
  [/Not a directory/, 'not a directory', 'ENOTDIR'],
];

/**
 * Runs mknod(1) (Node has no mknod). Its failure is reported like a file call's (layerError): "tar entry <name>:
 * mknod: <what> (<errno>)", 'invalid argument' when the layer asked for the impossible (a device number the
 * kernel refuses), else 'unknown'; never mknod's own message, which names the host path.
 */
function mknod(args: string[], name: string): void {
  try {
    execFileSync('mknod', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' && (err as NodeJS.ErrnoException).path === 'mknod') throw err; // no mknod(1) at all
    const stderr = String((err as { stderr?: Buffer }).stderr ?? '');
    const known = MKNOD_LAYER_ERRORS.find(([re]) => re.test(stderr));
    if (known) throw invalidArgument(`tar entry ${shown(name)}: mknod: ${known[1]} (${known[2]})`, err);
    const what = /: ([^:\n]+)\s*$/.exec(stderr)?.[1] ?? 'failed';
    throw new StrataError('unknown', `tar entry ${shown(name)}: mknod: ${what}`, { cause: err });
  }
}

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') return undefined;
    throw err;
  }
}

/**
 * Splits a tar name into clean components, lexically, as containerd's filepath.Clean("/"+name): a leading `/`
 * is dropped, `.` and empty components vanish, `..` removes the component before it and, at the top, stays at
 * the top (`../x` and `a/../../x` are `x`). Symlinks are resolved afterwards (resolveInRoot), inside the root.
 */
export function cleanComponents(name: string, what = name): string[] {
  const out: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      out.pop(); // above the root: clamped to the root
      continue;
    }
    if (c.includes('\0')) throw invalidArgument(`tar entry ${shown(what)} has a NUL in its name`);
    out.push(c);
  }
  return out;
}

/**
 * The one symlink-safe path resolver of the applier: resolves `comps` inside `root` as continuity's
 * fs.RootPath does. Empty and `.` components are skipped, `..` goes up but never above `root`, and a symlink
 * met on the way (the last component included) is followed with `root` as `/`, so nothing outside `root` is
 * ever looked at or written. More than MAX_LINKS symlinks is an error naming the tar entry `name` (a loop
 * must neither hang the applier nor pass unnoticed; containerd's mkparent fails on it too).
 *
 * `step` is called for each component reached that is not a symlink, with its path, its lstat (undefined: it
 * does not exist) and the components resolved so far, itself included. It returns whether to go on: after
 * creating a missing directory, say, or throwing for a component that must be a directory and is not.
 * Giving up makes the result undefined.
 */
function resolveInRoot(
  root: string,
  comps: string[],
  name: string,
  step: (path: string, st: Stats | undefined, rel: string[]) => boolean,
): string | undefined {
  const resolved: string[] = [];
  const pending = [...comps];
  let links = 0;
  while (pending.length > 0) {
    const c = pending.shift()!;
    if (c === '' || c === '.') continue;
    if (c === '..') {
      resolved.pop();
      continue;
    }
    const p = join(root, ...resolved, c);
    const st = lstatOrUndefined(p);
    if (st?.isSymbolicLink()) {
      if (++links > MAX_LINKS) throw invalidArgument(`tar entry ${shown(name)}: too many symlinks`);
      const dest = readlinkSync(p);
      if (dest.startsWith('/')) resolved.length = 0;
      pending.unshift(...dest.split('/'));
      continue;
    }
    resolved.push(c);
    if (!step(p, st, resolved)) return undefined;
  }
  return join(root, ...resolved);
}

export class LayerApplier {
  readonly parser: TarParser;
  size = 0;
  /** Paths this layer created (for opaque whiteouts in 'delete' mode). */
  private readonly unpacked = new Set<string>();
  private readonly dirTimes: { path: string; atime: number; mtime: number }[] = [];
  /** xattrs set at the end (after chown, which would drop security.capability). */
  private readonly xattrs = new Map<string, [string, Buffer][]>();
  /**
   * Parent paths (as written in the tar, joined) already resolved to a real directory in this apply, with
   * whether that directory is set-group-ID (files created in it then take its group, so chown is needed).
   */
  private readonly dirs = new Map<string, { path: string; sgid: boolean }>();
  /** Set-group-ID flag of the directory the last parentDir() call returned. */
  private parentSgid = false;
  /** The open file of the current entry, and what to set on it when its data is in. */
  private fd = -1;
  private pending?: TarHeader;
  private pendingChown = false;
  private pendingChmod = false;
  private failed?: unknown;
  /** Name of the entry being applied (for error messages). */
  private entry?: string;
  /** Entries seen (for max_entries). */
  private entries = 0;
  /** Bytes of xattrs recorded in this layer so far, never decreasing (for max_layer_xattr_size). */
  private xattrBytes = 0;

  constructor(
    private readonly root: string,
    private readonly opts: CoreOptions,
  ) {
    this.parser = new TarParser(
      {
        header: (h) => this.onHeader(h),
        data: (chunk) => this.onData(chunk),
        endEntry: () => this.onEnd(),
      },
      opts.limits ? { maxPaxHeaderSize: opts.limits.max_pax_header_size } : {},
    );
  }

  /** Feeds uncompressed tar bytes (the caller hashes them for the diffID). */
  write(chunk: Buffer): void {
    this.size += chunk.length;
    if (this.failed) return;
    try {
      if (!this.parser.ended) this.parser.push(chunk);
    } catch (err) {
      this.failed = layerError(err, this.root, this.entry);
      this.abort();
      throw this.failed;
    }
  }

  /** The stream ended: finishes the archive (directory times, xattrs) and returns the bytes read. */
  finish(): { size: number; implicitDirs: string[] } {
    if (this.failed) throw this.failed;
    try {
      this.parser.end();
      this.entry = undefined;
      this.applyXattrs(); // after chown, which drops security.capability
      for (const { path, atime, mtime } of this.dirTimes.reverse()) {
        const st = lstatOrUndefined(path);
        if (st?.isDirectory()) utimesSync(path, atime, mtime);
      }
    } catch (err) {
      throw layerError(err, this.root, this.entry);
    }
    const implicitDirs: string[] = [];
    for (const [path, rel] of this.defaulted) if (lstatOrUndefined(path)?.isDirectory()) implicitDirs.push(rel);
    return { size: this.size, implicitDirs };
  }

  /** Releases what an aborted apply holds (the open file). */
  abort(): void {
    this.closeFd();
  }

  private closeFd(): void {
    if (this.fd >= 0) {
      try {
        closeSync(this.fd);
      } catch {
        // already failing
      }
      this.fd = -1;
    }
  }

  /**
   * Resolves the parent components of an entry to a real directory inside the root (resolveInRoot), creating
   * missing ones; a component that exists must be a directory.
   */
  private parentDir(comps: string[], name: string): string {
    const key = comps.join('/');
    const cached = this.dirs.get(key);
    if (cached !== undefined) {
      this.parentSgid = cached.sgid;
      return cached.path;
    }
    let sgid = lstatSync(this.root).mode & 0o2000;
    const dir = resolveInRoot(this.root, comps, name, (p, st, rel) => {
      if (!st) sgid = this.mkparent(p, rel, name) & 0o2000;
      else if (!st.isDirectory()) throw invalidArgument(`tar entry ${shown(name)}: parent ${shown(rel.join('/'))} is not a directory`);
      else sgid = st.mode & 0o2000;
      return true;
    })!;
    this.parentSgid = sgid !== 0;
    this.dirs.set(key, { path: dir, sgid: sgid !== 0 });
    return dir;
  }

  /**
   * Creates a missing parent (`rel`: its components) for entry `name`: with the lower layers' metadata for that
   * directory if they have it, else 0755. Returns its mode.
   */
  private mkparent(path: string, rel: string[], name: string): number {
    mkdirSync(path, { mode: 0o755 });
    this.unpacked.add(path);
    for (const lower of this.opts.parents) {
      // In a lower layer the path may be absent, or cross a file (nothing there either): then the next layer.
      const lp = resolveInRoot(lower, rel, name, (_p, st) => st !== undefined);
      if (lp === undefined) continue;
      const st = lstatOrUndefined(lp);
      if (!st || !st.isDirectory()) break; // replaced in a lower layer: defaults
      if (this.opts.isRoot) lchownSync(path, st.uid, st.gid);
      chmodSync(path, st.mode & 0o7777);
      this.dirTimes.push({ path, atime: st.atimeMs / 1000, mtime: st.mtimeMs / 1000 });
      return st.mode;
    }
    chmodSync(path, 0o755);
    this.defaulted.set(path, rel.join('/'));
    return 0o755;
  }

  /**
   * Directories this layer implied (no entry of its own) and no lower layer described, so they were made 0755
   * root: relative paths. A layer extracted without its parent (parallel unpack) gets their metadata from the
   * parent afterwards, as an in-order apply takes it from the lower layers here.
   */
  private readonly defaulted = new Map<string, string>();

  /** Removes a path; forgets resolved directories if a directory or symlink goes (resolution may change). */
  private remove(path: string, st: Stats): void {
    removeTreeSync(path);
    if (st.isDirectory() || st.isSymbolicLink()) this.dirs.clear();
    if (this.xattrs.size > 0) for (const p of [...this.xattrs.keys()]) if (p === path || p.startsWith(`${path}/`)) this.xattrs.delete(p);
  }

  private onHeader(h: TarHeader): void {
    this.entry = h.name;
    const comps = this.checkLimits(h);
    if (comps.length === 0) return; // the root itself: ignored, as containerd does
    const base = comps[comps.length - 1]!;
    // Owners are 32-bit on Linux. containerd passes larger ones to chown, which keeps their low 32 bits (a file
    // of another owner than the layer says); here they are refused (and Node's chown would throw a RangeError).
    if (h.uid > MAX_ID || h.gid > MAX_ID) {
      throw invalidArgument(`tar entry ${shown(h.name)}: owner ${h.uid}:${h.gid} out of range (at most ${MAX_ID})`);
    }
    const dir = this.parentDir(comps.slice(0, -1), h.name);
    const path = join(dir, base);

    if (base.startsWith(WH_PREFIX)) {
      this.whiteout(h.name, dir, base);
      return;
    }

    const mode = h.mode & 0o7777;
    const mtime = h.mtime;
    const atime = h.atime ?? h.mtime;
    if (h.type === 'file') {
      // Created with its final permission bits when the umask keeps them, which spares a chmod; a file that
      // needs chown (not root:root, or a set-group-ID parent) or special bits gets both calls, in that order.
      const needChown = this.opts.isRoot && (h.uid !== 0 || h.gid !== 0 || this.parentSgid);
      const exact = !needChown && (mode & ~0o777) === 0 && (mode & UMASK) === 0;
      const createMode = exact ? mode : 0o600;
      let fd: number;
      try {
        fd = openSync(path, CREATE_FLAGS, createMode);
      } catch (err) {
        if (errnoOf(err) !== 'EEXIST') throw err;
        this.remove(path, lstatSync(path));
        fd = openSync(path, CREATE_FLAGS, createMode);
      }
      this.fd = fd;
      this.pending = h;
      this.pendingChown = needChown;
      this.pendingChmod = !exact;
      this.unpacked.add(path);
      this.noteXattrs(path, h);
      return;
    }

    const existing = lstatOrUndefined(path);
    if (existing && !(existing.isDirectory() && h.type === 'directory')) this.remove(path, existing);
    switch (h.type) {
      case 'directory':
        this.defaulted.delete(path); // its own entry says what it is
        if (!existing || !existing.isDirectory()) mkdirSync(path, { mode: 0o700 });
        else if ((existing.mode ^ h.mode) & 0o2000) this.dirs.clear(); // set-group-ID changes on a known directory
        if (this.opts.isRoot) lchownSync(path, h.uid, h.gid);
        chmodSync(path, mode);
        this.dirTimes.push({ path, atime, mtime });
        break;
      case 'symlink':
        // symlink(2) refuses an empty target (ENOENT, which would read as a host failure): the layer's fault.
        if (h.linkname === '') throw invalidArgument(`tar entry ${shown(h.name)}: symlink with an empty target`);
        symlinkSync(h.linkname, path);
        if (this.opts.isRoot) lchownSync(path, h.uid, h.gid);
        lutimesSync(path, atime, mtime);
        break;
      case 'link': {
        const lcomps = cleanComponents(h.linkname, `${h.name} -> ${h.linkname}`);
        if (lcomps.length === 0) throw invalidArgument(`tar entry ${shown(h.name)}: hardlink to the root`);
        const ldir = this.parentDir(lcomps.slice(0, -1), h.name);
        const lpath = join(ldir, lcomps[lcomps.length - 1]!);
        const lst = lstatOrUndefined(lpath);
        if (!lst) throw invalidArgument(`tar entry ${shown(h.name)}: hardlink target ${shown(h.linkname)} does not exist in the layer`);
        if (lst.isDirectory()) throw invalidArgument(`tar entry ${shown(h.name)}: hardlink to a directory`);
        linkSync(lpath, path); // link(2) does not follow a symlink: the link is to the symlink itself
        this.unpacked.add(path);
        return; // the inode's metadata was set by the entry that created it
      }
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        if (h.type !== 'fifo' && !this.opts.isRoot) {
          this.opts.warn('device ignored: not running as root', { entry: h.name });
          return;
        }
        // mknod(1) takes permission bits only; set-id and sticky bits come with the chmod below (containerd's
        // mknod(2) takes them whole: a fifo of mode 04755 applies there).
        const args = ['-m', (mode & 0o777).toString(8), path];
        if (h.type === 'fifo') args.push('p');
        else args.push(h.type === 'character-device' ? 'c' : 'b', String(h.devmajor), String(h.devminor));
        mknod(args, h.name);
        if (this.opts.isRoot) lchownSync(path, h.uid, h.gid);
        chmodSync(path, mode);
        utimesSync(path, atime, mtime);
        break;
      }
    }
    this.unpacked.add(path);
    this.noteXattrs(path, h);
  }

  /** Counts the entry and checks its name against the limits; returns its clean components. */
  private checkLimits(h: TarHeader): string[] {
    const limits = this.opts.limits;
    if (!limits) return cleanComponents(h.name);
    if (limits.max_entries > 0 && ++this.entries > limits.max_entries) {
      throw limitError('max_entries', limits.max_entries, `more than ${limits.max_entries} entries`);
    }
    if (limits.max_path_length > 0) {
      for (const [what, name] of [['name', h.name], ['link target', h.linkname]] as const) {
        const len = Buffer.byteLength(name);
        if (len > limits.max_path_length) {
          throw limitError('max_path_length', limits.max_path_length, `tar entry ${shown(h.name)}: ${what} of ${len} bytes`);
        }
      }
    }
    const comps = cleanComponents(h.name);
    if (limits.max_path_depth > 0 && comps.length > limits.max_path_depth) {
      throw limitError('max_path_depth', limits.max_path_depth, `tar entry ${shown(h.name)}: ${comps.length} levels deep`);
    }
    this.checkXattrs(h.name, h.xattrs);
    if (limits.max_layer_xattr_size > 0 && h.xattrs.length > 0) {
      for (const [k, v] of h.xattrs) this.xattrBytes += Buffer.byteLength(k) + v.length;
      if (this.xattrBytes > limits.max_layer_xattr_size) {
        const max = limits.max_layer_xattr_size;
        throw limitError('max_layer_xattr_size', max, `tar entry ${shown(h.name)}: more than ${max} bytes of extended attributes in the layer`);
      }
    }
    return comps;
  }

  /** Checks one entry's (or one path's) extended attributes against max_xattrs and max_xattr_size. */
  private checkXattrs(name: string, xattrs: [string, Buffer][]): void {
    const limits = this.opts.limits;
    if (!limits || xattrs.length === 0) return;
    if (limits.max_xattrs > 0 && xattrs.length > limits.max_xattrs) {
      throw limitError('max_xattrs', limits.max_xattrs, `tar entry ${shown(name)}: ${xattrs.length} extended attributes`);
    }
    if (limits.max_xattr_size > 0) {
      let bytes = 0;
      for (const [k, v] of xattrs) bytes += Buffer.byteLength(k) + v.length;
      if (bytes > limits.max_xattr_size) {
        throw limitError('max_xattr_size', limits.max_xattr_size, `tar entry ${shown(name)}: ${bytes} bytes of extended attributes`);
      }
    }
  }

  private onData(data: Buffer): void {
    // Data of an entry that opened no file (the root itself, a whiteout with a body): skipped, as containerd
    // skips what it does not write.
    if (this.fd < 0) return;
    let off = 0;
    while (off < data.length) off += writeSync(this.fd, data, off, data.length - off);
  }

  private onEnd(): void {
    const h = this.pending;
    if (!h || this.fd < 0) return;
    this.pending = undefined;
    const fd = this.fd;
    try {
      if (this.pendingChown) fchownSync(fd, h.uid, h.gid);
      if (this.pendingChmod) fchmodSync(fd, h.mode & 0o7777); // after chown, which clears set-id bits
      futimesSync(fd, h.atime ?? h.mtime, h.mtime);
    } finally {
      this.fd = -1;
      closeSync(fd);
    }
  }

  /**
   * Records an entry's xattrs, set at the end. A path the layer names again (a directory repeated) keeps one
   * value per name, the last, as setting them in turn would leave; the limits hold for what the path ends with.
   */
  private noteXattrs(path: string, h: TarHeader): void {
    if (h.xattrs.length === 0) return;
    const before = this.xattrs.get(path);
    if (!before) {
      this.xattrs.set(path, h.xattrs);
      return;
    }
    const merged = new Map(before);
    for (const [k, v] of h.xattrs) merged.set(k, v);
    const list = [...merged];
    this.checkXattrs(h.name, list);
    this.xattrs.set(path, list);
  }

  private whiteout(name: string, dir: string, base: string): void {
    const overlay = this.opts.whiteouts === 'overlay';
    if (base === WH_OPAQUE) {
      if (overlay) {
        const list = this.xattrs.get(dir) ?? [];
        list.push([overlayOpaqueXattr(this.opts.userxattr), Buffer.from(OVERLAY_OPAQUE)]);
        this.xattrs.set(dir, list);
      } else {
        this.emptyLower(dir);
      }
      return;
    }
    const orig = base.slice(WH_PREFIX.length);
    if (orig === '' || orig === '.' || orig === '..' || orig.includes('/')) {
      throw invalidArgument(`tar entry ${shown(name)}: invalid whiteout name`);
    }
    const path = join(dir, orig);
    const st = lstatOrUndefined(path);
    if (st) this.remove(path, st);
    if (overlay) {
      if (!this.opts.isRoot) throw notImplemented(`whiteout ${shown(name)}: overlay whiteouts need root`);
      mknod(['-m', '0', path, ...OVERLAY_WHITEOUT_MKNOD], name);
    }
  }

  /** Removes everything under `dir` that this layer did not add (opaque whiteout, 'delete' mode). */
  private emptyLower(dir: string): void {
    for (const child of readdirSync(dir)) {
      const p = join(dir, child);
      const st = lstatSync(p);
      if (!this.unpacked.has(p)) this.remove(p, st);
      else if (st.isDirectory()) this.emptyLower(p);
    }
  }

  /**
   * Sets every recorded xattr in one `python3` run (Node has no xattr API); values are raw bytes. As containerd:
   * an xattr the file system does not support (ENOTSUP) is skipped with a warning, and so is EPERM for a
   * user.* xattr on what is neither a file nor a directory (the kernel allows user.* on those only). Any other
   * refusal fails the layer: `invalid argument` when the value is what is wrong (EINVAL, ERANGE, E2BIG: a
   * malformed security.capability, say), else `unknown`; the message names the entry, never the host path.
   */
  private applyXattrs(): void {
    if (this.xattrs.size === 0) return;
    const batch: [string, string, string][] = [];
    for (const [path, list] of this.xattrs) for (const [k, v] of list) batch.push([path, k, v.toString('base64')]);
    const script = [
      'import sys, os, json, base64, errno, stat',
      'for p, k, v in json.load(sys.stdin):',
      '    try:',
      '        os.setxattr(p, k, base64.b64decode(v), follow_symlinks=False)',
      '    except OSError as e:',
      "        name = errno.errorcode.get(e.errno, str(e.errno))",
      '        if e.errno == errno.ENOTSUP:',
      "            print(json.dumps([p, k, name])); continue",
      "        if e.errno == errno.EPERM and k.startswith('user.'):",
      '            m = os.lstat(p).st_mode',
      '            if not stat.S_ISREG(m) and not stat.S_ISDIR(m):',
      "                print(json.dumps([p, k, name])); continue",
      "        sys.stderr.write(json.dumps([p, k, name, e.strerror or ''])); sys.exit(1)",
    ].join('\n');
    const entryOf = (p: string) => (p.startsWith(`${this.root}/`) ? p.slice(this.root.length + 1) : '<layer>');
    let stdout: string;
    try {
      stdout = execFileSync('python3', ['-c', script], { input: JSON.stringify(batch), stdio: ['pipe', 'pipe', 'pipe'], encoding: 'utf8' });
    } catch (err) {
      if (errnoOf(err) === 'ENOENT') throw notImplemented('setting xattrs needs python3');
      const stderr = String((err as { stderr?: Buffer | string }).stderr ?? '').trim();
      let failure: [string, string, string, string] | undefined;
      try {
        failure = JSON.parse(stderr) as [string, string, string, string];
      } catch {
        // not the script's own report (python3 itself failed)
      }
      if (!failure) throw new StrataError('unknown', `setting xattrs: ${withoutPaths(stderr || (err as Error).message, this.root)}`, { cause: err });
      const [p, k, code, what] = failure;
      const kind = XATTR_LAYER_ERRNOS.has(code) ? 'invalid argument' : 'unknown';
      throw new StrataError(kind, `tar entry ${shown(entryOf(p))}: setxattr ${shown(k)}: ${what.toLowerCase()} (${code})`, { cause: err });
    }
    for (const line of stdout.split('\n')) {
      if (!line) continue;
      const [p, k, code] = JSON.parse(line) as [string, string, string];
      this.opts.warn('ignored xattr in layer', { entry: entryOf(p), xattr: k, errno: code });
    }
  }
}
