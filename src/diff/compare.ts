/**
 * Computing the layer between two mount lists, as containerd 1.6's walking differ does (continuity's fs.Changes
 * feeding archive's ChangeWriter), plus the overlay fast path containerd 1.6 does not have. This module chooses
 * how and sees the trees through mounts; the jobs themselves are elsewhere: walking a tree (walk.ts), finding
 * the changes (changes.ts, with xattrs read through xattrs.ts), writing them as a tar (change-tar.ts, headers
 * from tar.ts).
 *
 * The overlay fast path is taken when the upper tree is one overlay mount whose lower layers are exactly the
 * lower tree, and python3 can read its xattrs (opaque directories must be seen). Not when the overlay may hold
 * metacopy files or redirected directories (metacopy=on, redirect_dir=on, or those as the kernel's defaults):
 * then only the merged view is right, and both trees are walked.
 */
import { readFile, realpath } from 'node:fs/promises';
import { StrataError } from '../core/errdefs.js';
import type { Mount } from '../core/mount.js';
import { isBindMount, parseOverlayOptions, readonlyMounts, withTempMount, type OverlayOptions } from '../mount/index.js';
import { changesTar } from './change-tar.js';
import { overlayChanges, walkChanges } from './changes.js';
import { XattrReader } from './xattrs.js';

/**
 * A tree to read, seen through mounts: none is the empty tree (null), a single bind mount is read at its
 * source, anything else is mounted read-only on a temporary directory for the duration of fn.
 */
export async function withReadonlyTree<T>(mounts: Mount[], fn: (root: string | null) => Promise<T>): Promise<T> {
  if (mounts.length === 0) return fn(null);
  if (mounts.length === 1 && isBindMount(mounts[0]!)) return fn(mounts[0]!.source);
  return withTempMount(readonlyMounts(mounts), fn);
}

async function kernelDefault(param: string): Promise<boolean> {
  try {
    return (await readFile(`/sys/module/overlay/parameters/${param}`, 'utf8')).trim() === 'Y';
  } catch {
    return false;
  }
}

/** Whether upperdir entries can be metacopy files or redirected directories (then only the merged view is right). */
async function mayRedirect(o: OverlayOptions): Promise<boolean> {
  if (o.metacopy === 'on' || (o.metacopy === undefined && (await kernelDefault('metacopy')))) return true;
  if (o.redirectDir === 'on' || (o.redirectDir === undefined && (await kernelDefault('redirect_dir')))) return true;
  return false;
}

/** The directories making up a tree, top first, when they can be listed: [] for none. */
function layerDirs(mounts: Mount[]): string[] | null {
  if (mounts.length === 0) return [];
  if (mounts.length !== 1) return null;
  const m = mounts[0]!;
  if (isBindMount(m)) return [m.source];
  if (m.type !== 'overlay') return null;
  const o = parseOverlayOptions(m.options);
  if (o.lowerdirs.length === 0) return null;
  return o.upperdir ? [o.upperdir, ...o.lowerdirs] : o.lowerdirs;
}

/**
 * When `upper` is one overlay mount with an upperdir over exactly the layers of `lower`: its upperdir and
 * whether it uses userxattr. Else null.
 */
export async function overlayUpperOf(lower: Mount[], upper: Mount[]): Promise<{ upperdir: string; userxattr: boolean } | null> {
  if (upper.length !== 1 || upper[0]!.type !== 'overlay') return null;
  const o = parseOverlayOptions(upper[0]!.options);
  if (!o.upperdir || o.lowerdirs.length === 0) return null;
  const dirs = layerDirs(lower);
  if (!dirs || dirs.length !== o.lowerdirs.length) return null;
  if (![o.upperdir, ...o.lowerdirs, ...dirs].every((d) => d.startsWith('/'))) return null;
  if (await mayRedirect(o)) return null;
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

