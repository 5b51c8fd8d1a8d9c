/**
 * Copying a snapshot's tree into a new directory, keeping what an image layer carries: type, mode (with
 * setuid/setgid/sticky), owner, atime/mtime, symlinks as symlinks, hardlinks as hardlinks within the copy,
 * device nodes, fifos, sockets and extended attributes.
 *
 * Two implementations:
 *  - `cp`: GNU coreutils `cp -a --reflink=auto`, one process for the whole tree. Keeps everything above,
 *    including xattrs and nanosecond times, and clones extents where the filesystem can. The default.
 *  - `node`: a walk in Node. Node has no xattr, mknod or nanosecond utimensat API, so it loses xattrs,
 *    rounds times to what libuv passes (about a microsecond), creates device nodes and fifos with the
 *    `mknod` command and sockets by binding one. The fallback when `cp` is not GNU's.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import {
  chmod,
  chown,
  copyFile,
  lchown,
  link,
  lstat,
  lutimes,
  mkdir,
  open,
  readdir,
  readlink,
  symlink,
  utimes,
} from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export type CopyMethod = 'cp' | 'node';

/** Copies the contents and attributes of directory `src` into the existing directory `dst`. */
export type CopyTree = (src: string, dst: string) => Promise<void>;

/** `cp -a --reflink=auto`: contents of src into dst, dst taking src's own mode, owner, times and xattrs. */
export async function copyWithCp(src: string, dst: string): Promise<void> {
  try {
    await run('cp', ['-a', '--reflink=auto', '--no-target-directory', '--', src, dst], { maxBuffer: 1 << 20 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    // The daemon's paths stay out of the message (it reaches clients); a full disk keeps its errno, so that it
    // is reported as one (RESOURCE_EXHAUSTED).
    const said = (e.stderr || e.message).trim().split(src).join('<parent>').split(dst).join('<snapshot>');
    const code = /No space left on device/.test(said) ? 'ENOSPC' : /Disk quota exceeded/.test(said) ? 'EDQUOT' : undefined;
    throw Object.assign(new Error(`cp -a: ${said}`, { cause: err }), code ? { code } : {});
  }
}

/** Whether `cp` on PATH is GNU coreutils' (which has -a with xattrs and --reflink). */
export async function hasGnuCp(): Promise<boolean> {
  try {
    const { stdout } = await run('cp', ['--version']);
    return /GNU coreutils/.test(stdout);
  } catch {
    return false;
  }
}

// Linux dev_t encoding (glibc's gnu_dev_major/minor), on bigints so large numbers stay exact.
const devMajor = (rdev: bigint) => Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
const devMinor = (rdev: bigint) => Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));

/** Nanosecond times as the seconds libuv takes (close to a microsecond of precision). */
const seconds = (ns: bigint) => Number(ns / 1000n) / 1e6;

type BigStats = Awaited<ReturnType<typeof lstatBig>>;
const lstatBig = (p: string) => lstat(p, { bigint: true });

/**
 * Creates a unix socket file at target: binds a listening socket beside it (through /proc/self/fd, which
 * keeps the path under the 108-byte sun_path limit however deep target is), hardlinks it to target, then
 * closes the server (which unlinks the temporary name).
 */
async function makeSocket(target: string): Promise<void> {
  const dir = await open(dirname(target), 'r');
  const tmp = `.strata-sock-${randomUUID().slice(0, 8)}`;
  const server = createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(`/proc/self/fd/${dir.fd}/${tmp}`, () => resolve());
    });
    await link(join(dirname(target), tmp), target);
  } finally {
    if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    await dir.close();
  }
}

/** A bounded pool: at most `limit` tasks in flight. */
function limiter(limit: number) {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async <T>(fn: () => Promise<T>): Promise<T> => {
    if (active >= limit) await new Promise<void>((r) => waiting.push(r));
    active++;
    try {
      return await fn();
    } finally {
      active--;
      waiting.shift()?.();
    }
  };
}

/**
 * The Node walk. Files are copied with copyFile (FICLONE where the filesystem supports it), then owner,
 * mode and times are set in that order (chown clears setuid bits, so mode comes after it); a directory's
 * owner, mode and times are set after everything inside it exists.
 */
export async function copyWithNode(src: string, dst: string): Promise<void> {
  const files = limiter(32);
  /** First path in the copy of each multiply-linked inode, by source inode; a promise so concurrent links wait. */
  const linked = new Map<string, Promise<string>>();

  const attrs = async (target: string, st: BigStats, isLink: boolean) => {
    await (isLink ? lchown : chown)(target, Number(st.uid), Number(st.gid));
    if (!isLink) await chmod(target, Number(st.mode & 0o7777n));
    await (isLink ? lutimes : utimes)(target, seconds(st.atimeNs), seconds(st.mtimeNs));
  };

  const copyEntry = async (source: string, target: string, st: BigStats): Promise<void> => {
    if (st.isDirectory()) return copyDir(source, target, st);
    if (st.nlink > 1n && !st.isSymbolicLink()) {
      const key = `${st.dev}:${st.ino}`;
      const first = linked.get(key);
      if (first) {
        await link(await first, target);
        return;
      }
      let done!: (p: string) => void;
      let failed!: (e: unknown) => void;
      linked.set(key, new Promise<string>((res, rej) => ((done = res), (failed = rej))));
      linked.get(key)!.catch(() => undefined);
      try {
        await files(() => copyOne(source, target, st));
        done(target);
      } catch (err) {
        failed(err);
        throw err;
      }
      return;
    }
    await files(() => copyOne(source, target, st));
  };

  const copyOne = async (source: string, target: string, st: BigStats): Promise<void> => {
    if (st.isFile()) {
      await copyFile(source, target, constants.COPYFILE_FICLONE);
    } else if (st.isSymbolicLink()) {
      await symlink(await readlink(source), target);
      await attrs(target, st, true);
      return;
    } else if (st.isFIFO()) {
      await run('mknod', [target, 'p']);
    } else if (st.isCharacterDevice() || st.isBlockDevice()) {
      await run('mknod', [target, st.isCharacterDevice() ? 'c' : 'b', String(devMajor(st.rdev)), String(devMinor(st.rdev))]);
    } else if (st.isSocket()) {
      await makeSocket(target);
    } else {
      return;
    }
    await attrs(target, st, false);
  };

  const copyDir = async (source: string, target: string, st: BigStats): Promise<void> => {
    await mkdir(target, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    const entries = await readdir(source);
    await Promise.all(
      entries.map(async (name) => {
        const s = join(source, name);
        await copyEntry(s, join(target, name), await lstatBig(s));
      }),
    );
    await attrs(target, st, false);
  };

  const st = await lstatBig(src);
  if (!st.isDirectory()) throw new Error(`source ${src} is not a directory`);
  await copyDir(src, dst, st);
}

export function copier(method: CopyMethod): CopyTree {
  return method === 'cp' ? copyWithCp : copyWithNode;
}
