/**
 * The devmapper snapshotter (containerd's "devmapper"): every snapshot is a thin device of an existing
 * device-mapper thin pool (the operator creates the pool: scripts/devmapper-pool.sh makes one on loop
 * devices). A snapshot without a parent is a new thin device with a fresh filesystem (fs_type, ext4 or xfs);
 * a child, active or view, is a thin snapshot of its parent's device (create_snap: no copy, blocks shared
 * until written). Mounts are the thin device with its filesystem (`ro` for views; `nouuid` for xfs, whose
 * snapshots share their origin's uuid). Commit flushes the device (suspend, resume) and deactivates it;
 * a committed device is only ever the origin of snapshots.
 *
 * Bookkeeping: the snapshots in SnapshotStorage (<root_path>/metadata.db) like every backend; the thin devices
 * in <root_path>/<pool_name>.db: thin id, the snapshot id that owns it (null while being created), its
 * filesystem, its state, and the counts Usage needs. Device names are `<pool_name>-snap-<thin id>`.
 *
 * Crash consistency, in the order of operations:
 *  - create: the device row is recorded (durably, owner null) before the pool is told to create the thin id,
 *    so an id is never handed out twice; the device is built and activated; then the snapshot record is
 *    written, and inside its transaction the device row gets its owner (synchronously, durably). A crash
 *    leaves at worst a device with no owner, or an owner id with no record (ids are never reused): both are
 *    cleanup()'s, and opening the snapshotter removes them. Never a record without its device.
 *  - remove: the record goes first (durably); then the device is deactivated and its thin id deleted, or,
 *    with async_remove, left to cleanup(). A crash leaves a device whose owner has no record: cleanup's.
 *  - commit: the record turns committed, then the device is flushed and deactivated; a device left active by
 *    a crash is deactivated on open.
 */
import { mkdir, mkdtemp, rm, rmdir, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { failedPrecondition, isNotFound, unknown } from '../../core/errdefs.js';
import type { Mount } from '../../core/mount.js';
import { openSqlite, type DB } from '../../core/sqlite.js';
import type { Logger } from '../../log/index.js';
import { mountAll, unmount } from '../../mount/index.js';
import { precheckCreate } from '../native/index.js';
import { RecordedSnapshotter } from '../recorded.js';
import { checkKey, SnapshotStorage, type SnapshotRecord } from '../storage.js';
import type { SnapshotOpts, Snapshotter, Usage } from '../types.js';
import * as dm from './dmsetup.js';

const run = promisify(execFile);

export type FsType = 'ext4' | 'xfs';

export interface DevmapperOptions {
  /** Where metadata.db and <pool>.db live. */
  rootPath: string;
  /** The thin pool, a name under /dev/mapper. */
  poolName: string;
  /** Virtual size of every thin device, bytes. */
  baseImageSize: number;
  /** Remove drops the record only; cleanup() deletes the devices (containerd's async_remove). */
  asyncRemove?: boolean;
  /** Discard a device's blocks before deleting it (blkdiscard), returning them to the pool's backing store. */
  discardBlocks?: boolean;
  fsType?: FsType;
  /** mkfs options: for ext4 the `-E` extended options (default containerd's), for xfs extra arguments. */
  fsOptions?: string;
  log?: Logger;
}

interface DeviceRow {
  thin_id: number;
  snapshot_id: number | null;
  fs_type: FsType;
  /** 'creating' until owned; 'ready'; 'removed' once its snapshot is gone (async_remove). */
  state: 'creating' | 'ready' | 'removed';
  /** Mapped bytes and used inodes of the filesystem as it was committed (for its children's Usage). */
  mapped: number | null;
  inodes: number | null;
}

const deviceSchema = [
  `CREATE TABLE devices (
     thin_id     INTEGER PRIMARY KEY,
     snapshot_id INTEGER UNIQUE,
     fs_type     TEXT NOT NULL,
     state       TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'removed')),
     mapped      INTEGER,
     inodes      INTEGER
   );
   CREATE TABLE next_thin_id (id INTEGER NOT NULL);
   INSERT INTO next_thin_id VALUES (1);`,
];

/** Thin ids are 24 bits. */
const MAX_THIN_ID = 0xffffff;

/** A promise chain: pool messages and suspend/resume one at a time. */
class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.tail.then(fn, fn);
    this.tail = p.catch(() => undefined);
    return p;
  }
}

export class DevmapperSnapshotter extends RecordedSnapshotter implements Snapshotter {
  private readonly serial = new Serial();
  private readonly fsType: FsType;

  private constructor(
    private readonly opts: DevmapperOptions,
    storage: SnapshotStorage,
    private readonly devices: DB,
    private readonly scratch: string,
  ) {
    super(storage);
    this.fsType = opts.fsType ?? 'ext4';
  }

