/**
 * The zfs snapshotter (containerd's "zfs", github.com/containerd/zfs): every snapshot is a ZFS dataset under
 * the dataset its root directory lives on. The root must be on a zfs filesystem; that filesystem's dataset
 * (the mount's source, e.g. `tank/strata`) is the parent of every snapshot's dataset, `<dataset>/<id>`, all
 * with `mountpoint=legacy`.
 *
 *  - Prepare/View without a parent: a new empty filesystem. With a parent: a clone of the parent's
 *    `<dataset>/<parent id>@snapshot` (no copy; blocks shared until written).
 *  - Commit: a ZFS snapshot `<dataset>/<id>@snapshot` of the active dataset; the record keeps its id, so the
 *    committed snapshot is that ZFS snapshot (its children are clones of it).
 *  - Remove: `zfs destroy -r <dataset>/<id>` (the dataset and its @snapshot; the records forbid removing a
 *    parent, so it never has clones then).
 *  - Mounts: `{type: 'zfs', source: '<dataset>/<id>'}`, `ro` for views (containerd's Mounts forgets the `ro`
 *    of a view that its View returned; Strata returns the same mounts from both).
 *  - Usage of an active snapshot: the dataset's `used` (space only it holds: a clone's unique blocks) after a
 *    pool sync, and the objects it holds beyond its parent's (ZFS's object accounting). containerd reports
 *    -1 inodes here; Strata counts them. A committed snapshot: as measured at commit.
 *
 * Bookkeeping: the records in SnapshotStorage (<root>/metadata.db). A new dataset is built under a temporary
 * name (`<dataset>/new-<random>`) and renamed to `<dataset>/<id>` inside the transaction that records it; a
 * crash leaves at worst a `new-*` dataset or a `<dataset>/<id>` without a record: cleanup() destroys both, as
 * it destroys an `@snapshot` whose record is not committed (a crash between the ZFS snapshot and the commit's
 * record; commit also replaces such a snapshot). Removal drops the record first, then destroys the dataset; a
 * crash or a failure in between leaves a dataset without a record: cleanup()'s.
 */
