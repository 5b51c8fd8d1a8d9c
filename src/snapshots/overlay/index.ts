/**
 * The overlayfs snapshotter, with containerd's layout and semantics (containerd 1.6 snapshots/overlay):
 *
 *   <root>/metadata.db           SnapshotStorage: keys, ids, parent chains, kinds, labels, committed usage
 *   <root>/snapshots/<id>/fs     the snapshot's own layer (overlay upper dir while active, a lower once committed)
 *   <root>/snapshots/<id>/work   overlay's work dir (active snapshots only)
 *   <root>/l/<id in base 36>     a short symlink to ../snapshots/<id>/fs, for very long chains (see below)
 *   <root>/trash/<id>            a removed snapshot's directory until its deletion (see below)
 *
 * Creation builds `new-<random>` in snapshots/ and renames it to its id inside the storage transaction; removal
 * drops the record (durably) and renames the directory into trash/ within the call, and deletes it afterwards
 * in the background (as containerd's Remove drops the record and leaves the data to a later cleanup): the call
 * costs a record and a rename, whatever the snapshot holds. cleanup() and close() wait for those deletions, and
 * cleanup() and the next start delete whatever a crash left in trash/. Whatever else a crash leaves (new-*,
 * rm-*, an id with no record, a dangling link) belongs to no record and goes at the next cleanup().
 *
 * Long chains: the kernel reads mount data from a single page, so lowerdir cannot list hundreds of full paths.
 * containerd's mount code (and src/mount) make layer paths relative to their common directory, which still
 * leaves "<id>/fs" per layer - about 4000 bytes for 500 layers with four-digit ids. When the plain options
 * would not fit a page even after the compaction either mount code does, lowerdir names the layers through the
 * short links in <root>/l instead (overlayfs resolves them when mounting), which compact to two or three
 * characters each. Shorter chains keep the plain paths, exactly as containerd returns them.
 */
import { crashPoint } from '../../core/crashpoint.js';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
} from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { removeTree } from '../../core/remove.js';
import { join, resolve } from 'node:path';
import { compactOverlayOptions, formatOverlayDirOption, parseOverlayDirOption } from '../../mount/index.js';
import { failedPrecondition } from '../../core/errdefs.js';
import { LABEL_SNAPSHOT_GIDMAPPING, LABEL_SNAPSHOT_UIDMAPPING, rootPair } from '../../core/idmap.js';
import { silentLogger, type Logger } from '../../log/index.js';
import { diskUsage, syncLayer } from '../fsutil.js';
import { Trash } from '../trash.js';
import { checkKey, SnapshotStorage, type SnapshotRecord } from '../storage.js';
import { LABEL_SNAPSHOT_REBASE, SnapshotterCapability, type Info, type SnapshotOpts, type Snapshotter, type Usage, type WalkFn } from '../types.js';
import type { Mount } from '../../core/mount.js';
import { checkDType, needsUserXAttr, supportsIndex } from './check.js';

export { checkIdmapSupport, checkOverlaySupport, needsUserXAttr, supportsIndex } from './check.js';

export interface OverlayOptions {
  /** Extra overlay mount options, put first (containerd's `mount_options`). */
  mountOptions?: string[];
  /**
   * The host mounts overlays over idmapped lowers (checkIdmapSupport; the plugin probes once): mounts carry the
   * `containerd.io/snapshot/uidmapping` / `gidmapping` labels as `uidmap=` / `gidmap=` options, and the
   * backend reports `remap-ids`. Without it the labels only set the owner of the snapshot's root, as in
   * containerd, and a client that needs a remapped rootfs is told the host cannot (`only-remap-ids`).
   */
  remapIds?: boolean;
  log?: Logger;
}

/** The kernel copies one page of mount data and keeps its last byte for the terminating NUL. */
const PAGE_SIZE = 4096;

/* ------------------------------------------------------------------------------------------------------------
 * Will the options mount? What containerd 1.6's mount package and src/mount each pass to the kernel.
 * ---------------------------------------------------------------------------------------------------------- */

