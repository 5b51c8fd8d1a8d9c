/**
 * The EROFS snapshotter ("io.containerd.snapshotter.v1.erofs", as containerd 2.1's, #10705): every committed
 * snapshot is one read-only EROFS image; an active snapshot is an overlay of its own upper directory over the
 * images of its parents, each mounted read-only (through a loop device) on the parent's `fs` directory.
 *
 *   <root>/metadata.db                 SnapshotStorage
 *   <root>/snapshots/<id>/fs           active: the overlay upper dir; committed: where layer.erofs is mounted
 *   <root>/snapshots/<id>/work         overlay's work dir (active snapshots only)
 *   <root>/snapshots/<id>/layer.erofs  a committed snapshot's image (containerd's name)
 *   <root>/snapshots/<id>/.erofslayer  marks the directory as this snapshotter's (what containerd's EROFS differ
 *                                      looks for beside an upper dir; Strata's does the same: src/diff/erofs.ts)
 *   <root>/l/<id in base 36>           short links to ../snapshots/<id>/fs for chains too long for one page
 *   <root>/trash/                      removed snapshots and committed upper dirs until their deletion
 *
 * Mounts returned (what containerd 2.1's returns, and what containerd 1.6's mount code, ctr 1.6 and the Go
 * client mount unmodified):
 *   - no parent: a bind of `fs` (rw, or ro for a view), as overlayfs;
 *   - a view of one committed snapshot: `erofs` of its layer.erofs with options `ro,loop` (1.6's Mount sets up
 *     the loop device itself for the `loop` option);
 *   - otherwise overlay, lowerdir = the parents' `fs` directories, on which this snapshotter keeps the images
 *     mounted (mounted when a mount list first names them, again after a restart; unmounted on Remove, on
 *     cleanup of what has no record, and on close).
 *
 * Commit: the upper dir becomes `layer.erofs.new-*` (mkfs.erofs, synced); then, inside the record's transaction,
 * three renames put the image in place and swap the upper dir for an empty `fs` (same owner and mode) that the
 * image will be mounted on; the old upper dir and the work dir go to the trash afterwards. A crash before the
 * transaction leaves the active snapshot whole plus a temporary image that cleanup() deletes; a crash after it
 * leaves a committed snapshot with its image, plus an old upper dir that cleanup() deletes. No record of a
 * committed snapshot ever exists without its image.
 */
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  existsSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { mkdir, readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { failedPrecondition } from '../../core/errdefs.js';
import type { Mount } from '../../core/mount.js';
import { removeTree } from '../../core/remove.js';
import { silentLogger, type Logger } from '../../log/index.js';
import { formatOverlayDirOption } from '../../mount/index.js';
import { diskUsage } from '../fsutil.js';
import { overlayOptionsFit } from '../overlay/index.js';
import { checkDType, supportsIndex } from '../overlay/check.js';
import { RecordedSnapshotter } from '../recorded.js';
import { Trash } from '../trash.js';
import { checkKey, SnapshotStorage, type SnapshotRecord } from '../storage.js';
import type { SnapshotOpts, Snapshotter, Usage } from '../types.js';
import { buildImage, findMkfsErofs, imageMount, isErofsMount, mountImage, unmountImage } from './erofs.js';

/** The file marking a snapshot directory as an EROFS snapshotter's (containerd's name). */
export const EROFS_LAYER_MARKER = '.erofslayer';
/** A committed snapshot's image (containerd's name). */
export const LAYER_IMAGE = 'layer.erofs';

export interface ErofsOptions {
  /** Extra overlay mount options, put first (containerd's `ovl_mount_options`). */
  ovlMountOptions?: string[];
  /** mkfs.erofs to use (found on PATH and in the sbin directories when absent). */
  mkfs?: string;
  log?: Logger;
}

const isErrno = (err: unknown, code: string) => (err as NodeJS.ErrnoException | undefined)?.code === code;

export class ErofsSnapshotter extends RecordedSnapshotter implements Snapshotter {
  /** None: containerd 2.2's EROFS snapshotter reports `rebase`; this one does not implement it. */
  readonly capabilities: readonly string[] = [];
  private readonly snapshotsDir: string;
  private readonly linksDir: string;
  /** Removed snapshots' directories and replaced upper dirs until their deletion in the background. */
  private readonly trash: Trash;
  /** Entries of snapshots/ an operation in progress owns (new-*): cleanup() leaves them alone. */
  private readonly inflight = new Set<string>();
  /** Ids whose image this process mounted (or found mounted) on their `fs`, and mounts in progress. */
  private readonly mounted = new Map<number, Promise<void>>();
  /** Commits in progress by id: a second Commit of the same key waits, then finds the key gone. */
  private readonly committing = new Map<number, Promise<void>>();

  constructor(
    private readonly root: string,
    storage: SnapshotStorage,
    private readonly baseOptions: string[],
    private readonly mkfs: string,
    private readonly log: Logger,
  ) {
    super(storage);
    this.snapshotsDir = join(root, 'snapshots');
    this.linksDir = join(root, 'l');
    this.trash = new Trash(join(root, 'trash'), log);
    // What a crash, a stop or a failed deletion left in the trash goes now.
    this.trash.queueLeftovers();
  }

  private dir(id: number): string {
    return join(this.snapshotsDir, String(id));
  }
  private fsPath(id: number): string {
    return join(this.dir(id), 'fs');
  }
  private workPath(id: number): string {
    return join(this.dir(id), 'work');
  }
  private imagePath(id: number): string {
    return join(this.dir(id), LAYER_IMAGE);
  }
  private linkPath(id: number): string {
    return join(this.linksDir, id.toString(36));
  }

  /** Committed: the image file (measured at commit). Active: the upper dir. View: nothing of its own. */
  async usage(key: string): Promise<Usage> {
    const rec = this.storage.get(key);
    if (rec.kind === 'view') return { size: 0, inodes: 0 };
    if (rec.kind === 'committed') {
      const stored = this.storage.storedUsage(key);
      if (stored) return stored;
      const usage = await imageUsage(this.imagePath(rec.id));
      this.storage.setUsage(key, usage);
      return usage;
    }
    try {
      return await diskUsage(this.fsPath(rec.id));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) this.storage.get(key); // removed meanwhile: 'not found'
      throw err;
    }
  }

  async commit(name: string, key: string, opts?: SnapshotOpts): Promise<void> {
    checkKey(key);
    checkKey(name, 'name');
    const rec = this.storage.get(key);
    const busy = this.committing.get(rec.id);
    if (busy) {
      await busy.catch(() => undefined);
      // The first commit went through (or failed): the storage says what this one is now.
      return this.commit(name, key, opts);
    }
    if (rec.kind !== 'active' || this.exists(name)) {
      // Throws the error of the kind (or of the taken name) before any image is built.
      this.storage.commitActive(key, name, undefined, opts?.labels ?? {});
      return;
    }
    const done = this.commitActive(rec, name, key, opts);
    this.committing.set(rec.id, done);
    try {
      await done;
    } finally {
      this.committing.delete(rec.id);
    }
  }

  private async commitActive(rec: SnapshotRecord, name: string, key: string, opts?: SnapshotOpts): Promise<void> {
    const id = rec.id;
    const suffix = randomBytes(6).toString('hex');
    const tmpImage = join(this.dir(id), `${LAYER_IMAGE}.new-${suffix}`);
    const newFs = join(this.dir(id), `fs.new-${suffix}`);
    const oldFs = join(this.dir(id), `fs.old-${suffix}`);
    const upper = this.fsPath(id);
    let placed = false;
    try {
      await buildImage(this.mkfs, upper, tmpImage);
      const usage = await imageUsage(tmpImage);
      // The empty directory the image will be mounted on: the upper dir's owner and mode, which children's
      // upper dirs take (as containerd's Prepare takes them from the parent's fs).
      const st = await stat(upper);
      mkdirSync(newFs, { mode: 0o755 });
      chownSync(newFs, st.uid, st.gid);
      chmodSync(newFs, st.mode & 0o7777);
      this.storage.commitActive(key, name, usage, opts?.labels ?? {}, () => {
        renameSync(upper, oldFs);
        try {
          renameSync(newFs, upper);
          renameSync(tmpImage, this.imagePath(id));
        } catch (err) {
          if (existsSync(newFs) || !existsSync(upper)) renameSync(oldFs, upper);
          throw err;
        }
        placed = true;
      });
    } catch (err) {
      if (placed && !this.recorded(id, 'committed')) {
        // The transaction failed after the renames: put the upper dir back.
        try {
          renameSync(this.imagePath(id), tmpImage);
          renameSync(upper, newFs);
          renameSync(oldFs, upper);
        } catch (e) {
          this.log.warn('failed to restore an active snapshot after a failed commit', { id, error: e });
        }
      }
      rmSync(tmpImage, { force: true });
      rmSync(newFs, { recursive: true, force: true });
      throw err;
    }
    await this.storage.durable();
    // The old upper and work dirs are no one's now.
    this.trash.put(oldFs, `${id}-upper-${suffix}`);
    this.trash.put(this.workPath(id), `${id}-work-${suffix}`);
  }

  async remove(key: string): Promise<void> {
    const res = this.storage.remove(key);
    // The record's drop is on disk before the data goes: a crash never leaves a record without its image.
    await this.storage.durable();
    await this.discard(res.id);
  }

  /** Removes many snapshots with one transaction and one sync; the first failure is thrown after the rest went. */
  async removeMany(keys: string[]): Promise<void> {
    const results = this.storage.removeMany(keys);
    await this.storage.durable();
    for (const r of results) if (!(r instanceof Error)) await this.discard(r.id);
    const failed = results.find((r): r is Error => r instanceof Error);
    if (failed) throw failed;
  }

  /**
   * After a record's drop is durable: unmounts the image, moves the directory to the trash, deletes it in the
   * background. A directory whose image stays mounted is left where it is (cleanup() tries again): nothing is
   * ever deleted through a mount.
   */
  private async discard(id: number): Promise<void> {
    rmSync(this.linkPath(id), { force: true });
    if (!(await this.release(id))) return;
    this.trash.put(this.dir(id), String(id));
  }

  /** Unmounts id's image if mounted; false when it stays mounted. */
  private async release(id: number): Promise<boolean> {
    const pending = this.mounted.get(id);
    this.mounted.delete(id);
    if (pending) await pending.catch(() => undefined);
    const fs = this.fsPath(id);
    if (!pending && !(await isErofsMount(fs))) return true;
    try {
      await unmountImage(fs);
    } catch (err) {
      this.log.warn('failed to unmount a layer image', { id, error: err });
    }
    if (await isErofsMount(fs)) {
      this.log.warn('a removed snapshot image is still mounted: its directory is kept until a cleanup', { id });
      return false;
    }
    return true;
  }







  /**
   * Deletes what no record owns: directories of unknown ids (their image unmounted first), temporary images and
   * directories of commits a crash interrupted, old upper dirs of committed snapshots, the trash, dangling links.
   */
  async cleanup(): Promise<void> {
    await Promise.all([...this.committing.values()].map((p) => p.catch(() => undefined)));
    await this.trash.settled();
    this.trash.queueLeftovers();
    await this.trash.settled();
    const entries = await readdir(this.snapshotsDir).catch(() => [] as string[]);
    const kinds = this.storage.kinds();
    for (const name of entries) {
      if (this.inflight.has(name)) continue;
      const id = /^[1-9]\d*$/.test(name) ? Number(name) : NaN;
      const kind = kinds.get(id);
      if (kind === undefined) {
        if (!Number.isNaN(id) && !(await this.release(id))) continue;
        if (Number.isNaN(id) && (await isErofsMount(join(this.snapshotsDir, name, 'fs')))) continue;
        this.trash.put(join(this.snapshotsDir, name), `stale-${name}-${randomBytes(4).toString('hex')}`);
        continue;
      }
      if (this.committing.has(id)) continue;
      let inside: string[];
      try {
        inside = readdirSync(this.dir(id));
      } catch {
        continue;
      }
      const keep = new Set(['fs', EROFS_LAYER_MARKER, kind === 'committed' ? LAYER_IMAGE : 'work']);
      for (const n of inside) {
        if (keep.has(n)) continue;
        this.trash.put(join(this.dir(id), n), `left-${id}-${n}-${randomBytes(4).toString('hex')}`);
      }
    }
    for (const name of await readdir(this.linksDir).catch(() => [] as string[])) {
      const id = /^[0-9a-z]+$/.test(name) ? parseInt(name, 36) : NaN;
      if (kinds.has(id) && id.toString(36) === name) continue;
      rmSync(join(this.linksDir, name), { force: true, recursive: true });
    }
    await this.trash.settled();
  }

  /** Unmounts every image this snapshotter mounted, then closes its records. */
  async close(): Promise<void> {
    await Promise.all([...this.committing.values()].map((p) => p.catch(() => undefined)));
    for (const id of [...this.mounted.keys()]) await this.release(id);
    await this.trash.settled();
    await this.storage.durable();
    this.storage.close();
  }


  protected async createSnapshot(kind: 'active' | 'view', key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]> {
    checkKey(key);
    const tmpName = `new-${randomBytes(8).toString('hex')}`;
    const td = join(this.snapshotsDir, tmpName);
    this.inflight.add(tmpName);
    let placed: number | undefined;
    try {
      mkdirSync(td, { mode: 0o700 });
      mkdirSync(join(td, 'fs'), { mode: 0o755 });
      chmodSync(join(td, 'fs'), 0o755);
      if (kind === 'active') {
        mkdirSync(join(td, 'work'), { mode: 0o711 });
        chmodSync(join(td, 'work'), 0o711);
      }
      writeFileSync(join(td, EROFS_LAYER_MARKER), '', { mode: 0o644 });
      const rec = this.storage.create(kind, key, parent, opts?.labels ?? {}, (id, parentIds) => {
        if (parentIds.length > 0) {
          // The parent's fs has its image's root owner (mounted) or the same owner (the empty mount point).
          const st = statSync(this.fsPath(parentIds[0]!));
          lchownSync(join(td, 'fs'), st.uid, st.gid);
        }
        const path = this.dir(id);
        if (existsSync(path)) renameSync(path, join(this.snapshotsDir, `rm-stale-${id}-${randomBytes(4).toString('hex')}`));
        renameSync(td, path);
        placed = id;
      });
      await this.storage.durable();
      return await this.mountsOf(rec);
    } catch (err) {
      if (placed !== undefined && !this.recorded(placed)) await removeTree(this.dir(placed)).catch(() => undefined);
      throw err;
    } finally {
      if (placed === undefined || existsSync(td)) await removeTree(td).catch(() => undefined);
      this.inflight.delete(tmpName);
    }
  }

  private exists(key: string): boolean {
    try {
      this.storage.get(key);
      return true;
    } catch {
      return false;
    }
  }

  private recorded(id: number, kind?: string): boolean {
    try {
      const k = this.storage.kinds().get(id);
      return k !== undefined && (kind === undefined || k === kind);
    } catch {
      return true; // cannot tell: leave it to cleanup()
    }
  }

  /** Makes sure id's image is mounted on its fs directory (once per process, and again if found unmounted). */
  private ensureMounted(id: number): Promise<void> {
    let p = this.mounted.get(id);
    if (!p) {
      p = (async () => {
        if (await isErofsMount(this.fsPath(id))) return;
        await mountImage(this.imagePath(id), this.fsPath(id));
      })();
      this.mounted.set(id, p);
      p.catch(() => {
        if (this.mounted.get(id) === p) this.mounted.delete(id);
      });
    }
    return p;
  }

  protected async mountsOf(rec: SnapshotRecord): Promise<Mount[]> {
    const { id, kind, parentIds } = rec;
    if (parentIds.length === 0) {
      return [{ type: 'bind', source: this.fsPath(id), options: [kind === 'view' ? 'ro' : 'rw', 'rbind'] }];
    }
    if (kind === 'view' && parentIds.length === 1) {
      const m = imageMount(this.imagePath(parentIds[0]!));
      return [{ ...m, options: [...m.options] }];
    }
    await Promise.all(parentIds.map((p) => this.ensureMounted(p)));
    const options = [...this.baseOptions];
    if (kind === 'active') {
      options.push(formatOverlayDirOption('workdir', [this.workPath(id)]), formatOverlayDirOption('upperdir', [this.fsPath(id)]));
    }
    const plain = [...options, formatOverlayDirOption('lowerdir', parentIds.map((p) => this.fsPath(p)))];
    if (overlayOptionsFit(plain)) return [{ type: 'overlay', source: 'overlay', options: plain }];
    this.ensureLinks(parentIds);
    return [{ type: 'overlay', source: 'overlay', options: [...options, formatOverlayDirOption('lowerdir', parentIds.map((p) => this.linkPath(p)))] }];
  }

  private ensureLinks(ids: number[]): void {
    for (const id of ids) {
      try {
        lstatSync(this.linkPath(id));
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err;
        try {
          symlinkSync(`../snapshots/${id}/fs`, this.linkPath(id));
        } catch (e) {
          if (!isErrno(e, 'EEXIST')) throw e;
        }
      }
    }
  }
}

