/**
 * The native snapshotter (containerd's "native"): every snapshot is a plain directory, and a snapshot with
 * a parent starts as a full copy of the parent's directory. Works on any filesystem; costs a copy per layer.
 *
 * Layout under root: metadata.db (SnapshotStorage) and snapshots/<id>. A snapshot is built under
 * snapshots/new-<random> and renamed to snapshots/<id> inside the storage transaction; a removed one is
 * renamed to snapshots/rm-<id> after its record is dropped, then deleted. Anything in snapshots/ that no
 * record owns (crash leftovers, failed deletions) is deleted by cleanup().
 *
 * Mounts are rbind mounts of the snapshot's own directory, "rw" for active snapshots and "ro" for views.
 * Unlike containerd's native (whose views bind the parent's directory read-only), a view with a parent here
 * is its own copy, like an active snapshot.
 */
import { randomUUID } from 'node:crypto';
import { renameSync } from 'node:fs';
import { chmod, mkdir, readdir } from 'node:fs/promises';
import { removeTree } from '../../core/remove.js';
import { join } from 'node:path';
import { alreadyExists, failedPrecondition, invalidArgument, isNotFound, notFound, unknown } from '../../core/errdefs.js';
import type { Logger } from '../../log/index.js';
import { validateLabels } from '../../core/labels.js';
import { diskUsage, syncFilesystem } from '../fsutil.js';
import { RecordedSnapshotter } from '../recorded.js';
import { checkKey, SnapshotStorage, type SnapshotRecord } from '../storage.js';
import type { SnapshotOpts, Snapshotter, Usage } from '../types.js';
import type { Mount } from '../../core/mount.js';
import { copier, hasGnuCp, type CopyMethod, type CopyTree } from './copy.js';

export interface NativeOptions {
  log?: Logger;
  /** How parents are copied; default 'cp' when GNU cp is on PATH, 'node' otherwise (see copy.ts). */
  copy?: CopyMethod;
}

const errno = (err: unknown) => (err as NodeJS.ErrnoException | undefined)?.code;

export class NativeSnapshotter extends RecordedSnapshotter implements Snapshotter {
  /** Temporary names being built or deleted right now: cleanup() leaves them alone. */
  private readonly busy = new Set<string>();

  private constructor(
    readonly root: string,
    storage: SnapshotStorage,
    private readonly copy: CopyTree,
    readonly copyMethod: CopyMethod,
    private readonly log: Logger | undefined,
  ) {
    super(storage);
  }

  static async open(root: string, opts: NativeOptions = {}): Promise<NativeSnapshotter> {
    await mkdir(root, { recursive: true, mode: 0o700 });
    await mkdir(join(root, 'snapshots'), { recursive: true, mode: 0o700 });
    let method = opts.copy;
    if (!method) {
      method = (await hasGnuCp()) ? 'cp' : 'node';
      if (method === 'node') opts.log?.warn('GNU cp not found: copying snapshots in Node, without extended attributes');
    }
    const storage = SnapshotStorage.open(join(root, 'metadata.db'));
    return new NativeSnapshotter(root, storage, copier(method), method, opts.log);
  }

  private get dir(): string {
    return join(this.root, 'snapshots');
  }

  private path(id: number): string {
    return join(this.dir, String(id));
  }

  protected mountsOf(rec: SnapshotRecord): Mount[] {
    return [{ type: 'bind', source: this.path(rec.id), options: ['rbind', rec.kind === 'view' ? 'ro' : 'rw'] }];
  }

  async usage(key: string): Promise<Usage> {
    const rec = this.storage.get(key);
    if (rec.kind === 'committed') return this.storage.storedUsage(key) ?? { size: 0, inodes: 0 };
    // Only an active snapshot is measured: a view adds nothing of its own (containerd reports 0/0).
    if (rec.kind === 'view') return { size: 0, inodes: 0 };
    return diskUsage(this.path(rec.id));
  }