/** Go's path.Dir: everything up to the last slash, cleaned ("/a/b/" -> "/a/b", "/a/b/c" -> "/a/b"). */
function goPathDir(p: string): string {
  const i = p.lastIndexOf('/');
  if (i < 0) return '.';
  const d = p.slice(0, i + 1).replace(/\/+/g, '/');
  return d.length > 1 ? d.replace(/\/$/, '') : d;
}

/**
 * What containerd 1.6's Mount.Mount does with an overlay's options before mount(2): when they add up to a page
 * less 512 bytes, lowerdir entries lose the parent of their longest common prefix and the mount runs from that
 * directory (upperdir and workdir stay as they are). Returns the options and the directory, if any.
 */
export function containerdCompaction(options: string[]): { options: string[]; cwd?: string } {
  const total = options.reduce((n, o) => n + o.length, 0);
  if (total < PAGE_SIZE - 512) return { options };
  // The first lowerdir option, as containerd's findOverlayLowerdirs takes it.
  const idx = options.findIndex((o) => parseOverlayDirOption(o)?.key === 'lowerdir');
  if (idx < 0) return { options };
  const dirs = parseOverlayDirOption(options[idx]!)!.value.split(':');
  if (dirs.length === 1) return { options };
  let min = dirs[0]!;
  let max = dirs[0]!;
  for (const d of dirs) {
    if (d < min) min = d;
    if (d > max) max = d;
  }
  let n = 0;
  while (n < min.length && n < max.length && min[n] === max[n]) n++;
  const prefix = min.slice(0, n);
  if (prefix === '') return { options };
  const common = goPathDir(prefix);
  if (common === '/') return { options };
  const strip = common.length + 1;
  const rest = options.filter((_, i) => i !== idx);
  return { options: [...rest, formatOverlayDirOption('lowerdir', dirs.map((d) => d.slice(strip)))], cwd: common };
}

/** Whether an overlay mount with these options fits the kernel's page through both mount codes. */
export function overlayOptionsFit(options: string[]): boolean {
  if (containerdCompaction(options).options.join(',').length >= PAGE_SIZE) return false;
  return compactOverlayOptions(options).options.join(',').length < PAGE_SIZE;
}

/* ------------------------------------------------------------------------------------------------------------
 * The snapshotter.
 * ---------------------------------------------------------------------------------------------------------- */

const isErrno = (err: unknown, code: string) => (err as NodeJS.ErrnoException | undefined)?.code === code;

/**
 * The overlayfs snapshotter with the one thing a snapshotter built on it (src/snapshots/stargz) needs beyond the
 * contract: where a snapshot's own layer directory is, so that it can mount a remote layer there.
 */
export interface OverlayBackend extends Snapshotter {
  /** `<root>/snapshots/<id>/fs` of the snapshot `key` (its upper directory, a lower once committed). */
  layerDir(key: string): string;
}

