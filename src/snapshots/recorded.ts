/**
 * What every backend that keeps its records in SnapshotStorage does the same way: Stat, Update and Walk read or
 * relabel the records, Mounts refuses a committed snapshot, and Prepare and View are one creation of two kinds.
 * A backend extending it writes only what is its own: how a snapshot is created (`createSnapshot`) and what
 * mounts a record has (`mountsOf`), besides Usage, Commit, Remove and Cleanup. overlayfs keeps its own Update
 * and Mounts (its mount cache, its idmap labels).
 */
import { failedPrecondition } from '../core/errdefs.js';
import type { Mount } from '../core/mount.js';
import type { SnapshotRecord, SnapshotStorage } from './storage.js';
import type { Info, SnapshotOpts, WalkFn } from './types.js';

export abstract class RecordedSnapshotter {
  protected constructor(protected readonly storage: SnapshotStorage) {}

  /** Prepare (kind 'active') or View (kind 'view'), after the checks containerd makes. */
  protected abstract createSnapshot(kind: 'active' | 'view', key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]>;

  /** The mounts of an active snapshot or a view. */
  protected abstract mountsOf(rec: SnapshotRecord): Mount[] | Promise<Mount[]>;

  async stat(key: string): Promise<Info> {
    return this.storage.info(key);
  }

  async update(info: Pick<Info, 'name' | 'labels'>, fieldpaths?: string[]): Promise<Info> {
    const out = this.storage.update(info, fieldpaths);
    await this.storage.durable();
    return out;
  }

  async mounts(key: string): Promise<Mount[]> {
    const rec = this.storage.get(key);
    if (rec.kind === 'committed') {
      throw failedPrecondition(`failed to get active mount: requested snapshot ${key} not active or view`);
    }
    return this.mountsOf(rec);
  }

  prepare(key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]> {
    return this.createSnapshot('active', key, parent, opts);
  }

  view(key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]> {
    return this.createSnapshot('view', key, parent, opts);
  }

  async walk(fn: WalkFn, filters?: string[]): Promise<void> {
    for (const info of this.storage.list(filters)) await fn(info);
  }
}
