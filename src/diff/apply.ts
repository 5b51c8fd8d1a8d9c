/**
 * Applying an uncompressed layer tar to a directory, the way containerd's archive.Apply does: streaming,
 * tar semantics (a later entry replaces an earlier one, directories merge), whiteouts either applied
 * (`delete`) or converted for an overlay upperdir (`overlay`), and every name resolved inside the target
 * the way continuity's fs.RootPath does, so that a hostile layer cannot create or write anything outside it.
 *
 * Name handling, as containerd: a leading `/` is stripped (an absolute name lands inside the target);
 * `..` that would climb above the target is rejected (containerd clamps it; we refuse the layer); symlinks
 * met in parent components are resolved relative to the target root, never the host; the final component
 * is never followed (files are opened with O_NOFOLLOW|O_EXCL after unlinking what was there).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { lchown, link, lstat, lutimes, mkdir, open, readdir, readlink, realpath, rm, symlink, chmod, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { extract, type Header } from 'tar-stream';
import { invalidArgument, notImplemented, StrataError } from '../errdefs/index.js';
import type { Logger } from '../log/index.js';

const run = promisify(execFile);

export interface ApplyOptions {
  /**
   * 'delete' (default): whiteouts remove what they name in the target. 'overlay': the target is an overlay
   * upperdir; `.wh.<name>` becomes a 0/0 character device and `.wh..wh..opq` sets the opaque xattr
   * (trusted.overlay.opaque=y, or user.overlay.opaque=y with `userxattr`).
   */
  whiteouts?: 'delete' | 'overlay';
  /** With whiteouts 'overlay': the overlay mount uses `userxattr`, so the opaque xattr is user.overlay.opaque. */
  userxattr?: boolean;
  /** Where warnings go (devices skipped when not root). */
  logger?: Logger;
}

export interface ApplyResult {
  /** sha256 digest ("sha256:<hex>") of the uncompressed tar bytes as read, padding and trailer included. */
  diffID: string;
  /** Uncompressed bytes read. */
  size: number;
}

const WH_PREFIX = '.wh.';
const WH_OPAQUE = '.wh..wh..opq';
const MAX_LINKS = 255;

type PaxHeaders = Omit<Header, 'pax'> & { pax?: Record<string, string> | null };

/** An entry's data as tar-stream (streamx) gives it. */
interface EntryData extends AsyncIterable<Buffer> {
  resume(): unknown;
}

/**
 * Applies the uncompressed tar stream `tar` to the directory `target` and returns its diffID and size.
 *
 * Nothing is half applied in a recoverable sense: the first error (hostile entry, I/O error, truncated
 * stream) stops the application and the promise rejects; the target is then left partly written and the
 * caller must discard it (remove the active snapshot it belongs to). Hostile entries are rejected with an
 * invalid-argument error naming the entry; no entry is ever written outside `target`.
 */
export async function applyTar(tar: Readable, target: string, opts: ApplyOptions = {}): Promise<ApplyResult> {
  const root = await realpath(target);
  const st = await lstat(root);
  if (!st.isDirectory()) throw invalidArgument(`apply target ${target} is not a directory`);
  const applier = new Applier(root, opts);

  const hash = createHash('sha256');
  let size = 0;
  const ex = extract();
  // Feed the extractor by hand (tar-stream's streamx streams do not finish reliably under stream.pipeline):
  // every byte read is hashed, trailer and anything after it included.
  let stopped = false;
  let pumpErr: unknown;
  let exErr: unknown;
  ex.on('error', (err: unknown) => {
    exErr ??= err;
  });
  const pump = (async () => {
    for await (const chunk of tar as AsyncIterable<Buffer | string>) {
      if (stopped) return;
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      hash.update(buf);
      size += buf.length;
      if (!ex.write(buf)) await new Promise<void>((resolve) => {
        const done = () => {
          ex.off('drain', done);
          ex.off('close', done);
          resolve();
        };
        ex.on('drain', done);
        ex.on('close', done);
      });
    }
    (ex as unknown as { end(): void }).end();
  })().catch((err: unknown) => {
    if (stopped) return; // our own tar.destroy() after a failed entry
    pumpErr = err;
    ex.destroy(err instanceof Error ? err : new Error(String(err)));
  });
  try {
    for await (const entry of ex) {
      await applier.entry(entry.header as PaxHeaders, entry as unknown as EntryData);
    }
  } catch (err) {
    stopped = true;
    ex.destroy();
    tar.destroy();
    await pump;
    // The entry's own failure ("Stream was destroyed") hides the cause: the source's or the parser's error.
    throw err instanceof StrataError ? err : wrapIo(pumpErr ?? exErr ?? err);
  }
  await pump;
  // Anything after the end-of-archive marker still counts: the diffID is the digest of the stream as read.
  await applier.finish();
  return { diffID: `sha256:${hash.digest('hex')}`, size };
}

