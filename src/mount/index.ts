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
import { existsSync } from 'node:fs';
import { nativeArtifact, nativeArtifactDefault } from '../core/native.js';
import { mkdir, mkdtemp, readdir, readFile, realpath, rmdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';
import { promisify } from 'node:util';
import type { Mount } from '../core/mount.js';
import { StrataError, unknown } from '../core/errdefs.js';
import { parseIDMappings } from '../core/idmap.js';

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

async function mountOne(m: Mount, target: string, hooks: MountHooks = {}): Promise<void> {
  const { uidmap, gidmap, rest } = splitIdmapOptions(m.options);
  // containerd remaps only when both are given; a lone uidmap= or gidmap= is dropped, as its parser drops it.
  if (uidmap !== undefined && gidmap !== undefined) {
    parseIDMappings(uidmap);
    parseIDMappings(gidmap);
    if (m.type === 'overlay') return mountIdmappedOverlay({ ...m, options: rest }, target, uidmap, gidmap, hooks);
    if (isBindMount(m)) {
      // One idmapped clone of the source attached at target (containerd binds, then stacks an idmapped clone of
      // the bind on it; the result is the same, with one mount instead of two).
      const ro = rest.includes('ro') && !rest.includes('rw') ? ['--ro'] : [];
      const rec = rest.includes('rbind') ? ['--recursive'] : [];
      await runIdmapHelper([...ro, ...rec, uidmap, gidmap, m.source, target]);
      return;
    }
    await mountPlain({ ...m, options: rest }, target);
    try {
      await runIdmapHelper([uidmap, gidmap, target, target]);
    } catch (err) {
      await unmount(target).catch(() => undefined);
      throw err;
    }
    return;
  }
  return mountPlain({ ...m, options: rest }, target);
}

async function mountPlain(m: Mount, target: string): Promise<void> {
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
export async function mountAll(mounts: Mount[], target: string, hooks: MountHooks = {}): Promise<void> {
  let done = 0;
  try {
    for (const m of mounts) {
      await mountOne(m, target, hooks);
      done++;
    }
  } catch (err) {
    for (; done > 0; done--) await unmount(target).catch(() => undefined);
    throw err;
  }
}

/* ------------------------------------------------------------------------------------------------------------
 * Idmapped mounts (containerd 2.x: the `uidmap=` / `gidmap=` options the overlay snapshotter returns).
 * ---------------------------------------------------------------------------------------------------------- */

/**
 * Fault injection for tests only: how a temporary idmapped lower is detached. The default is a lazy unmount
 * (umount -l, MNT_DETACH, as containerd since #10721). A test passes a detach that fails, or one that leaves
 * the mount in place, to prove what follows never removes data.
 */
export interface MountHooks {
  detachTemp?: (dir: string) => Promise<void>;
}

/** Takes `uidmap=` and `gidmap=` out of a mount's options (the last of each counts). */
export function splitIdmapOptions(options: string[]): { uidmap?: string; gidmap?: string; rest: string[] } {
  let uidmap: string | undefined;
  let gidmap: string | undefined;
  const rest: string[] = [];
  for (const o of options) {
    if (o.startsWith('uidmap=')) uidmap = o.slice('uidmap='.length);
    else if (o.startsWith('gidmap=')) gidmap = o.slice('gidmap='.length);
    else rest.push(o);
  }
  return { uidmap, gidmap, rest };
}

/**
 * The native helper (native/idmap-mount.c, built by scripts/setup.sh): Node has no open_tree / mount_setattr /
 * move_mount. STRATA_IDMAP_HELPER overrides the path.
 */
export function idmapHelperPath(): string {
  if (process.env.STRATA_IDMAP_HELPER) return process.env.STRATA_IDMAP_HELPER;
  return nativeArtifact('strata-idmap-mount') ?? nativeArtifactDefault('strata-idmap-mount');
}

/** Whether the helper is there (it is built by scripts/setup.sh). */
export const idmapHelperAvailable = (): boolean => existsSync(idmapHelperPath());

async function runIdmapHelper(args: string[]): Promise<void> {
  try {
    await run(idmapHelperPath(), args, { timeout: 30_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string; code?: string };
    if (e.code === 'ENOENT') throw unknown('idmapped mount: the helper strata-idmap-mount is not built (scripts/setup.sh builds it)');
    // The helper names the failing call and the kernel's reason; paths are left out of the message.
    const reason = (e.stderr || e.message).trim().replace(/ \/\S*/g, '');
    throw unknown(`idmapped mount: ${reason}`);
  }
}

/**
 * An overlay over idmapped lowers, as containerd 2.x mounts one: each lower directory gets a read-only
 * idmapped clone in a fresh temporary directory, the overlay is mounted with those as its lowers (the upper
 * stays as it is: what the container writes lands there with its host IDs), and the temporary mounts are
 * detached (the overlay keeps its own private references to its layers).
 *
 * The #10721 guarantee: a temporary directory is only ever removed with rmdir (never a recursive removal), and
 * only after /proc/self/mountinfo shows it is no longer a mount point. When one cannot be detached, nothing of
 * it is removed, the overlay just mounted is undone, and the call fails saying so.
 */
async function mountIdmappedOverlay(m: Mount, target: string, uidmap: string, gidmap: string, hooks: MountHooks): Promise<void> {
  const { lowerdirs } = parseOverlayOptions(m.options);
  if (lowerdirs.length === 0) throw unknown('idmapped overlay: failed to parse overlay lowerdir\'s from given options');
  const tmp = await mkdtemp(join(tmpdir(), 'strata-idmap-'));
  const temps = lowerdirs.map((_, i) => join(tmp, String(i)));
  let mountErr: unknown;
  let mounted = false;
  try {
    for (const d of temps) await mkdir(d, { mode: 0o700 });
    const pairs = lowerdirs.flatMap((l, i) => [l, temps[i]!]);
    await runIdmapHelper(['--ro', uidmap, gidmap, ...pairs]);
    const options = m.options.map((o) => (parseOverlayDirOption(o)?.key === 'lowerdir' ? formatOverlayDirOption('lowerdir', temps) : o));
    await mountPlain({ ...m, options }, target);
    mounted = true;
  } catch (err) {
    mountErr = err;
  }
  const left = await releaseTempLowers(tmp, temps, hooks);
  if (left > 0) {
    // The temporary mounts stay (and their directories with them); the overlay over them is not handed out.
    if (mounted) await unmount(target).catch(() => undefined);
    throw unknown(
      `idmapped overlay: ${left} of ${temps.length} temporary idmapped lower mount(s) could not be detached; ` +
        'they were left in place and nothing was removed' +
        (mountErr ? ` (and the overlay mount failed: ${mountErr instanceof Error ? mountErr.message : String(mountErr)})` : ''),
    );
  }
  if (mountErr) throw mountErr;
}

/**
 * Detaches the temporary lowers and removes their (empty) directories; returns how many are still mount
 * points, which are left alone. Never removes anything recursively.
 */
async function releaseTempLowers(tmp: string, temps: string[], hooks: MountHooks): Promise<number> {
  const detach = hooks.detachTemp ?? ((dir: string) => run('umount', ['-l', dir]).then(() => undefined));
  let left = 0;
  for (const dir of temps) {
    if (await isMountPoint(dir)) {
      try {
        await detach(dir);
      } catch {
        // Judged below by what mountinfo says, not by the detach's own answer.
      }
      if (await isMountPoint(dir)) {
        left++;
        continue;
      }
    }
    // rmdir only: if anything is still there (it should be empty), it stays.
    await rmdir(dir).catch(() => undefined);
  }
  if (left === 0) await rmdir(tmp).catch(() => undefined);
  return left;
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
    try {
      await mountAll(mounts, dir);
    } catch (err) {
      // The mounts are the caller's (a Diff or Apply request's); the temporary mount point is the daemon's own
      // path and means nothing to the client: mount(8)'s message names it twice (found by bench/fuzz.ts).
      // A mount the kernel cannot even try (a file system type it does not know, a source that does not exist, an
      // option it does not take) is the request's fault: invalid argument.
      if (err instanceof StrataError) {
        const detail = err.detail.split(dir).join('<temporary mount point>');
        const kind = /unknown filesystem type|special device \S* does not exist|wrong fs type, bad option/.test(detail) ? 'invalid argument' : err.kind;
        throw new StrataError(kind, detail, { cause: err });
      }
      throw err;
    }
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
