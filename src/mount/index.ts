/**
 * Performing the mounts a snapshotter returns, the way containerd's mount package does: "bind" mounts with
 * bind/rbind options, anything else by type. Overlay option strings longer than the kernel's one-page limit
 * are compacted as containerd compacts them: every layer path is made relative to their common directory,
 * and the mount runs with that directory as its working directory.
 *
 * This is also the one place that reads and writes overlay options (lowerdir=, upperdir=, workdir=,
 * userxattr, metacopy=, redirect_dir=): the snapshotters that build them and the differ that reads them back
 * go through parseOverlayDirOption / formatOverlayDirOption / parseOverlayOptions.
 */
import { crashPoint } from '../core/crashpoint.js';
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, realpath, rmdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';
import { promisify } from 'node:util';
import type { Mount } from '../core/mount.js';
import { StrataError, unknown } from '../core/errdefs.js';

const run = promisify(execFile);

/* ------------------------------------------------------------------------------------------------------------
 * Overlay options.
 * ---------------------------------------------------------------------------------------------------------- */

/** The overlay options that name directories; lowerdir lists several, top first, separated by ':'. */
export type OverlayDirKey = 'lowerdir' | 'upperdir' | 'workdir';

const OVERLAY_DIR_KEYS: readonly OverlayDirKey[] = ['lowerdir', 'upperdir', 'workdir'];

/** `lowerdir=/a:/b` -> { key: 'lowerdir', value: '/a:/b' }; undefined for an option that names no directory. */
export function parseOverlayDirOption(option: string): { key: OverlayDirKey; value: string } | undefined {
  for (const key of OVERLAY_DIR_KEYS) if (option.startsWith(`${key}=`)) return { key, value: option.slice(key.length + 1) };
  return undefined;
}

/** The option naming `dirs` (several only for lowerdir, top first). */
export function formatOverlayDirOption(key: OverlayDirKey, dirs: string[]): string {
  return `${key}=${dirs.join(':')}`;
}

/** What an overlay mount's options say about its layers and the xattrs it keeps. */
export interface OverlayOptions {
  /** The lower directories, top first (empty entries dropped). */
  lowerdirs: string[];
  upperdir?: string;
  workdir?: string;
  /** The overlay keeps its xattrs in user.overlay.* (opaque directories: user.overlay.opaque). */
  userxattr: boolean;
  /** The values of metacopy= and redirect_dir=, when given. */
  metacopy?: string;
  redirectDir?: string;
}

/**
 * Reads an overlay mount's options. When an option is repeated the last one counts, as the kernel and
 * containerd's getOverlayPath read them.
 */
export function parseOverlayOptions(options: string[]): OverlayOptions {
  const out: OverlayOptions = { lowerdirs: [], userxattr: false };
  for (const o of options) {
    const dir = parseOverlayDirOption(o);
    if (dir?.key === 'lowerdir') out.lowerdirs = dir.value.split(':').filter((d) => d !== '');
    else if (dir?.key === 'upperdir') out.upperdir = dir.value;
    else if (dir?.key === 'workdir') out.workdir = dir.value;
    else if (o === 'userxattr') out.userxattr = true;
    else if (o.startsWith('metacopy=')) out.metacopy = o.slice('metacopy='.length);
    else if (o.startsWith('redirect_dir=')) out.redirectDir = o.slice('redirect_dir='.length);
  }
  return out;
}

/** A bind mount: by type, or by the bind/rbind option (what containerd's mount package looks at). */
export const isBindMount = (m: Mount) => m.type === 'bind' || m.options.includes('bind') || m.options.includes('rbind');

/* ------------------------------------------------------------------------------------------------------------
 * Mounting.
 * ---------------------------------------------------------------------------------------------------------- */

/** The kernel takes mount data up to one page; containerd keeps 512 bytes of slack. */
const MAX_OPTIONS = 4096 - 512;

function commonDir(paths: string[]): string {
  const split = paths.map((p) => p.split(sep));
  const first = split[0]!;
  let n = first.length;
  for (const parts of split.slice(1)) {
    let i = 0;
    while (i < n && i < parts.length && parts[i] === first[i]) i++;
    n = i;
  }
  return first.slice(0, n).join(sep) || sep;
}

/** Rewrites an overlay mount's options relative to the layers' common directory when they are too long. */
export function compactOverlayOptions(options: string[]): { options: string[]; cwd?: string } {
  if (options.join(',').length < MAX_OPTIONS) return { options };
  const paths: string[] = [];
  for (const o of options) {
    const dir = parseOverlayDirOption(o);
    if (dir) paths.push(...dir.value.split(':').filter((x) => x.startsWith('/')));
  }
  if (paths.length === 0) return { options };
  const cwd = commonDir(paths);
  const rewritten = options.map((o) => {
    const dir = parseOverlayDirOption(o);
    if (!dir) return o;
    return formatOverlayDirOption(dir.key, dir.value.split(':').map((x) => (x.startsWith('/') ? relative(cwd, x) || '.' : x)));
  });
  return { options: rewritten, cwd };
}

async function mountOne(m: Mount, target: string): Promise<void> {
  const isBind = isBindMount(m);
  let options = m.options;
  let cwd: string | undefined;
  if (m.type === 'overlay') ({ options, cwd } = compactOverlayOptions(options));
  const args = isBind ? [] : ['-t', m.type];
  if (options.length > 0) args.push('-o', options.join(','));
  args.push(m.source, target);
  try {
    await run('mount', args, { cwd });
    // A read-only bind needs a remount on kernels/tools that ignore ro on the first call.
    if (isBind && options.includes('ro')) {
      await run('mount', ['-o', 'remount,ro,bind', target]).catch(() => undefined);
    }
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw unknown(`mount ${m.type} ${m.source} on ${target}: ${(e.stderr || e.message).trim()}`);
  }
}

