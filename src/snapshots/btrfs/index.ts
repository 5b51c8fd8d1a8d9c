/**
 * The btrfs snapshotter (containerd's "btrfs"): every snapshot is a btrfs subvolume, a child is a btrfs
 * snapshot of its parent's subvolume, so preparing and committing cost no copy.
 *
 * Layout under root (which must be on btrfs): metadata.db, active/<id> (writable subvolumes of active
 * snapshots), view/<id> (read-only snapshots for views), snapshots/<id> (read-only subvolumes of committed
 * snapshots). New subvolumes are created under <dir>/new-<random> and renamed to <dir>/<id> inside the
 * storage transaction (a subvolume renames like a directory).
 *
 * Commit: a read-only snapshot of active/<id> into snapshots/new-<random>, renamed to snapshots/<id> in the
 * transaction that makes the record committed, then active/<id> is deleted. A crash before the transaction
 * leaves an unowned snapshots/new-*; after it, a stale active/<id> whose record is no longer active. Both are
 * cleanup()'s: it keeps <dir>/<id> only when record <id> exists with the kind that directory holds.
 *
 * Mounts are containerd's: {type: 'btrfs', source: <device of the root's filesystem>,
 * options: ['subvolid=<n>'] plus 'ro' for views}.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { renameSync } from 'node:fs';
import { chmod, lstat, mkdir, readdir, statfs } from 'node:fs/promises';
import { removeTree } from '../../core/remove.js';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { failedPrecondition, isNotFound, unknown } from '../../core/errdefs.js';
import type { Logger } from '../../log/index.js';
import { SkipPlugin } from '../../plugin/index.js';
import { RecordedSnapshotter } from '../recorded.js';
import { checkKey, SnapshotStorage, type SnapshotRecord } from '../storage.js';
import type { Kind, SnapshotOpts, Snapshotter, Usage } from '../types.js';
import type { Mount } from '../../core/mount.js';
import { precheckCreate } from '../native/index.js';
import { lookupMount, type MountEntry } from './mountinfo.js';
import { diffUsage } from './usage.js';

const run = promisify(execFile);

export const BTRFS_SUPER_MAGIC = 0x9123683e;
/** The inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID). */
const SUBVOLUME_ROOT_INO = 256;

/** Which directory under root holds each kind. */
const KIND_DIR: Record<Kind, string> = { active: 'active', view: 'view', committed: 'snapshots' };

const errno = (err: unknown) => (err as NodeJS.ErrnoException | undefined)?.code;

/** Runs the btrfs command, turning a failure into an Error with its stderr. */
async function btrfs(args: string[]): Promise<string> {
  try {
    return (await run('btrfs', args, { maxBuffer: 16 << 20 })).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string; code?: unknown };
    if (e.code === 'ENOENT') throw new Error('btrfs command not found (btrfs-progs is not installed)', { cause: err });
    // The message may reach a client: the daemon's paths (the absolute arguments) are left out of it, and a full
    // disk keeps its errno so that it is reported as one (RESOURCE_EXHAUSTED).
    let said = (e.stderr || e.message).trim();
    for (const a of args) if (a.startsWith('/')) said = said.split(a).join('<path>');
    const shown = args.map((a) => (a.startsWith('/') ? '<path>' : a)).join(' ');
    const code = /No space left on device/i.test(said) ? 'ENOSPC' : /Disk quota exceeded/i.test(said) ? 'EDQUOT' : undefined;
    throw Object.assign(new Error(`btrfs ${shown}: ${said}`, { cause: err }), code ? { code } : {});
  }
}

/**
 * Checks that root (or, if it does not exist yet, the directory it would be created in) is on btrfs, the way
 * containerd's plugin does; throws SkipPlugin otherwise. Returns the mount it is on.
 */
export async function checkBtrfs(root: string): Promise<MountEntry> {
  const m = await lookupMount(root);
  let magic: number | undefined;
  try {
    magic = (await statfs(m.mountPoint)).type;
  } catch {
    magic = undefined;
  }
  if (m.fstype !== 'btrfs' || (magic !== undefined && magic !== BTRFS_SUPER_MAGIC)) {
    throw new SkipPlugin(`path ${root} (${m.fstype}) must be a btrfs filesystem to be used with the btrfs snapshotter`);
  }
  return m;
}

/** Whether path is the root directory of a subvolume. */
async function isSubvolume(path: string): Promise<boolean> {
  try {
    const st = await lstat(path);
    return st.isDirectory() && st.ino === SUBVOLUME_ROOT_INO;
  } catch {
    return false;
  }
}