class OverlaySnapshotter implements OverlayBackend {
  /**
   * containerd 2.x's overlayfs reports `remap-ids` where idmapped overlays work, and `only-remap-ids` unless its
   * `slow_chown` fallback is configured (Strata has no recursive-chown fallback: always). `rebase` (containerd
   * 2.2): a snapshot prepared without a parent commits onto one. Not inside a user namespace (`userxattr`), where
   * overlay whiteouts (0/0 character devices) cannot be made, as containerd 2.2 turns it off there (#13388).
   */
  readonly capabilities: readonly string[];
  private readonly snapshotsDir: string;
  private readonly linksDir: string;
  /** Removed snapshots' directories until their deletion in the background (see discard). */
  private readonly trash: Trash;
  /** Entries of snapshots/ that an operation in progress owns (new-*, rm-*): cleanup() leaves them alone. */
  private readonly inflight = new Set<string>();
  /** Mounts by snapshot id (see mountsOf). */
  private readonly mountCache = new Map<number, Mount[]>();
  /**
   * The lower layers of every snapshot on one parent chain (keyed by the storage's chain array, which is fixed for
   * a committed parent): the `lowerdir=` options, plain and through layer links, and whether an overlay on them
   * fits the kernel's page, by kind and by the number of digits of the snapshot's own id (its upper and work
   * paths are the only other part, and every compaction strips them to the same length for the same digits).
   * A 64-deep chain's check compacted and measured 5 KiB of options twice on every Prepare (issue 12).
   */
  private readonly lowerCache = new WeakMap<readonly number[], LowerLayers>();
  constructor(
    private readonly root: string,
    private readonly storage: SnapshotStorage,
    /** mount_options, index=off and userxattr as they apply here: the start of every overlay mount. */
    private readonly baseOptions: string[],
    private readonly log: Logger,
    userxattr: boolean,
    private readonly remapIds = false,
  ) {
    this.capabilities = [
      ...(userxattr ? [] : [SnapshotterCapability.Rebase]),
      ...(remapIds ? [SnapshotterCapability.RemapIds, SnapshotterCapability.OnlyRemapIds] : [SnapshotterCapability.OnlyRemapIds]),
    ];
    this.snapshotsDir = join(root, 'snapshots');
    this.linksDir = join(root, 'l');
    this.trash = new Trash(join(root, 'trash'), log, {
      afterMove: 'overlay.remove.after-rename',
      beforeDelete: 'overlay.remove.before-rmdir',
      afterDelete: 'overlay.remove.after-rmdir',
    });
    // What a crash, a stop or a failed deletion left in the trash goes now.
    this.trash.queueLeftovers();
  }

  private dir(id: number): string {
    return join(this.snapshotsDir, String(id));
  }
  private upperPath(id: number): string {
    return join(this.snapshotsDir, String(id), 'fs');
  }
  private workPath(id: number): string {
    return join(this.snapshotsDir, String(id), 'work');
  }
  private linkPath(id: number): string {
    return join(this.linksDir, id.toString(36));
  }
  private linkTarget(id: number): string {
    return `../snapshots/${id}/fs`;
  }
  /** An empty directory (0755 root, never written: it is only ever a lower layer): `<root>/empty`. */
  private emptyDir(): string {
    const dir = join(this.root, 'empty');
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    return dir;
  }

  async stat(key: string): Promise<Info> {
    return this.storage.info(key);
  }

  layerDir(key: string): string {
    return this.upperPath(this.storage.get(key).id);
  }

  async update(info: Pick<Info, 'name' | 'labels'>, fieldpaths?: string[]): Promise<Info> {
    const out = this.storage.update(info, fieldpaths);
    // The idmap labels are read when mounts are computed.
    this.mountCache.delete(this.storage.get(out.name).id);
    await this.storage.durable();
    return out;
  }

