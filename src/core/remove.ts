/**
 * Removing a directory tree of any depth: the one remover every snapshotter's removal and cleanup and the
 * layer applier use.
 *
 * Node's fs.rm (recursive) names every entry by its full path, so it fails with ENAMETOOLONG on a tree deeper
 * than PATH_MAX (4096 bytes) allows from its top, and such trees are easy to get: a layer with a 100,000-level
 * path makes ~2,000 nested directories before the applier's own path is too long, and renaming the snapshot to
 * a longer name (a trash name) pushes the bottom out of reach. Node has no unlinkat/openat, and chdir is
 * process-wide (and refused in worker threads), so the deep parts are brought up instead: the tree is walked
 * with paths kept within SHALLOW bytes of the top's, and a directory met below that is renamed to a fresh name directly in
 * the top directory (rename(2) needs both paths to fit, and both do), and entries are removed depth-first
 * with an explicit stack (fs.rm's recursion also runs out of stack on deep trees). The walk runs only when the
 * plain fs.rm failed that way, so ordinary trees cost what they did.
 */
import { lstatSync, readdirSync, renameSync, rmdirSync, rmSync, unlinkSync, type Dirent } from 'node:fs';
import { lstat, readdir, rename, rm, rmdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * During the walk, directory paths are kept at most this much longer than the top's: their entries then fit
 * PATH_MAX by far, and each call's path lookup stays short (a walk at 2 KB paths took 8 s for 6,000 levels).
 */
const SHALLOW = 512;

const errnoOf = (err: unknown): string | undefined =>
  typeof err === 'object' && err !== null ? (err as NodeJS.ErrnoException).code : undefined;

const limitFor = (top: string) => top.length + SHALLOW;

let serial = 0;
const liftedName = () => `.strata-rm-deep-${process.pid}-${++serial}`;

/** Removes `path` (a directory tree of any depth, a file, or nothing: a missing path is not an error). */
export async function removeTree(path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true });
    return;
  } catch (err) {
    if (!tooDeep(err)) throw err;
  }
  const limit = limitFor(path);
  // Depth-first, each directory removed once its entries are: an explicit stack, no recursion.
  const stack: { dir: string; listed: boolean }[] = [{ dir: path, listed: false }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    if (top.listed) {
      stack.pop();
      await rmdir(top.dir).catch(ignoreMissing);
      continue;
    }
    top.listed = true;
    let entries: Dirent[];
    try {
      entries = await readdir(top.dir, { withFileTypes: true });
    } catch (err) {
      if (errnoOf(err) === 'ENOTDIR') await unlink(top.dir).catch(ignoreMissing);
      else ignoreMissing(err);
      stack.pop();
      continue;
    }
    for (const e of entries) {
      const child = join(top.dir, e.name);
      if (!e.isDirectory()) {
        await unlink(child).catch(ignoreMissing);
        continue;
      }
      if (child.length <= limit) {
        stack.push({ dir: child, listed: false });
        continue;
      }
      let lifted = join(path, liftedName());
      // A fresh name (rename onto an existing empty directory would replace it rather than fail).
      while (await lstat(lifted).then(() => true, () => false)) lifted = join(path, liftedName());
      await rename(child, lifted);
      // Below `path` itself, which is removed last: the lifted tree goes first (it is above it on the stack).
      stack.push({ dir: lifted, listed: false });
    }
  }
}

/** removeTree with synchronous calls (for the applier's worker thread). */
export function removeTreeSync(path: string): void {
  try {
    rmSync(path, { recursive: true, force: true });
    return;
  } catch (err) {
    if (!tooDeep(err)) throw err;
  }
  const limit = limitFor(path);
  const stack: { dir: string; listed: boolean }[] = [{ dir: path, listed: false }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    if (top.listed) {
      stack.pop();
      quiet(() => rmdirSync(top.dir));
      continue;
    }
    top.listed = true;
    let entries: Dirent[];
    try {
      entries = readdirSync(top.dir, { withFileTypes: true });
    } catch (err) {
      if (errnoOf(err) === 'ENOTDIR') quiet(() => unlinkSync(top.dir));
      else ignoreMissing(err);
      stack.pop();
      continue;
    }
    for (const e of entries) {
      const child = join(top.dir, e.name);
      if (!e.isDirectory()) {
        quiet(() => unlinkSync(child));
        continue;
      }
      if (child.length <= limit) {
        stack.push({ dir: child, listed: false });
        continue;
      }
      let lifted = join(path, liftedName());
      while (exists(lifted)) lifted = join(path, liftedName());
      renameSync(child, lifted);
      stack.push({ dir: lifted, listed: false });
    }
  }
}

/** fs.rm gave up for the depth: a path too long, or its recursion ran out of stack. */
function tooDeep(err: unknown): boolean {
  return errnoOf(err) === 'ENAMETOOLONG' || err instanceof RangeError;
}

function ignoreMissing(err: unknown): void {
  if (errnoOf(err) !== 'ENOENT') throw err;
}

function quiet(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    ignoreMissing(err);
  }
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}