  protected async createSnapshot(kind: 'active' | 'view', key: string, parent: string, opts: SnapshotOpts = {}): Promise<Mount[]> {
    // The checks storage.create makes, made first so that a doomed request copies nothing.
    const parentId = precheckCreate(this.storage, key, parent, opts.labels);
    const tmp = join(this.dir, `new-${randomUUID()}`);
    this.busy.add(tmp);
    let placed: string | undefined;
    try {
      await mkdir(tmp, { mode: 0o755 });
      await chmod(tmp, 0o755);
      if (parentId !== undefined) {
        try {
          await this.copy(this.path(parentId), tmp);
        } catch (err) {
          // A parent removed while being copied is "not found", as if the removal had come first.
          precheckCreate(this.storage, key, parent, opts.labels);
          // Node's file errors name the daemon's paths: the client gets the call and the errno only.
          const e = err as NodeJS.ErrnoException;
          const what = typeof e.syscall === 'string' && typeof e.code === 'string' ? `${e.syscall}: ${/^[A-Z0-9_]+: ([^,]+)/.exec(e.message)?.[1] ?? e.code} (${e.code})` : e.message;
          throw unknown(`copying of parent failed: ${what}`, err);
        }
      }
      const rec = this.storage.create(kind, key, parent, opts.labels, (id, parentIds) => {
        if (parentIds[0] !== parentId) throw failedPrecondition(`parent ${parent} changed while ${key} was being prepared`);
        placed = this.path(id);
        renameSync(tmp, placed);
      });
      placed = undefined;
      await this.storage.durable();
      return this.mountsOf(rec);
    } catch (err) {
      await removeTree(tmp).catch(() => undefined);
      // Renamed into place, but the transaction did not commit: the directory is nobody's.
      if (placed) await removeTree(placed).catch(() => undefined);
      throw err;
    } finally {
      this.busy.delete(tmp);
    }
  }

  async commit(name: string, key: string, opts: SnapshotOpts = {}): Promise<void> {
    checkKey(name, 'name');
    const rec = this.storage.get(key);
    if (rec.kind !== 'active') throw failedPrecondition(`snapshot ${key} is not active`);
    const usage = await diskUsage(this.path(rec.id));
    // The snapshot's files durable before the record says committed (containerd #5854).
    await syncFilesystem(this.path(rec.id));
    this.storage.commitActive(key, name, usage, opts.labels, (id) => {
      if (id !== rec.id) throw failedPrecondition(`snapshot ${key} changed while being committed`);
    }, opts.parent ? { parent: opts.parent, allowed: false } : undefined);
    await this.storage.durable();
  }

  async remove(key: string): Promise<void> {
    const { id } = this.storage.remove(key);
    await this.storage.durable();
    const path = this.path(id);
    const removed = join(this.dir, `rm-${id}`);
    this.busy.add(removed);
    try {
      try {
        renameSync(path, removed);
      } catch (err) {
        if (errno(err) === 'ENOENT') return;
        throw err;
      }
      await removeTree(removed);
    } catch (err) {
      // The record is gone already: what is left on disk is cleanup()'s to delete.
      this.log?.warn('failed to remove snapshot directory', { path, error: err });
    } finally {
      this.busy.delete(removed);
    }
  }

  async cleanup(): Promise<void> {
    // List first, then read the owners: anything renamed into place before the listing is in ids().
    const names = await readdir(this.dir);
    const ids = this.storage.ids();
    for (const name of names) {
      if (/^[0-9]+$/.test(name) && ids.has(Number(name))) continue;
      const path = join(this.dir, name);
      if (this.busy.has(path)) continue;
      this.busy.add(path);
      try {
        await removeTree(path);
      } catch (err) {
        this.log?.warn('cleanup: failed to remove', { path, error: err });
      } finally {
        this.busy.delete(path);
      }
    }
  }

  async close(): Promise<void> {
    this.storage.close();
  }
}

/**
 * Checks what SnapshotStorage.create will check (same errors), before any expensive work; returns the
 * parent's id. create() checks again inside its transaction.
 */
export function precheckCreate(
  storage: SnapshotStorage,
  key: string,
  parent: string,
  labels: Record<string, string> | undefined,
): number | undefined {
  checkKey(key);
  validateLabels(labels);
  let parentId: number | undefined;
  if (parent) {
    let p: SnapshotRecord;
    try {
      p = storage.get(parent);
    } catch (err) {
      if (isNotFound(err)) throw notFound(`parent snapshot ${parent} does not exist`);
      throw err;
    }
    if (p.kind !== 'committed') throw invalidArgument(`parent ${JSON.stringify(parent)} is not committed snapshot`);
    parentId = p.id;
  }
  let exists = true;
  try {
    storage.info(key);
  } catch (err) {
    if (!isNotFound(err)) throw err;
    exists = false;
  }
  if (exists) throw alreadyExists(`snapshot ${key}`);
  return parentId;
}

/** Opens (creating if needed) a native snapshotter on root. */
export function openNativeSnapshotter(root: string, opts?: NativeOptions): Promise<NativeSnapshotter> {
  return NativeSnapshotter.open(root, opts);
}