import { randomUUID } from 'node:crypto';
import { access, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { alreadyExists, failedPrecondition, isNotFound, unknown } from '../../core/errdefs.js';
import type { Mount } from '../../core/mount.js';
import type { Logger } from '../../log/index.js';
import { SkipPlugin } from '../../plugin/index.js';
import { lookupMount, type MountEntry } from '../btrfs/mountinfo.js';
import { precheckCreate } from '../native/index.js';
import { RecordedSnapshotter } from '../recorded.js';
import { checkKey, SnapshotStorage, type SnapshotRecord } from '../storage.js';
import type { Kind, SnapshotOpts, Snapshotter, Usage } from '../types.js';
import * as z from './zfs.js';

/** The name of the ZFS snapshot a commit takes (containerd's snapshotSuffix). */
export const SNAPSHOT_SUFFIX = 'snapshot';

/**
 * Throws SkipPlugin unless root (or, if it does not exist yet, the directory it would be created in) is on a
 * zfs filesystem, saying also whether the zfs kernel module is loaded at all. Returns the mount it is on.
 */
export async function checkZfsRoot(root: string, sysModule = '/sys/module/zfs'): Promise<MountEntry> {
  const m = await lookupMount(root);
  if (m.fstype !== 'zfs') {
    const why = [`it is on ${m.fstype}`];
    const loaded = await access(sysModule).then(
      () => true,
      () => false,
    );
    if (!loaded) why.push(`the zfs kernel module is not loaded: no ${sysModule}`);
    throw new SkipPlugin(`path ${root} must be a zfs filesystem to be used with the zfs snapshotter (${why.join('; ')})`);
  }
  return m;
}

export interface ZfsOptions {
  log?: Logger;
}

/** A lock per snapshot id: one commit of an active snapshot at a time (its ZFS snapshot has one name). */
class KeyedLock {
  private readonly tails = new Map<number, Promise<unknown>>();
  async run<T>(id: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(id) ?? Promise.resolve();
    const p = prev.then(fn, fn);
    const tail = p.catch(() => undefined);
    this.tails.set(id, tail);
    try {
      return await p;
    } finally {
      if (this.tails.get(id) === tail) this.tails.delete(id);
    }
  }
}

export class ZfsSnapshotter extends RecordedSnapshotter implements Snapshotter {
  /** Dataset names being built, committed or destroyed right now: cleanup() leaves them alone. */
  private readonly busy = new Set<string>();
  private readonly commitLock = new KeyedLock();
  /** Objects of committed snapshots (their data never changes), by id: the base of their children's count. */
  private readonly committedObjects = new Map<number, number>();
  /** Objects of an empty filesystem (its root directory...), measured once. */
  private emptyObjects: Promise<number> | undefined;
  private closed = false;

  private constructor(
    readonly root: string,
    /** The dataset the root lives on: the parent of every snapshot's dataset. */
    readonly dataset: string,
    storage: SnapshotStorage,
    private readonly log: Logger | undefined,
  ) {
    super(storage);
  }

  static async open(root: string, opts: ZfsOptions = {}): Promise<ZfsSnapshotter> {
    await checkZfsRoot(root);
    await z.zfs(['version']).catch(async (err: Error) => {
      // zfs 0.8 has no `version`; any other failure (no command, no module) skips the plugin.
      if (err instanceof z.ZfsError && /unrecognized command/i.test(err.stderr)) return '';
      throw new SkipPlugin(`${err.message}: it is needed by the zfs snapshotter`);
    });
    await mkdir(root, { recursive: true, mode: 0o700 });
    // Looked up again now that root exists (it may be a mount point of its own).
    const m = await checkZfsRoot(root);
    const storage = SnapshotStorage.open(join(root, 'metadata.db'));
    return new ZfsSnapshotter(root, m.source, storage, opts.log);
  }

  private datasetOf(id: number): string {
    return `${this.dataset}/${id}`;
  }

  private snapshotOf(id: number): string {
    return `${this.datasetOf(id)}@${SNAPSHOT_SUFFIX}`;
  }

  private get pool(): string {
    return this.dataset.split('/')[0]!;
  }

  protected mountsOf(rec: SnapshotRecord): Mount[] {
    return [{ type: 'zfs', source: this.datasetOf(rec.id), options: rec.kind === 'view' ? ['ro'] : [] }];
  }

  async usage(key: string): Promise<Usage> {
    const rec = this.storage.get(key);
    if (rec.kind === 'committed') return this.storage.storedUsage(key) ?? { size: 0, inodes: 0 };
    if (rec.kind === 'view') return { size: 0, inodes: 0 };
    await z.syncPool(this.pool);
    const { size, inodes } = await this.measure(rec, this.datasetOf(rec.id));
    return { size, inodes };
  }

  /**
   * Space only `name` holds (`used`: for a clone, the blocks it wrote) and the objects it refers to beyond its
   * parent's (or beyond an empty filesystem's). The caller syncs the pool first.
   */
  private async measure(rec: SnapshotRecord, name: string): Promise<Usage & { objects: number }> {
    const [used] = await z.numbers(name, ['used']);
    const objects = (await z.usedObjects(name)) ?? 0;
    const parent = rec.parentIds[0];
    const base = parent === undefined ? await this.empty() : await this.objectsOfCommitted(parent);
    return { size: Number.isFinite(used) ? used! : 0, inodes: Math.max(0, objects - base), objects };
  }

  private async objectsOfCommitted(id: number): Promise<number> {
    let n = this.committedObjects.get(id);
    if (n === undefined) {
      n = (await z.usedObjects(this.snapshotOf(id))) ?? 0;
      this.committedObjects.set(id, n);
    }
    return n;
  }

  /** The objects of an empty filesystem, from a probe dataset created and destroyed once per instance. */
  private empty(): Promise<number> {
    this.emptyObjects ??= (async () => {
      const probe = `${this.dataset}/new-${randomUUID()}`;
      this.busy.add(probe);
      try {
        await z.createFilesystem(probe);
        await z.syncPool(this.pool);
        return (await z.usedObjects(probe)) ?? 0;
      } finally {
        await z.destroy(probe).catch(() => undefined);
        this.busy.delete(probe);
      }
    })().catch((err: unknown) => {
      this.emptyObjects = undefined;
      throw err;
    });
    return this.emptyObjects;
  }

  protected async createSnapshot(kind: 'active' | 'view', key: string, parent: string, opts: SnapshotOpts = {}): Promise<Mount[]> {
    const parentId = precheckCreate(this.storage, key, parent, opts.labels);
    const tmp = `${this.dataset}/new-${randomUUID()}`;
    this.busy.add(tmp);
    let placed: string | undefined;
    try {
      if (parentId === undefined) {
        await z.createFilesystem(tmp).catch((err: Error) => {
          throw unknown(`failed to create dataset: ${err.message}`, err);
        });
      } else {
        try {
          await z.cloneFilesystem(this.snapshotOf(parentId), tmp);
        } catch (err) {
          precheckCreate(this.storage, key, parent, opts.labels); // a parent removed meanwhile: not found
          throw unknown(`failed to clone parent: ${(err as Error).message}`, err);
        }
      }
      const rec = this.storage.create(kind, key, parent, opts.labels, (id, parentIds) => {
        if (parentIds[0] !== parentId) throw failedPrecondition(`parent ${parent} changed while ${key} was being prepared`);
        placed = this.datasetOf(id);
        z.zfsSync(['rename', tmp, placed]);
      });
      placed = undefined;
      await this.storage.durable();
      return this.mountsOf(rec);
    } catch (err) {
      await this.discard(tmp);
      if (placed) await this.discard(placed);
      throw err;
    } finally {
      this.busy.delete(tmp);
    }
  }

  /** Destroys a dataset nobody owns, logging (not throwing) a failure: cleanup() will try again. */
  private async discard(name: string): Promise<void> {
    try {
      await z.destroy(name);
    } catch (err) {
      this.log?.warn('failed to destroy zfs dataset', { dataset: name, error: (err as Error).message });
    }
  }

  async commit(name: string, key: string, opts: SnapshotOpts = {}): Promise<void> {
    checkKey(name, 'name');
    const first = this.storage.get(key);
    if (first.kind !== 'active') throw failedPrecondition(`snapshot ${key} is not active`);
    await this.commitLock.run(first.id, async () => {
      const rec = this.storage.get(key); // not found if a concurrent commit of the same key won
      if (rec.kind !== 'active' || rec.id !== first.id) throw failedPrecondition(`snapshot ${key} is not active`);
      let taken = false;
      try {
        this.storage.get(name);
        throw alreadyExists(`committed snapshot ${name}`);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
      const snap = this.snapshotOf(rec.id);
      this.busy.add(snap);
      try {
        try {
          await z.snapshot(snap);
        } catch (err) {
          if (!(err instanceof z.ZfsError && err.exists)) throw unknown(`failed to snapshot dataset: ${(err as Error).message}`, err);
          // Left by a crash between a ZFS snapshot and its commit record: nothing can use it (no record is
          // committed on it), so it is taken again now.
          await z.zfs(['destroy', snap]);
          await z.snapshot(snap);
        }
        taken = true;
        // Taking a snapshot syncs the pool: the figures below are exact, and the snapshot's are the same.
        const u = await this.measure(rec, this.datasetOf(rec.id));
        this.storage.commitActive(key, name, { size: u.size, inodes: u.inodes }, opts.labels, (id) => {
          if (id !== rec.id) throw failedPrecondition(`snapshot ${key} changed while being committed`);
        }, opts.parent ? { parent: opts.parent, allowed: false } : undefined);
        this.committedObjects.set(rec.id, u.objects);
        await this.storage.durable();
      } catch (err) {
        if (taken && this.storage.kinds().get(rec.id) !== 'committed') {
          await z.zfs(['destroy', snap]).catch((e: Error) => this.log?.warn('failed to destroy zfs snapshot', { snapshot: snap, error: e.message }));
        }
        throw err;
      } finally {
        this.busy.delete(snap);
      }
    });
  }

  async remove(key: string): Promise<void> {
    const { id } = this.storage.remove(key);
    await this.storage.durable();
    await this.release([id]);
  }

  async removeMany(keys: string[]): Promise<void> {
    const results = this.storage.removeMany(keys);
    await this.storage.durable();
    await this.release(results.flatMap((r) => (r instanceof Error ? [] : [r.id])));
    const failed = results.find((r) => r instanceof Error);
    if (failed) throw failed;
  }

  /** Destroys the datasets of removed records; one that cannot be destroyed now is left to cleanup(). */
  private async release(ids: number[]): Promise<void> {
    for (const id of ids) {
      this.committedObjects.delete(id);
      const name = this.datasetOf(id);
      this.busy.add(name);
      try {
        await this.discard(name);
      } finally {
        this.busy.delete(name);
      }
    }
  }

  /**
   * Destroys what no record owns: `new-*` datasets left by a crash, `<id>` datasets without a record (a
   * removal that failed or was cut), `<id>@snapshot` whose record is not committed (a cut commit).
   */
  async cleanup(): Promise<void> {
    // List first, then read the owners: whatever was renamed into place before the listing has its record.
    const { filesystems, snapshots } = await z.children(this.dataset);
    const kinds: Map<number, Kind> = this.storage.kinds();
    const prefix = `${this.dataset}/`;
    for (const fs of filesystems) {
      const rest = fs.slice(prefix.length);
      if (this.busy.has(fs)) continue;
      if (/^[0-9]+$/.test(rest) && kinds.has(Number(rest))) continue;
      if (!/^[0-9]+$/.test(rest) && !rest.startsWith('new-')) continue; // not a name this snapshotter gives
      this.busy.add(fs);
      try {
        await this.discard(fs);
      } finally {
        this.busy.delete(fs);
      }
    }
    for (const snap of snapshots) {
      const m = new RegExp(`^([0-9]+)@${SNAPSHOT_SUFFIX}$`).exec(snap.slice(prefix.length));
      if (!m || this.busy.has(snap)) continue;
      const kind = kinds.get(Number(m[1]));
      if (kind === undefined || kind === 'committed') continue; // no record: its dataset went above
      await z.zfs(['destroy', snap]).catch((err: Error) => this.log?.warn('failed to destroy zfs snapshot', { snapshot: snap, error: err.message }));
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.storage.close();
  }
}

/** Opens a zfs snapshotter on root; SkipPlugin if root is not on zfs. */
export function openZfsSnapshotter(root: string, opts?: ZfsOptions): Promise<ZfsSnapshotter> {
  return ZfsSnapshotter.open(root, opts);
}