  /**
   * Active: the upper directory now. Committed: measured once, on the first call after the commit, and kept
   * (the directory never changes again; measuring in commit would walk every file an unpack just wrote,
   * which cost as much as writing 50k small files). View: nothing of its own (zero).
   */
  async usage(key: string): Promise<Usage> {
    const rec = this.storage.get(key);
    if (rec.kind === 'view') return { size: 0, inodes: 0 };
    if (rec.kind === 'committed') {
      const stored = this.storage.storedUsage(key);
      if (stored) return stored;
    }
    try {
      const usage = await diskUsage(this.upperPath(rec.id));
      if (rec.kind === 'committed') this.storage.setUsage(key, usage);
      return usage;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) this.storage.get(key); // removed meanwhile: 'not found'
      throw err;
    }
  }

  async mounts(key: string): Promise<Mount[]> {
    const rec = this.storage.get(key);
    if (rec.kind === 'committed') {
      throw failedPrecondition(`failed to get active mount: requested snapshot ${key} not active or view`);
    }
    return this.mountsOf(rec, () => this.storage.info(key).labels);
  }

  prepare(key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]> {
    return this.createSnapshot('active', key, parent, opts);
  }

  view(key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]> {
    return this.createSnapshot('view', key, parent, opts);
  }

  async commit(name: string, key: string, opts?: SnapshotOpts): Promise<void> {
    // Usage is measured when first asked for (see usage()); commitActive reports wrong kinds by itself.
    crashPoint('overlay.commit.before-record');
    // Rebase (opts.parent on a snapshot prepared without one): the layer is the upper directory whatever lies
    // below it, so only the record's parent changes, plus the root's owner (a child's root belongs to the owner
    // of its parent's root, as at prepare). Whiteouts are in overlay's format if the snapshot was prepared with
    // LABEL_SNAPSHOT_REBASE (see computeMounts).
    const rebase = opts?.parent ? { parent: opts.parent, allowed: this.capabilities.includes(SnapshotterCapability.Rebase) } : undefined;
    // The layer's files durable before the record says committed (containerd #5854).
    await syncLayer(this.upperPath(this.storage.get(key).id), this.root);
    const id = this.storage.commitActive(
      key,
      name,
      undefined,
      opts?.labels ?? {},
      (id, rebasedOnto) => {
        if (rebasedOnto && rebasedOnto.length > 0) {
          const st = statSync(this.upperPath(rebasedOnto[0]!));
          const own = lstatSync(this.upperPath(id));
          if (own.uid !== st.uid || own.gid !== st.gid) lchownSync(this.upperPath(id), st.uid, st.gid);
        }
      },
      rebase,
    );
    crashPoint('overlay.commit.after-record');
    this.mountCache.delete(id);
    await this.storage.durable();
  }

  async remove(key: string): Promise<void> {
    crashPoint('overlay.remove.before-record');
    const { id } = this.storage.remove(key);
    crashPoint('overlay.remove.after-record');
    // The record's drop is on disk before the data moves: a crash never leaves a record without its directory.
    await this.storage.durable();
    crashPoint('overlay.remove.after-sync');
    this.discard(id);
  }

  /** Removes many snapshots with one transaction and one sync; the first failure is thrown after the rest went. */
  async removeMany(keys: string[]): Promise<void> {
    crashPoint('overlay.remove.before-record');
    const results = this.storage.removeMany(keys);
    crashPoint('overlay.remove.after-record');
    await this.storage.durable();
    crashPoint('overlay.remove.after-sync');
    for (const r of results) if (!(r instanceof Error)) this.discard(r.id);
    const failed = results.find((r): r is Error => r instanceof Error);
    if (failed) throw failed;
  }

  /**
   * After a record's drop is durable: moves the directory out of its id's place and the layer link away, and
   * queues the directory for deletion. From here on nothing fails the call; whatever stays behind (a cleanup()
   * may have moved the directory first) is cleanup()'s.
   */
  private discard(id: number): void {
    this.mountCache.delete(id);
    this.trash.put(this.dir(id), String(id));
    try {
      rmSync(this.linkPath(id), { force: true });
    } catch (err) {
      this.log.warn('failed to remove layer link', { path: this.linkPath(id), error: err });
    }
  }

  async walk(fn: WalkFn, filters?: string[]): Promise<void> {
    for (const info of this.storage.list(filters)) await fn(info);
  }

  async cleanup(): Promise<void> {
    await this.trash.settled();
    // What a crash (or a failed deletion) left in the trash.
    this.trash.queueLeftovers();
    await this.trash.settled();
    const entries = await readdir(this.snapshotsDir).catch((err: unknown) => {
      if (isErrno(err, 'ENOENT')) return [] as string[];
      throw err;
    });
    const links = await readdir(this.linksDir).catch(() => [] as string[]);
    // From here to the renames, synchronous: a directory or link seen above was placed by a transaction that
    // has committed, so ids() knows it; nothing can claim an unowned id before it is moved out of the way.
    const ids = this.storage.ids();
    const doomed: string[] = [];
    for (const name of entries) {
      if (this.inflight.has(name)) continue;
      if (/^[1-9]\d*$/.test(name) && ids.has(Number(name))) continue;
      const path = join(this.snapshotsDir, name);
      if (name.startsWith('rm-')) {
        doomed.push(path);
        continue;
      }
      const trash = join(this.snapshotsDir, `rm-${name}-${randomBytes(4).toString('hex')}`);
      try {
        renameSync(path, trash);
        doomed.push(trash);
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) this.log.warn('failed to move an unowned snapshot directory', { path, error: err });
      }
    }
    for (const name of links) {
      const id = /^[0-9a-z]+$/.test(name) ? parseInt(name, 36) : NaN;
      if (ids.has(id) && id.toString(36) === name) continue;
      try {
        rmSync(join(this.linksDir, name), { force: true, recursive: true });
      } catch (err) {
        this.log.warn('failed to remove an unowned layer link', { path: join(this.linksDir, name), error: err });
      }
    }
    await Promise.all(
      doomed.map((path) =>
        removeTree(path).catch((err: unknown) => {
          this.log.warn('failed to remove directory', { path, error: err });
        }),
      ),
    );
  }

  async close(): Promise<void> {
    await this.trash.settled();
    await this.storage.durable();
    this.storage.close();
  }

  private async createSnapshot(kind: 'active' | 'view', key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]> {
    checkKey(key);
    // containerd: with a uid/gid mapping, the snapshot's root belongs to the container's root on the host.
    const labels = opts?.labels ?? {};
    const mapped =
      labels[LABEL_SNAPSHOT_UIDMAPPING] !== undefined || labels[LABEL_SNAPSHOT_GIDMAPPING] !== undefined
        ? rootPair(labels[LABEL_SNAPSHOT_UIDMAPPING], labels[LABEL_SNAPSHOT_GIDMAPPING])
        : undefined;
    // The name is known (and claimed) before the directory exists, so a concurrent cleanup() never takes it.
    const tmpName = `new-${randomBytes(8).toString('hex')}`;
    const td = join(this.snapshotsDir, tmpName);
    this.inflight.add(tmpName);
    let placed: number | undefined;
    try {
      // A handful of synchronous calls (tens of microseconds) cost less than as many thread-pool round trips.
      mkdirSync(td, { mode: 0o700 });
      mkdirSync(join(td, 'fs'), { mode: 0o755 });
      chmodSync(join(td, 'fs'), 0o755); // whatever the umask
      if (kind === 'active') {
        mkdirSync(join(td, 'work'), { mode: 0o711 });
        chmodSync(join(td, 'work'), 0o711);
      }
      const rec = this.storage.create(kind, key, parent, opts?.labels ?? {}, (id, parentIds) => {
        // A child's root belongs to whoever owns the parent's root, as in containerd (unless mapped, above).
        if (mapped) {
          // A parentless snapshot with remap-ids is mounted as an idmapped bind of this very directory: on disk
          // its root stays 0:0, which the bind shows as the mapped root. (containerd chowns it to the mapped
          // root here too, which its idmapped bind then shows as an unmapped owner, nobody, inside.)
          if (!(this.remapIds && parentIds.length === 0)) lchownSync(join(td, 'fs'), mapped.uid, mapped.gid);
        } else if (parentIds.length > 0) {
          const st = statSync(this.upperPath(parentIds[0]!));
          lchownSync(join(td, 'fs'), st.uid, st.gid);
        }
        // Anything at this id's paths was left by a transaction that never committed: it belongs to nobody.
        const path = this.dir(id);
        if (existsSync(path)) renameSync(path, join(this.snapshotsDir, `rm-stale-${id}-${randomBytes(4).toString('hex')}`));
        rmSync(this.linkPath(id), { force: true });
        symlinkSync(this.linkTarget(id), this.linkPath(id));
        try {
          crashPoint('overlay.prepare.before-rename');
          renameSync(td, path);
          crashPoint('overlay.prepare.after-rename');
        } catch (err) {
          rmSync(this.linkPath(id), { force: true });
          throw err;
        }
        placed = id;
      });
      crashPoint('overlay.prepare.after-record');
      await this.storage.durable();
      return this.mountsOf(rec, () => labels);
    } catch (err) {
      // The transaction failed after the directory moved into place: take it back out.
      if (placed !== undefined && !this.recorded(placed)) {
        rmSync(this.linkPath(placed), { force: true });
        await removeTree(this.dir(placed)).catch(() => undefined);
      }
      throw err;
    } finally {
      // Gone when it was renamed into place.
      if (placed === undefined || existsSync(td)) {
        await removeTree(td).catch((err: unknown) => {
          this.log.warn('failed to remove temporary snapshot directory', { path: td, error: err });
        });
      }
      this.inflight.delete(tmpName);
    }
  }

  private recorded(id: number): boolean {
    try {
      return this.storage.ids().has(id);
    } catch {
      return true; // cannot tell: leave it to cleanup()
    }
  }

  /**
   * The mounts of an active snapshot or a view: the same on every call for the same record (a snapshot's
   * parent chain never changes), so they are computed once; commit and remove drop the entry.
   */
  private mountsOf(rec: SnapshotRecord, labelsOf: () => Record<string, string>): Mount[] {
    let mounts = this.mountCache.get(rec.id);
    if (!mounts) {
      mounts = this.computeMounts(rec);
      if (this.remapIds) {
        const idmap = idmapOptions(labelsOf());
        if (idmap.length > 0) mounts = mounts.map((m) => ({ ...m, options: [...idmap, ...m.options] }));
      }
      this.mountCache.set(rec.id, mounts);
    }
    return mounts.map((m) => ({ ...m, options: [...m.options] }));
  }

  private computeMounts(rec: SnapshotRecord): Mount[] {
    const { id, kind, parentIds } = rec;
    if (parentIds.length === 0 && kind === 'active' && rec.rebase && this.capabilities.includes(SnapshotterCapability.Rebase)) {
      // To be committed onto a parent (LABEL_SNAPSHOT_REBASE): an overlay over an empty lower directory, so
      // that whatever writes into it (the differ's upperdir path, or a real mount) leaves overlay whiteouts and
      // opaque directories, which keep hiding the parent's files once rebased. A bind mount here would turn a
      // whiteout into the removal of nothing (containerd 2.2, #13030).
      return [
        {
          type: 'overlay',
          source: 'overlay',
          options: [
            ...this.baseOptions,
            formatOverlayDirOption('workdir', [this.workPath(id)]),
            formatOverlayDirOption('upperdir', [this.upperPath(id)]),
            formatOverlayDirOption('lowerdir', [this.emptyDir()]),
          ],
        },
      ];
    }
    if (parentIds.length === 0) {
      return [{ type: 'bind', source: this.upperPath(id), options: [kind === 'view' ? 'ro' : 'rw', 'rbind'] }];
    }
    if (kind === 'view' && parentIds.length === 1) {
      return [{ type: 'bind', source: this.upperPath(parentIds[0]!), options: ['ro', 'rbind'] }];
    }
    const options = [...this.baseOptions];
    if (kind === 'active') {
      options.push(formatOverlayDirOption('workdir', [this.workPath(id)]), formatOverlayDirOption('upperdir', [this.upperPath(id)]));
    }
    let lower = this.lowerCache.get(parentIds);
    if (!lower) this.lowerCache.set(parentIds, (lower = { plain: formatOverlayDirOption('lowerdir', parentIds.map((p) => this.upperPath(p))), fits: new Map() }));
    const shape = `${kind}:${String(id).length}`;
    const plain = [...options, lower.plain];
    let fits = lower.fits.get(shape);
    if (fits === undefined) lower.fits.set(shape, (fits = overlayOptionsFit(plain)));
    if (fits) return [{ type: 'overlay', source: 'overlay', options: plain }];
    if (!lower.linksChecked) {
      this.ensureLinks(parentIds);
      lower.linksChecked = true;
    }
    lower.linked ??= formatOverlayDirOption('lowerdir', parentIds.map((p) => this.linkPath(p)));
    const linked = [...options, lower.linked];
    const linkedShape = `${shape}:linked`;
    let linkedFits = lower.fits.get(linkedShape);
    if (linkedFits === undefined) lower.fits.set(linkedShape, (linkedFits = overlayOptionsFit(linked)));
    if (!linkedFits) {
      this.log.warn('overlay mount options exceed a page even through layer links', { layers: parentIds.length });
    }
    return [{ type: 'overlay', source: 'overlay', options: linked }];
  }

  /** Recreates links a record has lost (e.g. a root from before links, or a hand-made repair). */
  private ensureLinks(ids: number[]): void {
    for (const id of ids) {
      try {
        lstatSync(this.linkPath(id));
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err;
        try {
          symlinkSync(this.linkTarget(id), this.linkPath(id));
        } catch (e) {
          if (!isErrno(e, 'EEXIST')) throw e;
        }
      }
    }
  }
}

