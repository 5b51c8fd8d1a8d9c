/**
 * Bookkeeping every snapshot backend shares: ids, keys, the parent chain, kind, labels, times and the usage
 * of committed snapshots, in a SQLite file inside the backend's own root (so a backend served alone as a
 * proxy plugin carries its records with it).
 *
 * Crash consistency comes from the order of operations, with backends following two rules:
 *  - creating: build the directory (or subvolume) under a temporary name, then call create() with a `place`
 *    callback that renames it to its id-derived path synchronously inside the transaction. A crash leaves at
 *    worst a directory with no record, never a record with no directory.
 *  - removing: remove() drops the record in its own transaction, then the backend deletes the directory.
 *    A crash leaves at worst an unowned directory.
 * cleanup() in each backend deletes unowned directories, using ids().
 *
 * Durability: a mutating method commits without syncing; the backend awaits durable() before its call returns
 * (GroupCommit: concurrent callers share one fdatasync, run off the event loop). A call that returned is on disk.
 *
 * Keys are opaque strings (the namespaced layer passes "<namespace>/<n>/<key>"): they are never paths.
 */
import { crashPoint } from '../core/crashpoint.js';
import { alreadyExists, failedPrecondition, invalidArgument, notFound, notImplemented, StrataError } from '../core/errdefs.js';
import { parseAll } from '../filters/index.js';
import { snapshotAdaptor } from './filter.js';
import { applyLabelPaths, validateLabelEntries, validateLabels } from '../core/labels.js';
import { closeSync, fdatasync, openSync } from 'node:fs';
import { openSqlite, type DB } from '../core/sqlite.js';
import { LABEL_SNAPSHOT_REBASE, type Info, type Kind, type Usage } from './types.js';
import { fromParts, now as nowTime } from '../core/time.js';

export interface SnapshotRecord {
  id: number;
  kind: Kind;
  /** Ids of the parent chain, nearest parent first. */
  parentIds: number[];
  /** An active snapshot prepared without a parent with LABEL_SNAPSHOT_REBASE = "true" (to be rebased). */
  rebase?: boolean;
}

const wantsRebase = (kind: Kind, parentId: number | null, labels: Record<string, string>): boolean =>
  kind === 'active' && parentId === null && labels[LABEL_SNAPSHOT_REBASE] === 'true';

interface Row {
  id: number;
  key: string;
  parent_id: number | null;
  parent_key: string | null;
  kind: Kind;
  labels: string;
  created_at: number;
  updated_at: number;
  created_ns: number;
  updated_ns: number;
  size: number | null;
  inodes: number | null;
}

const SELECT = `SELECT s.id, s.key, s.parent_id, p.key AS parent_key, s.kind, s.labels, s.created_at, s.updated_at, s.created_ns, s.updated_ns, s.size, s.inodes
  FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id`;

const toInfo = (r: Row): Info => ({
  kind: r.kind,
  name: r.key,
  parent: r.parent_key ?? '',
  labels: JSON.parse(r.labels) as Record<string, string>,
  created: fromParts(r.created_at, r.created_ns),
  updated: fromParts(r.updated_at, r.updated_ns),
});

const schema = [
  `CREATE TABLE snapshots (
     id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a stale directory can't be mistaken for a new one
     key        TEXT NOT NULL UNIQUE,
     parent_id  INTEGER REFERENCES snapshots(id),   -- RESTRICT: a parent with children cannot go
     kind       TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
     labels     TEXT NOT NULL DEFAULT '{}',
     created_at INTEGER NOT NULL,
     updated_at INTEGER NOT NULL,
     size       INTEGER,
     inodes     INTEGER
   );
   CREATE INDEX snapshots_by_parent ON snapshots(parent_id);`,
  // 2: nanosecond timestamps (src/time): the nanoseconds within the *_at millisecond.
  `ALTER TABLE snapshots ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE snapshots ADD COLUMN updated_ns INTEGER NOT NULL DEFAULT 0;`,
];

const noop = () => undefined;

