/**
 * What the EROFS snapshotter needs from the host: building an image from a directory (mkfs.erofs, Debian's
 * erofs-utils), mounting one read-only (through a loop device, which mount(8) sets up with autoclear, so the
 * device goes with the unmount), and telling whether a directory is an EROFS mount.
 */
import { execFile } from 'node:child_process';
import { closeSync, fdatasyncSync, openSync } from 'node:fs';
import { access, readFile, statfs } from 'node:fs/promises';
import { constants } from 'node:fs';
import { promisify } from 'node:util';
import { unknown } from '../../core/errdefs.js';
import { isMountPoint, mountAll, unmount } from '../../mount/index.js';

const run = promisify(execFile);

/** statfs(2)'s f_type of an EROFS mount (EROFS_SUPER_MAGIC_V1). */
export const EROFS_SUPER_MAGIC = 0xe0f5e1e2;

/** The directories where mkfs.erofs is looked for (a daemon's PATH may be minimal). */
const SEARCH = ['/usr/sbin', '/usr/bin', '/sbin', '/bin', '/usr/local/sbin', '/usr/local/bin'];

/** The path of mkfs.erofs, or undefined when erofs-utils is not installed. */
export async function findMkfsErofs(): Promise<string | undefined> {
  const dirs = [...(process.env.PATH ?? '').split(':').filter((d) => d.startsWith('/')), ...SEARCH];
  for (const d of dirs) {
    const p = `${d}/mkfs.erofs`;
    try {
      await access(p, constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return undefined;
}

/** Where the host checks look (tests point them at fake files). */
export interface HostPaths {
  /** mkfs.erofs, or null to look it up (findMkfsErofs). */
  mkfs?: string | null;
  filesystems?: string;
  loopControl?: string;
}

/**
 * Why this host cannot run the EROFS snapshotter, or undefined when it can: mkfs.erofs must exist, the kernel
 * must know erofs (/proc/filesystems) and loop devices (/dev/loop-control), since mount(8) attaches images to one.
 */
export async function erofsUnsupportedReason(paths: HostPaths = {}): Promise<string | undefined> {
  const mkfs = paths.mkfs === undefined || paths.mkfs === null ? await findMkfsErofs() : paths.mkfs;
  const runnable = mkfs !== undefined && (await access(mkfs, constants.X_OK).then(() => true, () => false));
  if (!runnable) return 'mkfs.erofs not found (install erofs-utils)';
  const filesystems = await readFile(paths.filesystems ?? '/proc/filesystems', 'utf8').catch(() => '');
  if (!/\terofs$/m.test(filesystems)) return 'EROFS unsupported by the kernel: erofs is not in /proc/filesystems (modprobe erofs)';
  try {
    await access(paths.loopControl ?? '/dev/loop-control', constants.R_OK | constants.W_OK);
  } catch {
    return 'loop devices unsupported: /dev/loop-control is missing (modprobe loop)';
  }
  return undefined;
}

/**
 * Builds an EROFS image of `dir` at `image` (replaced if present) and syncs it. Owners, modes, xattrs (overlay's
 * trusted.overlay.opaque among them), devices (overlay's whiteouts are 0/0 character devices), hard links and
 * mtimes (--preserve-mtime) are kept, so an image of an overlay upper directory, used as a lower, shows exactly
 * what the upper directory did.
 */
export async function buildImage(mkfs: string, dir: string, image: string): Promise<void> {
  try {
    await run(mkfs, ['--quiet', '--preserve-mtime', image, dir], { maxBuffer: 4 << 20 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    // mkfs.erofs names the directory in its errors; the message keeps only what it says about it.
    const detail = (e.stderr || e.message).trim().split('\n').slice(-3).join('; ').replaceAll(dir, '<layer>').replaceAll(image, '<image>');
    throw unknown(`failed to convert the layer into an EROFS image: ${detail}`);
  }
  const fd = openSync(image, 'r');
  try {
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Whether `dir` is the root of an EROFS mount. */
export async function isErofsMount(dir: string): Promise<boolean> {
  try {
    return (await statfs(dir)).type === EROFS_SUPER_MAGIC && (await isMountPoint(dir));
  } catch {
    return false;
  }
}

/** The mount of an image as containerd's snapshotter returns it: read-only, through a loop device. */
export const imageMount = (image: string) => ({ type: 'erofs', source: image, options: ['ro', 'loop'] });

/** Mounts `image` read-only on `dir`. */
export async function mountImage(image: string, dir: string): Promise<void> {
  await mountAll([imageMount(image)], dir);
}

/** Unmounts whatever is mounted on `dir` (nothing to do when nothing is). */
export async function unmountImage(dir: string): Promise<void> {
  await unmount(dir);
}
