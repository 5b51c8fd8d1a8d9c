/**
 * The changes between two filesystem trees, as continuity's fs.Changes finds them for containerd 1.6's walking
 * differ, plus an overlay fast path containerd 1.6 does not have. The changes come in walk order (walk.ts),
 * which is the order the layer tar is written in (change-tar.ts).
 *
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
 *    copy-up of an unchanged file is not a change). Whether the fast path applies is decided in compare.ts.
 *
 * xattrs are read in batches through one python3 helper per comparison (xattrs.ts). Without python3,
 * capabilities are not compared.
 */
import type { BigIntStats } from 'node:fs';
import { constants } from 'node:fs';
import { lstat, open, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { comparePaths, walk, type WalkEntry } from './walk.js';
import { isOverlayWhiteout, OVERLAY_OPAQUE, overlayOpaqueXattr } from './whiteouts.js';
import { XattrReader } from './xattrs.js';

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

/** The one xattr compared and carried into the layer. */
export const CAPABILITY = 'security.capability';
/** Entries resolved (xattrs fetched, contents compared) per batch. */
const WINDOW = 512;
const COMPARE_CHUNK = 64 * 1024;
const EMPTY = Buffer.alloc(0);

/* ------------------------------------------------------------------------------------------------------------
 * sameFile.
 * ---------------------------------------------------------------------------------------------------------- */

const NS = 1_000_000_000n;
const floorDiv = (a: bigint, b: bigint) => (a < 0n && a % b !== 0n ? a / b - 1n : a / b);
export const mtimeSeconds = (st: BigIntStats) => floorDiv(st.mtimeNs, NS);
const mtimeNanos = (st: BigIntStats) => st.mtimeNs - mtimeSeconds(st) * NS;

/** Hard-linked non-directory (continuity's isLinked). */
export const isLinked = (st: BigIntStats) => !st.isDirectory() && st.nlink > 1n;

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
    if (isOverlayWhiteout(stat)) {
      // An overlay whiteout: deletes what the lower tree has there (nothing to do if it has nothing).
      if (lowerStat) yield { kind: 'delete', path };
      continue;
    }
    if (stat.isDirectory()) {
      const [opaqueValue] = await xattrs.get([{ path: join(upperdir, path), name: opaqueKey }]);
      const opaque = opaqueValue?.toString('latin1') === OVERLAY_OPAQUE;
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
  const opaqueKey = overlayOpaqueXattr(userxattr);
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