/**
 * Group commit for a SQLite file in WAL mode: transactions commit without a sync (synchronous = NORMAL for
 * their duration, which in WAL mode keeps every commit atomic and the file consistent, and only defers the
 * sync), and durable() makes everything committed so far durable with one fdatasync of the WAL file, run on
 * libuv's thread pool instead of the event loop. Callers that ask while a sync is in flight share the next
 * one, so N concurrent calls cost one or two syncs instead of N serial ones on the main thread.
 *
 * Why this is as durable as synchronous = FULL: FULL makes SQLite sync the WAL at each commit; here the same
 * file is synced (fdatasync flushes the inode's data and the size, all a WAL needs, as SQLite itself does
 * where built with HAVE_FDATASYNC) before the caller is answered. A checkpoint in NORMAL mode syncs the WAL
 * before copying it into the database and the database afterwards, so frames it moves are durable before
 * the WAL restarts. The main database file's own sync stays SQLite's.
 */
export class GroupCommit {
  private static readonly byDb = new WeakMap<DB, GroupCommit>();
  private readonly relaxed: ReturnType<DB['prepare']>;
  private readonly strict: ReturnType<DB['prepare']>;
  private inflight: Promise<void> | undefined;
  private queued: Promise<void> | undefined;

  private constructor(private readonly db: DB) {
    const mode = Number(db.pragma('synchronous', { simple: true }));
    this.relaxed = db.prepare('PRAGMA synchronous = NORMAL');
    this.strict = db.prepare(`PRAGMA synchronous = ${mode}`);
  }

  /** The one group commit of a connection (every store writing through it shares the syncs). */
  static of(db: DB): GroupCommit {
    let g = GroupCommit.byDb.get(db);
    if (!g) GroupCommit.byDb.set(db, (g = new GroupCommit(db)));
    return g;
  }

  /** Runs fn in one IMMEDIATE transaction that commits without a sync; durable() before answering. */
  write<T>(fn: () => T): T {
    this.relaxed.run([]);
    try {
      return this.db.transaction(fn).immediate();
    } finally {
      this.strict.run([]);
    }
  }

  /** Resolves once every transaction committed before this call is on disk. */
  durable(): Promise<void> {
    if (!this.inflight) return this.begin();
    // The sync in flight may have started before this caller's commit: share the one after it.
    this.queued ??= this.inflight.then(noop, noop).then(() => {
      this.queued = undefined;
      return this.begin();
    });
    return this.queued;
  }

  private begin(): Promise<void> {
    const p: Promise<void> = this.sync().finally(() => {
      if (this.inflight === p) this.inflight = undefined;
    });
    this.inflight = p;
    return p;
  }

  /** Closes the WAL descriptor; a sync in flight finishes first. Call when the connection closes. */
  static release(db: DB): void {
    const g = GroupCommit.byDb.get(db);
    if (!g) return;
    GroupCommit.byDb.delete(db);
    const close = () => g.closeFd();
    if (g.inflight || g.queued) void Promise.allSettled([g.inflight, g.queued]).then(close);
    else close();
  }

  private fd: number | undefined;

  private closeFd(): void {
    if (this.fd === undefined) return;
    try {
      closeSync(this.fd);
    } catch {
      // already gone
    }
    this.fd = undefined;
  }

  private sync(): Promise<void> {
    if (!this.db.open) {
      this.closeFd();
      return Promise.resolve();
    }
    if (this.fd === undefined) {
      try {
        // Kept open: the WAL file stays the same inode while this connection is open (SQLite deletes it only
        // when the last connection closes).
        this.fd = openSync(`${this.db.name}-wal`, 'r');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return Promise.reject(err);
        // No WAL file (never expected while the connection is open): let SQLite checkpoint and sync itself.
        this.db.pragma('wal_checkpoint(FULL)');
        return Promise.resolve();
      }
    }
    const fd = this.fd;
    crashPoint('storage.group-commit.before-fsync');
    return new Promise((resolve, reject) =>
      fdatasync(fd, (err) => {
        if (err) return reject(err);
        crashPoint('storage.group-commit.after-fsync');
        resolve();
      }),
    );
  }
}

export function checkKey(key: string, what = 'key'): void {
  if (typeof key !== 'string' || key === '') throw invalidArgument(`snapshot ${what} must not be empty`);
}

/** A commit onto a parent (SnapshotOpts.parent): `allowed` when the backend has the rebase capability. */
export interface CommitRebase {
  parent: string;
  allowed: boolean;
}

export class SnapshotStorage {
  private readonly commits: GroupCommit;
  /**
   * Records by key and the parent chains of committed snapshots by id, so Prepare and Mounts walk no SQL.
   * This object is the file's only writer while open, and a committed snapshot's chain never changes (ids
   * are never reused); entries change only after the transaction that changes them has committed.
   */
  private readonly records = new Map<string, SnapshotRecord>();
  private readonly chains = new Map<number, number[]>();