function wrapIo(err: unknown): unknown {
  if (err instanceof Error && /Unexpected end|Invalid tar header|Invalid header/i.test(err.message)) {
    return invalidArgument(`invalid tar stream: ${err.message}`, err);
  }
  return err;
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}

/** Splits a tar name into clean components; a leading `/` is dropped; `..` above the root is refused. */
export function cleanComponents(name: string, what = name): string[] {
  const out: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (out.length === 0) throw invalidArgument(`tar entry ${JSON.stringify(what)} climbs above the root`);
      out.pop();
      continue;
    }
    if (c.includes('\0')) throw invalidArgument(`tar entry ${JSON.stringify(what)} has a NUL in its name`);
    out.push(c);
  }
  return out;
}

/**
 * Resolves `components` (a directory path relative to `root`) inside `root`, following symlinks met on
 * the way with the root as `/` (continuity's RootPath): `..` stops at the root, absolute link targets
 * start again from the root. Returns the components of the resolved path relative to root.
 */
async function resolveInRoot(root: string, components: string[], what: string): Promise<string[]> {
  const resolved: string[] = [];
  const pending = [...components];
  let links = 0;
  while (pending.length > 0) {
    const c = pending.shift()!;
    if (c === '' || c === '.') continue;
    if (c === '..') {
      resolved.pop();
      continue;
    }
    const candidate = join(root, ...resolved, c);
    let st;
    try {
      st = await lstat(candidate);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) {
        resolved.push(c);
        continue;
      }
      throw err;
    }
    if (!st.isSymbolicLink()) {
      resolved.push(c);
      continue;
    }
    if (++links > MAX_LINKS) throw invalidArgument(`tar entry ${JSON.stringify(what)}: too many symlinks`);
    const dest = await readlink(candidate);
    if (dest.startsWith('/')) resolved.length = 0;
    pending.unshift(...dest.split('/'));
  }
  return resolved;
}

class Applier {
  private readonly isRoot = process.getuid?.() === 0;
  /** Paths this layer created (for opaque whiteouts in 'delete' mode). */
  private readonly unpacked = new Set<string>();
  /** Directories whose times are set at the end, in order of appearance. */
  private readonly dirTimes: { path: string; mtime: Date }[] = [];
  /** xattrs to set at the end, per path (after chown, which would drop security.capability). */
  private readonly xattrs = new Map<string, [string, string][]>();

  constructor(
    private readonly root: string,
    private readonly opts: ApplyOptions,
  ) {}

  async entry(hdr: PaxHeaders, data: EntryData): Promise<void> {
    try {
      await this.apply(hdr, data);
    } finally {
      data.resume(); // drain whatever was not consumed, so that the extractor moves on
    }
  }

  private abs(components: string[]): string {
    return join(this.root, ...components);
  }