  static async open(opts: DevmapperOptions): Promise<DevmapperSnapshotter> {
    await mkdir(opts.rootPath, { recursive: true, mode: 0o750 });
    await dm.dmsetup(['info', dm.devicePath(opts.poolName)]).catch((err: Error) => {
      throw unknown(`failed to query pool ${opts.poolName}: ${err.message}`);
    });
    const storage = SnapshotStorage.open(join(opts.rootPath, 'metadata.db'));
    const devices = openSqlite(join(opts.rootPath, `${opts.poolName}.db`), deviceSchema, 'devmapper device metadata');
    const scratch = join(opts.rootPath, 'tmpmounts');
    await mkdir(scratch, { recursive: true, mode: 0o700 });
    const sn = new DevmapperSnapshotter(opts, storage, devices, scratch);
    await sn.recover();
    return sn;
  }

  private name(thinId: number): string {
    return `${this.opts.poolName}-snap-${thinId}`;
  }

  private device(snapshotId: number): DeviceRow {
    const row = this.devices.prepare('SELECT * FROM devices WHERE snapshot_id = ?').get(snapshotId) as DeviceRow | undefined;
    if (!row) throw unknown(`devmapper: snapshot ${snapshotId} has no thin device`);
    return row;
  }

  /** Reserves a thin id, durably, before the pool hears of it. */
  private reserve(fsType: FsType): number {
    return this.devices.transaction(() => {
      const { id } = this.devices.prepare('SELECT id FROM next_thin_id').get() as { id: number };
      if (id > MAX_THIN_ID) throw unknown('devmapper: thin device ids exhausted');
      this.devices.prepare('UPDATE next_thin_id SET id = ?').run(id + 1);
      this.devices.prepare("INSERT INTO devices (thin_id, snapshot_id, fs_type, state) VALUES (?, NULL, ?, 'creating')").run(id, fsType);
      return id;
    })();
  }

  protected mountsOf(rec: SnapshotRecord): Mount[] {
    return this.deviceMounts(rec.kind, this.device(rec.id));
  }

  private deviceMounts(kind: SnapshotRecord['kind'], dev: DeviceRow): Mount[] {
    const options: string[] = [];
    if (dev.fs_type === 'xfs') options.push('nouuid');
    if (kind !== 'active') options.push('ro');
    return [{ type: dev.fs_type, source: dm.devicePath(this.name(dev.thin_id)), options }];
  }

  /** Runs fn with the device's filesystem mounted at a private temporary directory. */
  private async withMount<T>(dev: DeviceRow, readonly: boolean, fn: (dir: string) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(join(this.scratch, 'm-'));
    try {
      await mountAll(this.deviceMounts(readonly ? 'view' : 'active', dev), dir);
      try {
        return await fn(dir);
      } finally {
        await unmount(dir);
      }
    } finally {
      await rmdir(dir).catch(() => undefined);
    }
  }

  /**
   * Used inodes of an active device's filesystem, through a second mount of it. Read-write first: the kernel
   * refuses a read-only mount of a device mounted read-write elsewhere (the caller's own mount, which may still
   * be there at commit), and nothing is written through it; read-only if the device is mounted read-only.
   */
  private async usedInodes(dev: DeviceRow): Promise<number> {
    const count = async (dir: string) => {
      const s = await statfs(dir);
      return s.files - s.ffree;
    };
    try {
      return await this.withMount(dev, false, count);
    } catch {
      return this.withMount(dev, true, count);
    }
  }