  private constructor(private readonly db: DB) {
    this.commits = GroupCommit.of(db);
  }

  static open(path: string): SnapshotStorage {
    return new SnapshotStorage(openSqlite(path, schema, 'snapshot metadata'));
  }

  close(): void {
    GroupCommit.release(this.db);
    if (this.db.open) this.db.close();
  }

  /** Resolves once every change made so far is on disk: a backend awaits it before its call returns. */
  durable(): Promise<void> {
    return this.commits.durable();
  }

  private row(key: string): Row | undefined {
    return this.db.prepare(`${SELECT} WHERE s.key = ?`).get(key) as Row | undefined;
  }

  private mustRow(key: string): Row {
    checkKey(key);
    const r = this.row(key);
    if (!r) throw notFound(`snapshot ${key}`);
    return r;
  }

  /** The chain starting at a committed snapshot: itself, then its parents, nearest first. */
  private chain(parentId: number | null): number[] {
    if (parentId === null) return [];
    const cached = this.chains.get(parentId);
    if (cached) return cached;
    const rows = this.db
      .prepare(
        `WITH RECURSIVE chain(id, parent_id, depth) AS (
           SELECT id, parent_id, 0 FROM snapshots WHERE id = ?
           UNION ALL SELECT s.id, s.parent_id, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.parent_id)
         SELECT id FROM chain ORDER BY depth`,
      )
      .all(parentId) as { id: number }[];
    const ids = rows.map((r) => r.id);
    // Only parents are asked for, and parents are committed: their chains are fixed.
    if (ids.length > 0) this.chains.set(parentId, ids);
    return ids;
  }

  /** The record of a snapshot: its id, kind and parent chain. */
  get(key: string): SnapshotRecord {
    const cached = this.records.get(key);
    if (cached) return cached;
    const r = this.mustRow(key);
    const rec: SnapshotRecord = { id: r.id, kind: r.kind, parentIds: this.chain(r.parent_id) };
    if (wantsRebase(r.kind, r.parent_id, JSON.parse(r.labels) as Record<string, string>)) rec.rebase = true;
    this.records.set(key, rec);
    return rec;
  }

  info(key: string): Info {
    return toInfo(this.mustRow(key));
  }

  /** The usage recorded for a committed snapshot (at commit, or measured later); undefined if none yet. */
  storedUsage(key: string): Usage | undefined {
    const r = this.mustRow(key);
    return r.size === null ? undefined : { size: r.size, inodes: r.inodes ?? 0 };
  }

  /** Records the usage measured for a committed snapshot after its commit (its data never changes). */
  setUsage(key: string, usage: Usage): void {
    this.db.prepare("UPDATE snapshots SET size = ?, inodes = ? WHERE key = ? AND kind = 'committed'").run(usage.size, usage.inodes, key);
  }