/** What computeMounts keeps per parent chain (see OverlaySnapshotter.lowerCache). */
interface LowerLayers {
  plain: string;
  linked?: string;
  /** The layer links of the chain were checked (and recreated where missing) once. */
  linksChecked?: boolean;
  /** `${kind}:${digits of the own id}` (and `:linked`) -> the options fit a page. */
  fits: Map<string, boolean>;
}

/**
 * containerd 2.x's mount options for the mapping labels, first on every mount (bind or overlay): `uidmap=` and
 * `gidmap=` with the labels' text; the mount code makes the lowers (or the bind) idmapped.
 */
function idmapOptions(labels: Record<string, string>): string[] {
  const out: string[] = [];
  const uid = labels[LABEL_SNAPSHOT_UIDMAPPING];
  const gid = labels[LABEL_SNAPSHOT_GIDMAPPING];
  if (uid !== undefined) out.push(`uidmap=${uid}`);
  if (gid !== undefined) out.push(`gidmap=${gid}`);
  return out;
}

/** Options containerd puts first on every overlay mount here, unless mount_options already choose them. */
function baseOptions(mountOptions: string[], indexOff: boolean, userxattr: boolean): string[] {
  const has = (name: string) => mountOptions.some((o) => o === name || o.startsWith(`${name}=`));
  const out = [...mountOptions];
  if (indexOff && !has('index')) out.push('index=off');
  if (userxattr && !has('userxattr')) out.push('userxattr');
  return out;
}

/**
 * Opens (creating if needed) an overlayfs snapshotter on root. It does not test that overlayfs mounts here:
 * checkOverlaySupport() does (the plugin runs it first).
 */
export async function openOverlaySnapshotter(root: string, opts: OverlayOptions = {}): Promise<OverlayBackend> {
  const log = opts.log ?? silentLogger;
  const abs = resolve(root);
  await mkdir(abs, { recursive: true, mode: 0o700 });
  await checkDType(abs);
  await mkdir(join(abs, 'snapshots'), { recursive: true, mode: 0o700 });
  await mkdir(join(abs, 'l'), { recursive: true, mode: 0o700 });
  await mkdir(join(abs, 'trash'), { recursive: true, mode: 0o700 });
  let userxattr = false;
  try {
    userxattr = await needsUserXAttr(abs, log);
  } catch (err) {
    log.warn('cannot detect whether "userxattr" is needed, assuming not', { error: err });
  }
  const storage = SnapshotStorage.open(join(abs, 'metadata.db'));
  const sn = new OverlaySnapshotter(abs, storage, baseOptions(opts.mountOptions ?? [], supportsIndex(), userxattr), log, userxattr, opts.remapIds ?? false);
  return sn;
}