/**
 * Deletes a subvolume, first any subvolumes nested inside it (created from within a container: btrfs cannot
 * delete a subvolume that still holds others). A missing path is not an error.
 */
export async function deleteSubvolume(path: string): Promise<void> {
  try {
    await lstat(path);
  } catch (err) {
    if (errno(err) === 'ENOENT') return;
    throw err;
  }
  if (!(await isSubvolume(path))) {
    await removeTree(path);
    return;
  }
  try {
    await btrfs(['subvolume', 'delete', path]);
    return;
  } catch (err) {
    const nested = await nestedSubvolumes(path);
    if (nested.length === 0) throw err;
    // Deepest first.
    for (const p of nested.sort((a, b) => b.length - a.length)) await btrfs(['subvolume', 'delete', p]);
    await btrfs(['subvolume', 'delete', path]);
  }
}

/** Subvolume roots below path (not path itself), found by their inode number; not descending into them. */
async function nestedSubvolumes(path: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      if (!e.isDirectory()) continue;
      const p = join(dir, e.name);
      if (await isSubvolume(p)) {
        found.push(p, ...(await nestedSubvolumes(p)));
      } else {
        await walk(p);
      }
    }
  };
  await walk(path);
  return found;
}

export interface BtrfsOptions {
  log?: Logger;
}

export class BtrfsSnapshotter extends RecordedSnapshotter implements Snapshotter {
  /** Temporary names being built or deleted right now: cleanup() leaves them alone. */
  private readonly busy = new Set<string>();
  /** Subvolume ids by path (they do not change while the path names the same subvolume). */
  private readonly subvolIds = new Map<string, number>();

  private constructor(
    readonly root: string,
    /** The device the root's filesystem is mounted from: the source of every mount. */
    readonly device: string,
    storage: SnapshotStorage,
    private readonly log: Logger | undefined,
  ) {
    super(storage);
  }

  static async open(root: string, opts: BtrfsOptions = {}): Promise<BtrfsSnapshotter> {
    await checkBtrfs(root);
    await btrfs(['--version']).catch((err: Error) => {
      throw new SkipPlugin(`${err.message}: it is needed by the btrfs snapshotter`);
    });
    await mkdir(root, { recursive: true, mode: 0o700 });
    await chmod(root, 0o700);
    // Looked up again now that root exists (it may be a mount point of its own).
    const m = await checkBtrfs(root);
    for (const d of Object.values(KIND_DIR)) await mkdir(join(root, d), { recursive: true, mode: 0o755 });
    const storage = SnapshotStorage.open(join(root, 'metadata.db'));
    return new BtrfsSnapshotter(root, m.source, storage, opts.log);
  }

  private path(kind: Kind, id: number): string {
    return join(this.root, KIND_DIR[kind], String(id));
  }

  private async subvolId(path: string): Promise<number> {
    let id = this.subvolIds.get(path);
    if (id === undefined) {
      const out = await btrfs(['inspect-internal', 'rootid', path]);
      id = Number(out.trim());
      if (!Number.isSafeInteger(id) || id <= 0) throw unknown(`btrfs: unexpected subvolume id ${JSON.stringify(out)} for ${path}`);
      this.subvolIds.set(path, id);
    }
    return id;
  }

  protected async mountsOf(rec: SnapshotRecord): Promise<Mount[]> {
    const options = [`subvolid=${await this.subvolId(this.path(rec.kind, rec.id))}`];
    if (rec.kind !== 'active') options.push('ro');
    return [{ type: 'btrfs', source: this.device, options }];
  }

  /** Committed: recorded at commit. Active: what differs from the parent now. View: nothing of its own. */
  async usage(key: string): Promise<Usage> {
    const rec = this.storage.get(key);
    if (rec.kind === 'committed') return this.storage.storedUsage(key) ?? { size: 0, inodes: 0 };
    if (rec.kind === 'view') return { size: 0, inodes: 0 };
    return this.activeUsage(rec);
  }

  private activeUsage(rec: SnapshotRecord): Promise<Usage> {
    const parent = rec.parentIds[0];
    return diffUsage(this.path('active', rec.id), parent === undefined ? undefined : this.path('committed', parent));
  }