  private async apply(hdr: PaxHeaders, data: EntryData): Promise<void> {
    const name = hdr.name;
    const comps = cleanComponents(name);
    if (comps.length === 0) return; // the root itself: ignored, as containerd does
    const base = comps[comps.length - 1]!;
    const parent = await resolveInRoot(this.root, comps.slice(0, -1), name);
    const parentPath = await this.mkparent(parent, name);
    const path = join(parentPath, base);

    if (base.startsWith(WH_PREFIX)) {
      await this.whiteout(name, parentPath, base);
      return;
    }

    const type = hdr.type ?? 'file';
    // Replace what is there, unless a directory meets a directory (merge: only metadata changes).
    const existing = await lstat(path).catch((err: unknown) => {
      if (isErrno(err, 'ENOENT')) return undefined;
      throw err;
    });
    if (existing && !(existing.isDirectory() && type === 'directory')) await this.remove(path);

    const mode = (hdr.mode ?? 0o644) & 0o7777;
    switch (type) {
      case 'directory':
        if (!existing || !existing.isDirectory()) await mkdir(path, { mode: 0o700 });
        break;
      case 'file':
      case 'contiguous-file': {
        const fh = await open(
          path,
          constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
          0o600,
        );
        try {
          for await (const chunk of data) await fh.write(chunk);
        } finally {
          await fh.close();
        }
        break;
      }
      case 'symlink':
        await symlink(hdr.linkname ?? '', path);
        break;
      case 'link': {
        const linkname = hdr.linkname ?? '';
        const lcomps = cleanComponents(linkname, `${name} -> ${linkname}`);
        if (lcomps.length === 0) throw invalidArgument(`tar entry ${JSON.stringify(name)}: hardlink to the root`);
        const lparent = await resolveInRoot(this.root, lcomps.slice(0, -1), name);
        const lpath = this.abs([...lparent, lcomps[lcomps.length - 1]!]);
        const lst = await lstat(lpath).catch(() => undefined);
        if (!lst) throw invalidArgument(`tar entry ${JSON.stringify(name)}: hardlink target ${JSON.stringify(linkname)} does not exist in the layer`);
        if (lst.isDirectory()) throw invalidArgument(`tar entry ${JSON.stringify(name)}: hardlink to a directory`);
        await link(lpath, path); // link(2) does not follow a symlink target: the link is to the symlink itself
        this.unpacked.add(path);
        return; // the inode's metadata was set by the entry that created it
      }
      case 'character-device':
      case 'block-device':
      case 'fifo': {
        if (type !== 'fifo' && !this.isRoot) {
          this.opts.logger?.warn('device ignored: not running as root', { entry: name });
          return;
        }
        const args = ['-m', mode.toString(8), path];
        if (type === 'fifo') args.push('p');
        else args.push(type === 'character-device' ? 'c' : 'b', String(hdr.devmajor ?? 0), String(hdr.devminor ?? 0));
        await run('mknod', args);
        break;
      }
      default:
        throw invalidArgument(`tar entry ${JSON.stringify(name)}: unsupported type ${String(type)}`);
    }
    this.unpacked.add(path);

    if (this.isRoot) await lchown(path, hdr.uid ?? 0, hdr.gid ?? 0);
    if (type !== 'symlink') await chmod(path, mode); // after chown, which clears set-id bits
    const xattrs = Object.entries(hdr.pax ?? {})
      .filter(([k]) => k.startsWith('SCHILY.xattr.'))
      .map(([k, v]): [string, string] => [k.slice('SCHILY.xattr.'.length), v]);
    for (const [k, v] of xattrs) {
      // tar-stream decodes PAX values as UTF-8: a binary value (security.capability, ...) cannot be restored.
      if (v.includes('\uFFFD')) throw notImplemented(`tar entry ${JSON.stringify(name)}: binary xattr ${k} is not supported`);
    }
    if (xattrs.length > 0) this.xattrs.set(path, [...(this.xattrs.get(path) ?? []), ...xattrs]);
    const mtime = hdr.mtime ?? new Date(0);
    if (type === 'directory') this.dirTimes.push({ path, mtime });
    else await lutimes(path, mtime, mtime);
  }