/** Mounts every mount onto target, in order. On failure, whatever was mounted is undone. */
export async function mountAll(mounts: Mount[], target: string): Promise<void> {
  let done = 0;
  try {
    for (const m of mounts) {
      await mountOne(m, target);
      done++;
    }
  } catch (err) {
    for (; done > 0; done--) await unmount(target).catch(() => undefined);
    throw err;
  }
}

/** Unmounts target (all stacked mounts on it, since mountAll may stack several). */
export async function unmount(target: string): Promise<void> {
  try {
    await run('umount', [target]);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    const msg = (e.stderr || e.message).trim();
    if (/not mounted|no mount point/i.test(msg)) return;
    throw new StrataError('unknown', `umount ${target}: ${msg}`);
  }
  // Stacked mounts: keep going until the target is no longer a mount point.
  while (await isMountPoint(target)) await run('umount', [target]);
}

/** Undoes the octal escapes of a mountinfo path (space, tab, newline and backslash are written as \\ooo). */
const unescapeMountinfo = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));

/**
 * Whether `path` is a mount point of this process's mount namespace: its resolved path is the mount point of
 * an entry of /proc/self/mountinfo (what mountpoint(1) falls back to; read here rather than run as a process,
 * which costs a fork and an exec on every task delete).
 */
export async function isMountPoint(path: string): Promise<boolean> {
  let resolved: string;
  let info: string;
  try {
    resolved = await realpath(path);
    info = await readFile('/proc/self/mountinfo', 'utf8');
  } catch {
    return false;
  }
  for (const line of info.split('\n')) {
    // id parent major:minor root mount-point ...
    let at = 0;
    for (let f = 0; f < 4 && at >= 0; f++) at = line.indexOf(' ', at + 1);
    if (at < 0) continue;
    const end = line.indexOf(' ', at + 1);
    const field = line.slice(at + 1, end < 0 ? undefined : end);
    if (field === resolved || (field.includes('\\') && unescapeMountinfo(field) === resolved)) return true;
  }
  return false;
}

/** Mounts on a fresh temporary directory, runs fn with its path, then unmounts and removes it. */
export async function withTempMount<T>(mounts: Mount[], fn: (root: string) => Promise<T>): Promise<T> {
  // The pid in the name tells whose it is: what a process that died left is found and undone (unmountLeftovers).
  const dir = await mkdtemp(join(tmpdir(), `strata-mount-${process.pid}-`));
  try {
    crashPoint('mount.temp.before-mount');
    await mountAll(mounts, dir);
    crashPoint('mount.temp.after-mount');
    try {
      return await fn(dir);
    } finally {
      crashPoint('mount.temp.before-unmount');
      await unmount(dir);
      crashPoint('mount.temp.after-unmount');
    }
  } finally {
    // rmdir, never rm -r: if the unmount failed, the directory still shows the snapshot's data.
    await rmdir(dir).catch(() => undefined);
    crashPoint('mount.temp.after-rmdir');
  }
}

/** Whether a process with this pid exists (a pid that another process reuses counts: its mounts stay). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Undoes the temporary mounts (withTempMount) of processes that died with them in place (a crash, a kill -9
 * between the mount and the unmount): unmounts each and removes its directory. Returns how many it undid; what
 * it cannot undo is left (and logged by the caller through onError).
 */
export async function unmountLeftovers(onError: (dir: string, err: unknown) => void = () => undefined): Promise<number> {
  let names: string[];
  try {
    names = await readdir(tmpdir());
  } catch {
    return 0;
  }
  let undone = 0;
  for (const name of names) {
    const m = /^strata-mount-(\d+)-/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || alive(pid)) continue;
    const dir = join(tmpdir(), name);
    try {
      if (await isMountPoint(dir)) await unmount(dir);
      await rmdir(dir);
      undone++;
    } catch (err) {
      onError(dir, err);
    }
  }
  return undone;
}

/** containerd's readonlyMounts: overlays lose upperdir/workdir (the upperdir becomes the top lowerdir), others get ro. */
export function readonlyMounts(mounts: Mount[]): Mount[] {
  return mounts.map((m) => {
    if (m.type === 'overlay') {
      let upper = '';
      const out: string[] = [];
      for (const o of m.options) {
        const dir = parseOverlayDirOption(o);
        if (dir?.key === 'upperdir') upper = dir.value;
        else if (dir?.key !== 'workdir' && o !== 'volatile') out.push(o);
      }
      if (!upper) return { ...m, options: out };
      const lowerOf = (o: string) => {
        const dir = parseOverlayDirOption(o);
        return dir?.key === 'lowerdir' ? dir.value : undefined;
      };
      const hasLower = out.some((o) => lowerOf(o) !== undefined);
      return {
        ...m,
        options: hasLower
          ? out.map((o) => {
              const lower = lowerOf(o);
              return lower === undefined ? o : formatOverlayDirOption('lowerdir', [upper, lower]);
            })
          : [...out, formatOverlayDirOption('lowerdir', [upper])],
      };
    }
    return { ...m, options: [...m.options.filter((o) => o !== 'rw' && o !== 'ro'), 'ro'] };
  });
}