  protected async createSnapshot(kind: 'active' | 'view', key: string, parent: string, opts: SnapshotOpts = {}): Promise<Mount[]> {
    const parentId = precheckCreate(this.storage, key, parent, opts.labels);
    const tmp = join(this.root, KIND_DIR[kind], `new-${randomUUID()}`);
    this.busy.add(tmp);
    let placed: string | undefined;
    try {
      if (parentId === undefined) {
        await btrfs(['subvolume', 'create', tmp]);
        // The kernel applies the umask to a new subvolume's root; snapshots start as 0755 whatever it is.
        await chmod(tmp, 0o755);
        // A view without a parent is an empty read-only subvolume.
        if (kind === 'view') await btrfs(['property', 'set', '-ts', tmp, 'ro', 'true']);
      } else {
        const args = ['subvolume', 'snapshot', ...(kind === 'view' ? ['-r'] : []), this.path('committed', parentId), tmp];
        try {
          await btrfs(args);
        } catch (err) {
          precheckCreate(this.storage, key, parent, opts.labels); // a parent removed meanwhile: not found
          throw unknown(`failed to snapshot parent: ${(err as Error).message}`, err);
        }
      }
      // Known before the record exists, so that nothing after the transaction can fail.
      const sid = await this.subvolId(tmp);
      const rec = this.storage.create(kind, key, parent, opts.labels, (id, parentIds) => {
        if (parentIds[0] !== parentId) throw failedPrecondition(`parent ${parent} changed while ${key} was being prepared`);
        placed = this.path(kind, id);
        renameSync(tmp, placed);
      });
      this.subvolIds.set(this.path(kind, rec.id), sid);
      placed = undefined;
      await this.storage.durable();
      return await this.mountsOf(rec);
    } catch (err) {
      await this.discard(tmp);
      if (placed) await this.discard(placed);
      throw err;
    } finally {
      this.busy.delete(tmp);
      this.subvolIds.delete(tmp);
    }
  }

  /** Deletes a subvolume nobody owns, logging (not throwing) a failure: cleanup() will try again. */
  private async discard(path: string): Promise<void> {
    this.subvolIds.delete(path);
    try {
      await deleteSubvolume(path);
    } catch (err) {
      this.log?.warn('failed to delete subvolume', { path, error: err });
    }
  }

  async commit(name: string, key: string, opts: SnapshotOpts = {}): Promise<void> {
    checkKey(name, 'name');
    const rec = this.storage.get(key);
    if (rec.kind !== 'active') throw failedPrecondition(`snapshot ${key} is not active`);
    const usage = await this.activeUsage(rec);
    const source = this.path('active', rec.id);
    const tmp = join(this.root, KIND_DIR.committed, `new-${randomUUID()}`);
    this.busy.add(tmp);
    try {
      await btrfs(['subvolume', 'snapshot', '-r', source, tmp]);
      this.storage.commitActive(key, name, usage, opts.labels, (id) => {
        if (id !== rec.id) throw failedPrecondition(`snapshot ${key} changed while being committed`);
        renameSync(tmp, this.path('committed', id));
      }, opts.parent ? { parent: opts.parent, allowed: false } : undefined);
    } catch (err) {
      await this.discard(tmp);
      throw err;
    } finally {
      this.busy.delete(tmp);
    }
    await this.storage.durable();
    this.busy.add(source);
    try {
      await this.discard(source);
    } finally {
      this.busy.delete(source);
    }
  }

  async remove(key: string): Promise<void> {
    const { id, kind } = this.storage.remove(key);
    await this.storage.durable();
    const path = this.path(kind, id);
    this.busy.add(path);
    try {
      await this.discard(path);
    } finally {
      this.busy.delete(path);
    }
  }

  /** The kind of every record, by id. */
  private owners(): Map<number, Kind> {
    const out = new Map<number, Kind>();
    for (const info of this.storage.list()) {
      try {
        const rec = this.storage.get(info.name);
        out.set(rec.id, rec.kind);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
    return out;
  }

  async cleanup(): Promise<void> {
    // List first, then read the owners: whatever was renamed into place before the listing has its record.
    const listed: { kind: Kind; name: string }[] = [];
    for (const kind of Object.keys(KIND_DIR) as Kind[]) {
      for (const name of await readdir(join(this.root, KIND_DIR[kind]))) listed.push({ kind, name });
    }
    const owners = this.owners();
    for (const { kind, name } of listed) {
      if (/^[0-9]+$/.test(name) && owners.get(Number(name)) === kind) continue;
      const path = join(this.root, KIND_DIR[kind], name);
      if (this.busy.has(path)) continue;
      this.busy.add(path);
      try {
        await this.discard(path);
      } finally {
        this.busy.delete(path);
      }
    }
  }

  async close(): Promise<void> {
    this.storage.close();
  }
}

/** Opens a btrfs snapshotter on root; SkipPlugin if root is not on btrfs. */
export function openBtrfsSnapshotter(root: string, opts?: BtrfsOptions): Promise<BtrfsSnapshotter> {
  return BtrfsSnapshotter.open(root, opts);
}