  /**
   * Records a new active or view snapshot. `place(id, parentIds)` runs inside the transaction once the id is
   * known (e.g. a synchronous rename of a prepared directory into place); if it throws, nothing is recorded.
   */
  create(
    kind: 'active' | 'view',
    key: string,
    parent: string,
    labels: Record<string, string> = {},
    place?: (id: number, parentIds: number[]) => void,
  ): SnapshotRecord {
    checkKey(key);
    validateLabels(labels);
    const rec = this.commits.write(() => {
      let parentId: number | null = null;
      if (parent) {
        const p = this.row(parent);
        if (!p) throw notFound(`parent snapshot ${parent} does not exist`);
        if (p.kind !== 'committed') throw invalidArgument(`parent ${JSON.stringify(parent)} is not committed snapshot`);
        parentId = p.id;
      }
      if (this.row(key)) throw alreadyExists(`snapshot ${key}`);
      const now = nowTime();
      const res = this.db
        .prepare('INSERT INTO snapshots (key, parent_id, kind, labels, created_at, updated_at, created_ns, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
        .run(key, parentId, kind, JSON.stringify(labels), now.getTime(), now.getTime(), now.subMs, now.subMs);
      const id = Number(res.lastInsertRowid);
      const parentIds = this.chain(parentId);
      place?.(id, parentIds);
      return { id, kind, parentIds, ...(wantsRebase(kind, parentId, labels) ? { rebase: true } : {}) } as SnapshotRecord;
    });
    this.records.set(key, rec);
    return rec;
  }

  /**
   * Turns an active snapshot into a committed one named `name` (same id: the data does not move), replacing
   * its labels with the commit's, as containerd does. `place` runs inside the transaction. `usage` undefined:
   * not measured yet (see storedUsage/setUsage).
   */
  commitActive(
    key: string,
    name: string,
    usage: Usage | undefined,
    labels: Record<string, string> = {},
    place?: (id: number, rebasedOnto?: number[]) => void,
    rebase?: CommitRebase,
  ): number {
    checkKey(key);
    checkKey(name, 'name');
    validateLabels(labels);
    let rebasedChain: number[] | undefined;
    const id = this.commits.write(() => {
      if (this.row(name)) throw alreadyExists(`committed snapshot ${name}`);
      const r = this.mustRow(key);
      if (r.kind !== 'active') throw failedPrecondition(`snapshot ${JSON.stringify(key)} is not active`);
      // containerd 2.2's WithParent on Commit: the snapshot's parent becomes `parent` (rebase).
      let parentId = r.parent_id;
      if (rebase?.parent) {
        const p = this.row(rebase.parent);
        if (!p) throw notFound(`parent snapshot ${rebase.parent} does not exist`);
        // containerd #12447: never onto an active snapshot.
        if (p.kind !== 'committed') throw invalidArgument(`parent ${JSON.stringify(rebase.parent)} is not committed snapshot`);
        if (r.parent_id !== p.id) {
          if (r.parent_id !== null) {
            throw failedPrecondition(`snapshot ${JSON.stringify(key)} has parent ${JSON.stringify(r.parent_key)}: only a snapshot prepared without a parent can be committed onto one`);
          }
          if (!rebase.allowed) throw notImplemented(`snapshotter cannot commit ${JSON.stringify(key)} onto a parent: no rebase capability`);
          parentId = p.id;
          rebasedChain = this.chain(p.id);
        }
      }
      const now = nowTime();
      this.db
        .prepare('UPDATE snapshots SET key = ?, kind = ?, parent_id = ?, labels = ?, created_at = ?, updated_at = ?, created_ns = ?, updated_ns = ?, size = ?, inodes = ? WHERE id = ?')
        .run(name, 'committed', parentId, JSON.stringify(labels), now.getTime(), now.getTime(), now.subMs, now.subMs, usage?.size ?? null, usage?.inodes ?? null, r.id);
      place?.(r.id, rebasedChain);
      return r.id;
    });
    // The committed snapshot's chain is known already when the active one's record was (or is its new parent's).
    const active = this.records.get(key);
    if (rebasedChain) this.chains.set(id, [id, ...rebasedChain]);
    else if (active) this.chains.set(id, [id, ...active.parentIds]);
    this.records.delete(key);
    this.records.delete(name);
    return id;
  }

  /** Drops the record; the caller deletes the data afterwards. */
  remove(key: string): { id: number; kind: Kind } {
    const res = this.commits.write(() => this.drop(key));
    this.forget(key, res.id);
    return res;
  }

  /**
   * Drops many records in one transaction (one sync for a batch of deferred removals), children before their
   * parents whatever the order given. Per key: its id and kind, or the error that keeps it (not found, has a
   * child), as remove() would throw it.
   */
  removeMany(keys: string[]): ({ id: number; kind: Kind } | Error)[] {
    const out: ({ id: number; kind: Kind } | Error)[] = keys.map(() => new Error('not attempted'));
    this.commits.write(() => {
      let progress = true;
      const left = new Set(keys.map((_, i) => i));
      while (progress && left.size > 0) {
        progress = false;
        for (const i of [...left]) {
          try {
            out[i] = this.drop(keys[i]!);
            left.delete(i);
            progress = true;
          } catch (err) {
            out[i] = err as Error;
            if (!(err instanceof StrataError && err.kind === 'failed precondition')) left.delete(i);
          }
        }
      }
    });
    keys.forEach((k, i) => {
      const r = out[i]!;
      if (!(r instanceof Error)) this.forget(k, r.id);
    });
    return out;
  }

  private drop(key: string): { id: number; kind: Kind } {
    const r = this.mustRow(key);
    if (this.db.prepare('SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1').get(r.id)) {
      throw failedPrecondition('cannot remove snapshot with child');
    }
    this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(r.id);
    return { id: r.id, kind: r.kind };
  }

  private forget(key: string, id: number): void {
    this.records.delete(key);
    this.chains.delete(id);
  }

  update(info: Pick<Info, 'name' | 'labels'>, fieldpaths: string[] = []): Info {
    validateLabelEntries(info.labels);
    return this.commits.write(() => {
      const r = this.mustRow(info.name);
      let labels: Record<string, string>;
      try {
        labels = applyLabelPaths(JSON.parse(r.labels) as Record<string, string>, info.labels ?? {}, fieldpaths);
      } catch {
        throw invalidArgument(`cannot update ${JSON.stringify(fieldpaths)} field on snapshot ${info.name}`);
      }
      validateLabels(labels); // what the snapshot would hold (the limits of one object)
      const now = nowTime();
      this.db.prepare('UPDATE snapshots SET labels = ?, updated_at = ?, updated_ns = ? WHERE id = ?').run(JSON.stringify(labels), now.getTime(), now.subMs, r.id);
      return { ...toInfo(r), labels, updated: now };
    });
  }

  /** Every snapshot matching the filters, parents before children. */
  list(filters: string[] = []): Info[] {
    const filter = parseAll(filters);
    const rows = this.db.prepare(`${SELECT} ORDER BY s.id`).all() as Row[];
    return rows.map(toInfo).filter((i) => filter.match(snapshotAdaptor(i)));
  }

  /**
   * Every record as stored (fsck: src/fsck reads them with the daemon stopped): the raw labels text, so a
   * label that does not parse is reported rather than thrown.
   */
  checkRows(): { id: number; key: string; parentId: number | null; kind: string; labels: string }[] {
    return this.db.prepare('SELECT id, key, parent_id AS parentId, kind, labels FROM snapshots ORDER BY id').all() as {
      id: number;
      key: string;
      parentId: number | null;
      kind: string;
      labels: string;
    }[];
  }

  /** SQLite's own checks of the file: integrity_check and foreign_key_check, as lines ('ok' omitted). */
  checkFile(): string[] {
    const out: string[] = [];
    for (const r of this.db.pragma('integrity_check') as { integrity_check: string }[]) if (r.integrity_check !== 'ok') out.push(r.integrity_check);
    for (const r of this.db.pragma('foreign_key_check') as { table: string; rowid: number | null; parent: string }[]) {
      out.push(`row ${String(r.rowid)} of ${r.table} names a missing ${r.parent} row`);
    }
    return out;
  }

  /**
   * fsck's repair: drops the records with these ids and every record below them (their children first), in one
   * durable transaction. Returns the keys dropped.
   */
  async dropWithDescendants(ids: number[]): Promise<string[]> {
    const dropped: string[] = [];
    this.commits.write(() => {
      const rows = this.db.prepare('SELECT id, key, parent_id AS parentId FROM snapshots').all() as { id: number; key: string; parentId: number | null }[];
      const children = new Map<number, number[]>();
      for (const r of rows) if (r.parentId !== null) children.set(r.parentId, [...(children.get(r.parentId) ?? []), r.id]);
      const keyOf = new Map(rows.map((r) => [r.id, r.key]));
      const order: number[] = [];
      const seen = new Set<number>();
      const visit = (id: number) => {
        if (seen.has(id) || !keyOf.has(id)) return;
        seen.add(id);
        for (const c of children.get(id) ?? []) visit(c);
        order.push(id); // children before their parent
      };
      for (const id of ids) visit(id);
      const del = this.db.prepare('DELETE FROM snapshots WHERE id = ?');
      for (const id of order) {
        del.run(id);
        dropped.push(keyOf.get(id)!);
      }
    });
    await this.commits.durable();
    this.records.clear();
    this.chains.clear();
    return dropped;
  }

  /** fsck's repair of labels that do not parse or break the label rules: stores `json` as they are. */
  async setLabelsText(id: number, json: string): Promise<void> {
    this.commits.write(() => this.db.prepare('UPDATE snapshots SET labels = ? WHERE id = ?').run(json, id));
    await this.commits.durable();
  }

  /** The kind of every id with a record, for cleanup. */
  kinds(): Map<number, Kind> {
    return new Map((this.db.prepare('SELECT id, kind FROM snapshots').all() as { id: number; kind: Kind }[]).map((r) => [r.id, r.kind]));
  }

  /** Every id with a record, for cleanup. */
  ids(): Set<number> {
    return new Set((this.db.prepare('SELECT id FROM snapshots').all() as { id: number }[]).map((r) => r.id));
  }
}

export { snapshotAdaptor } from './filter.js';