/** An image's usage as containerd counts a file: its allocated blocks, one inode. */
async function imageUsage(image: string): Promise<Usage> {
  const st = await stat(image);
  return { size: st.blocks * 512, inodes: 1 };
}

/** Opens (creating if needed) an EROFS snapshotter on root. erofsUnsupportedReason() says whether the host can. */
export async function openErofsSnapshotter(root: string, opts: ErofsOptions = {}): Promise<ErofsSnapshotter> {
  const log = opts.log ?? silentLogger;
  const mkfs = opts.mkfs ?? (await findMkfsErofs());
  if (!mkfs) throw failedPrecondition('mkfs.erofs not found (install erofs-utils)');
  const abs = resolve(root);
  await mkdir(abs, { recursive: true, mode: 0o700 });
  await checkDType(abs);
  for (const d of ['snapshots', 'l', 'trash']) await mkdir(join(abs, d), { recursive: true, mode: 0o700 });
  const mountOptions = opts.ovlMountOptions ?? [];
  const base = [...mountOptions];
  if (supportsIndex() && !mountOptions.some((o) => o === 'index' || o.startsWith('index='))) base.push('index=off');
  const storage = SnapshotStorage.open(join(abs, 'metadata.db'));
  const sn = new ErofsSnapshotter(abs, storage, base, mkfs, log);
  return sn;
}