  private async mkfs(path: string): Promise<void> {
    const o = this.opts.fsOptions ?? '';
    const [cmd, args] =
      this.fsType === 'xfs'
        ? ['mkfs.xfs', [...(o ? o.split(/\s+/) : []), path]]
        : ['mkfs.ext4', ['-q', '-E', o || 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', path]];
    try {
      await run(cmd, args as string[]);
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw unknown(`${cmd} could not initialize the thin device: ${(e.stderr || e.message).trim()}`);
    }
  }

  /** Deletes a device: deactivates it, discards its blocks if configured, deletes its thin id, drops its row. */
  private async destroy(thinId: number): Promise<void> {
    const name = this.name(thinId);
    await this.serial.run(async () => {
      if (this.opts.discardBlocks && (await dm.exists(name))) {
        await run('blkdiscard', [dm.devicePath(name)]).catch((err: Error) => this.opts.log?.warn('blkdiscard failed', { device: name, error: err.message }));
      }
      await dm.deactivate(name, { force: true });
      await dm.deleteThin(this.opts.poolName, thinId);
    });
    this.devices.prepare('DELETE FROM devices WHERE thin_id = ?').run(thinId);
  }

  /**
   * Size from the pool (the device's mapped blocks less its parent's, as containerd); inodes from the
   * filesystem (used inodes less the parent's, or less an empty filesystem's). Committed: as measured at commit.
   */
  async usage(key: string): Promise<Usage> {
    const rec = this.storage.get(key);
    if (rec.kind === 'committed') return this.storage.storedUsage(key) ?? { size: 0, inodes: 0 };
    if (rec.kind === 'view') return { size: 0, inodes: 0 };
    return this.measure(rec);
  }

  private async measure(rec: SnapshotRecord): Promise<Usage & { mapped: number; used: number }> {
    const dev = this.device(rec.id);
    const mapped = await dm.mappedBytes(this.name(dev.thin_id));
    const used = await this.usedInodes(dev);
    const parent = rec.parentIds[0] === undefined ? undefined : this.device(rec.parentIds[0]);
    const baseInodes = parent?.inodes ?? this.emptyInodes(dev);
    return {
      mapped,
      used,
      size: Math.max(0, mapped - (parent?.mapped ?? 0)),
      inodes: Math.max(0, used - baseInodes),
    };
  }

  /** Used inodes of an empty filesystem (recorded per device at mkfs, in `inodes` while not committed). */
  private emptyInodes(dev: DeviceRow): number {
    return dev.inodes ?? 0;
  }

  protected async createSnapshot(kind: 'active' | 'view', key: string, parent: string, opts: SnapshotOpts = {}): Promise<Mount[]> {
    const parentId = precheckCreate(this.storage, key, parent, opts.labels);
    const parentDev = parentId === undefined ? undefined : this.device(parentId);
    const fsType = parentDev?.fs_type ?? this.fsType;
    const thinId = this.reserve(fsType);
    const name = this.name(thinId);
    let owned = false;
    try {
      await this.serial.run(async () => {
        if (parentDev === undefined) {
          await dm.createThin(this.opts.poolName, thinId);
        } else {
          // An active origin must be suspended while the pool snapshots it (committed ones are inactive).
          const origin = this.name(parentDev.thin_id);
          const live = await dm.exists(origin);
          if (live) await dm.suspend(origin);
          try {
            await dm.createSnap(this.opts.poolName, thinId, parentDev.thin_id);
          } finally {
            if (live) await dm.resume(origin);
          }
        }
        await dm.activate(this.opts.poolName, name, thinId, this.opts.baseImageSize);
      });
      let empty: number | null = null;
      if (parentDev === undefined) {
        await this.mkfs(dm.devicePath(name));
        const row: DeviceRow = { thin_id: thinId, snapshot_id: null, fs_type: fsType, state: 'creating', mapped: null, inodes: null };
        // containerd removes lost+found: a new snapshot is an empty directory.
        empty = await this.withMount(row, false, async (dir) => {
          await rm(join(dir, 'lost+found'), { recursive: true, force: true });
          const s = await statfs(dir);
          return s.files - s.ffree;
        });
      } else {
        empty = parentDev.inodes;
      }
      const setOwner = this.devices.prepare("UPDATE devices SET snapshot_id = ?, state = 'ready', inodes = ? WHERE thin_id = ?");
      const rec = this.storage.create(kind, key, parent, opts.labels, (id, parentIds) => {
        if (parentIds[0] !== parentId) throw failedPrecondition(`parent ${parent} changed while ${key} was being prepared`);
        // Durable before the record commits (the devices file syncs every transaction).
        setOwner.run(id, empty, thinId);
        owned = true;
      });
      await this.storage.durable();
      return this.mountsOf(rec);
    } catch (err) {
      if (owned) {
        // The owner was set but the record did not commit: nobody's device.
        this.devices.prepare('UPDATE devices SET snapshot_id = NULL WHERE thin_id = ?').run(thinId);
      }
      await this.destroy(thinId).catch((e: Error) => this.opts.log?.warn('failed to delete thin device', { device: name, error: e.message }));
      if (parentId !== undefined && !isNotFound(err)) {
        try {
          precheckCreate(this.storage, key, parent, opts.labels); // a parent removed meanwhile: not found
        } catch (e) {
          if (isNotFound(e)) throw e;
        }
      }
      throw err;
    }
  }

  async commit(name: string, key: string, opts: SnapshotOpts = {}): Promise<void> {
    checkKey(name, 'name');
    const rec = this.storage.get(key);
    if (rec.kind !== 'active') throw failedPrecondition(`snapshot ${key} is not active`);
    const dev = this.device(rec.id);
    const devName = this.name(dev.thin_id);
    // Flush what the filesystem wrote (suspend waits for in-flight I/O) before measuring and recording.
    await this.serial.run(async () => {
      await dm.suspend(devName);
      await dm.resume(devName);
    });
    const u = await this.measure(rec);
    this.storage.commitActive(key, name, { size: u.size, inodes: u.inodes }, opts.labels);
    this.devices.prepare('UPDATE devices SET mapped = ?, inodes = ? WHERE thin_id = ?').run(u.mapped, u.used, dev.thin_id);
    await this.storage.durable();
    await this.serial.run(() => dm.deactivate(devName, { attempts: 1 })).catch((err: Error) => {
      // Still mounted (a caller may commit before unmounting): it stays active, which is harmless; recover()
      // deactivates it on the next open.
      this.opts.log?.warn('failed to deactivate committed device', { device: devName, error: err.message });
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

  /** The devices of removed snapshots: deleted now, or marked for cleanup() with async_remove. */
  private async release(snapshotIds: number[]): Promise<void> {
    for (const id of snapshotIds) {
      const row = this.devices.prepare('SELECT * FROM devices WHERE snapshot_id = ?').get(id) as DeviceRow | undefined;
      if (!row) continue;
      this.devices.prepare("UPDATE devices SET state = 'removed' WHERE thin_id = ?").run(row.thin_id);
      if (this.opts.asyncRemove) continue;
      try {
        await this.destroy(row.thin_id);
      } catch (err) {
        // containerd answers FAILED_PRECONDITION; the record is gone, so cleanup() retries the device.
        throw failedPrecondition(`failed to remove the device of snapshot ${id}: ${(err as Error).message}`, err);
      }
    }
  }

  /**
   * Deletes every device nothing references: removed ones (async_remove), ones still being created when a
   * crash came (no owner), ones whose owner has no record; and dm devices of this pool's naming with no row.
   */
  async cleanup(): Promise<void> {
    const ids = this.storage.ids();
    const rows = this.devices.prepare('SELECT * FROM devices').all() as DeviceRow[];
    const busy = new Set(this.creating);
    for (const row of rows) {
      if (busy.has(row.thin_id)) continue;
      if (row.state === 'ready' && row.snapshot_id !== null && ids.has(row.snapshot_id)) continue;
      if (row.state === 'creating') continue; // only recover() removes those: a create may be in flight now
      await this.destroy(row.thin_id);
    }
    await this.sweepStrays(rows);
  }

  private readonly creating = new Set<number>();

  /** dm devices named like ours whose thin id has no row: deactivated (the pool may still hold the id). */
  private async sweepStrays(rows: DeviceRow[]): Promise<void> {
    const known = new Set(rows.map((r) => this.name(r.thin_id)));
    const prefix = `${this.opts.poolName}-snap-`;
    for (const name of await dm.listNames(prefix)) {
      if (known.has(name) || !/^\d+$/.test(name.slice(prefix.length))) continue;
      const id = Number(name.slice(prefix.length));
      if ((this.devices.prepare('SELECT 1 FROM devices WHERE thin_id = ?').get(id) as unknown) !== undefined) continue;
      await dm.deactivate(name, { force: true }).catch(() => undefined);
    }
  }

  /**
   * After a crash: devices still 'creating' (or owned by a snapshot with no record) are deleted; committed
   * devices left active are deactivated; active and view devices that are not loaded are activated.
   */
  private async recover(): Promise<void> {
    const ids = this.storage.ids();
    const rows = this.devices.prepare('SELECT * FROM devices').all() as DeviceRow[];
    for (const row of rows) {
      const owned = row.state === 'ready' && row.snapshot_id !== null && ids.has(row.snapshot_id);
      if (!owned) {
        if (row.state === 'creating' || !this.opts.asyncRemove) await this.destroy(row.thin_id);
        continue;
      }
      const kind = this.kindOf(row.snapshot_id!);
      const name = this.name(row.thin_id);
      const live = await dm.exists(name);
      if (kind === 'committed' && live) await dm.deactivate(name, { attempts: 1 }).catch(() => undefined);
      if (kind !== 'committed' && !live) await dm.activate(this.opts.poolName, name, row.thin_id, this.opts.baseImageSize);
    }
  }

  private kindOf(snapshotId: number): SnapshotRecord['kind'] | undefined {
    for (const info of this.storage.list()) {
      const rec = this.storage.get(info.name);
      if (rec.id === snapshotId) return rec.kind;
    }
    return undefined;
  }

  async close(): Promise<void> {
    this.storage.close();
    if (this.devices.open) this.devices.close();
    await rm(this.scratch, { recursive: true, force: true }).catch(() => undefined);
  }
}

export function openDevmapperSnapshotter(opts: DevmapperOptions): Promise<DevmapperSnapshotter> {
  return DevmapperSnapshotter.open(opts);
}