  /** Creates missing parent directories (0755, as containerd) below the root; the path is already resolved. */
  private async mkparent(parent: string[], name: string): Promise<string> {
    let cur = this.root;
    for (const c of parent) {
      cur = join(cur, c);
      const st = await lstat(cur).catch((err: unknown) => {
        if (isErrno(err, 'ENOENT')) return undefined;
        throw err;
      });
      if (!st) {
        await mkdir(cur, { mode: 0o755 });
        await chmod(cur, 0o755);
        this.unpacked.add(cur);
      } else if (!st.isDirectory()) {
        throw invalidArgument(`tar entry ${JSON.stringify(name)}: parent ${JSON.stringify(parent.join('/'))} is not a directory`);
      }
    }
    return cur;
  }

  private async remove(path: string): Promise<void> {
    await rm(path, { recursive: true, force: true });
    for (const p of [...this.xattrs.keys()]) if (p === path || p.startsWith(`${path}/`)) this.xattrs.delete(p);
  }

  private async whiteout(name: string, dir: string, base: string): Promise<void> {
    const overlay = this.opts.whiteouts === 'overlay';
    if (base === WH_OPAQUE) {
      if (overlay) {
        const key = this.opts.userxattr ? 'user.overlay.opaque' : 'trusted.overlay.opaque';
        const list = this.xattrs.get(dir) ?? [];
        list.push([key, 'y']);
        this.xattrs.set(dir, list);
      } else {
        await this.emptyLower(dir);
      }
      return;
    }
    const orig = base.slice(WH_PREFIX.length);
    if (orig === '' || orig === '.' || orig === '..' || orig.includes('/')) {
      throw invalidArgument(`tar entry ${JSON.stringify(name)}: invalid whiteout name`);
    }
    const path = join(dir, orig);
    await this.remove(path);
    if (overlay) {
      if (!this.isRoot) throw notImplemented(`whiteout ${JSON.stringify(name)}: overlay whiteouts need root`);
      await run('mknod', ['-m', '0', path, 'c', '0', '0']);
      await lchown(path, 0, 0);
    }
  }

  /** Removes everything under `dir` that this layer did not add (opaque whiteout, 'delete' mode). */
  private async emptyLower(dir: string): Promise<void> {
    for (const child of await readdir(dir)) {
      const p = join(dir, child);
      if (!this.unpacked.has(p)) {
        await this.remove(p);
      } else {
        const st = await lstat(p);
        if (st.isDirectory()) await this.emptyLower(p);
      }
    }
  }

  async finish(): Promise<void> {
    await this.applyXattrs();
    for (const { path, mtime } of this.dirTimes.reverse()) {
      const st = await lstat(path).catch(() => undefined);
      if (st?.isDirectory()) await utimes(path, mtime, mtime);
    }
  }

  /** Sets all recorded xattrs in one `python3` run (Node has no xattr API). */
  private async applyXattrs(): Promise<void> {
    if (this.xattrs.size === 0) return;
    const batch: [string, string, string][] = [];
    for (const [path, list] of this.xattrs) for (const [k, v] of list) batch.push([path, k, Buffer.from(v, 'utf8').toString('base64')]);
    const script = [
      'import sys, os, json, base64, errno',
      'for p, k, v in json.load(sys.stdin):',
      '    try:',
      '        os.setxattr(p, k, base64.b64decode(v), follow_symlinks=False)',
      '    except OSError as e:',
      "        if e.errno in (errno.EPERM, errno.ENOTSUP) and k.startswith('user.') and os.path.islink(p):",
      '            continue',
      "        sys.stderr.write('%s: %s: %s\\n' % (p, k, e)); sys.exit(1)",
    ].join('\n');
    await new Promise<void>((resolve, reject) => {
      const child = execFile('python3', ['-c', script], (err, _out, stderr) => {
        if (!err) return resolve();
        if (isErrno(err, 'ENOENT')) return reject(notImplemented('setting xattrs needs python3'));
        reject(new StrataError('unknown', `setting xattrs: ${String(stderr).trim() || err.message}`, { cause: err }));
      });
      child.stdin?.end(JSON.stringify(batch));
    });
  }
}
