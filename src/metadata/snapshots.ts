/**
 * The namespaced snapshot layer that stands in front of every snapshotter inside the daemon, as containerd's
 * metadata snapshotter does: each namespace has its own key space, labels live here, and the backend sees
 * only its own keys ("<namespace>/<sequence>/<key>") and the inherited labels (containerd.io/snapshot.ref and
 * containerd.io/snapshot/*), exactly what containerd passes to proxy plugins.
 *
 * The remote-snapshot protocol: a prepare carrying containerd.io/snapshot.ref=<target> to which the backend
 * answers ALREADY_EXISTS means the backend already has that committed layer; it is recorded here under the
 * target name and the caller gets ALREADY_EXISTS.
 *
 * Durability and order: each mutating call writes its records in one transaction of the metadata database
 * through a GroupCommit (concurrent calls share one fdatasync, off the event loop) and answers only once it is
 * on disk; a backend's own change is durable before the record that names it is written, so a crash never
 * leaves a record naming a backend snapshot that does not exist.
 *
 * Remove drops the record (durably) and answers; the backend snapshot is removed afterwards in the background,
 * queued removals going to the backend in batches (removeMany when the backend has it), as containerd's Remove
 * drops the record and leaves the backend snapshot to its garbage collector. Cleanup waits for the queue first.
 * A crash before the backend removal leaves a backend snapshot no record names: the garbage collector's prune
 * (and containerd's) removes exactly those.
 */
import { crashPoint } from '../core/crashpoint.js';
import { alreadyExists, failedPrecondition, invalidArgument, isAlreadyExists, isNoSpace, isNotFound, notFound, notImplemented, unknown } from '../core/errdefs.js';
import { retryOnNoSpace } from '../core/nospace.js';
import { parseAll } from '../filters/index.js';
import { typedEvent, type EventPublisher } from '../events/types.js';
import { GroupCommit, snapshotAdaptor } from '../snapshots/storage.js';
import { capabilitiesOf, hasCapability, inheritedLabels, SnapshotterCapability, type Info, type Kind, type SnapshotOpts, type Snapshotter, type Usage, type WalkFn } from '../snapshots/types.js';
import { LABEL_LAZY_FALLBACK, LABEL_SNAPSHOT_REF, LABEL_STARGZ_DIGEST, INHERITED_LABEL_PREFIX } from '../core/labels.js';
import { type Mount } from '../core/mount.js';
import { type UniqueNumbers } from './db.js';
import { type DB } from '../core/sqlite.js';
import { encodeLabels, parseLabels } from '../core/labels.js';
import { type NamespaceStore } from './namespaces.js';
import { applyLabelPaths, compactLabels, validateLabelEntries, validateLabels } from '../core/labels.js';
import type { LeaseStore } from './leases.js';
import type { OpContext } from './context.js';
import { fromParts, now as nowTime, subMsOf } from '../core/time.js';

interface Row {
  key: string;
  backend_key: string;
  parent: string;
  kind: Kind;
  labels: string;
  created_at: number;
  created_ns: number;
  updated_at: number;
  updated_ns: number;
}

const toInfo = (r: Row): Info => ({
  name: r.key,
  parent: r.parent,
  kind: r.kind,
  labels: parseLabels(r.labels),
  created: fromParts(r.created_at, r.created_ns),
  updated: fromParts(r.updated_at, r.updated_ns),
});

/** The names Commits in flight will take (namespace NUL name), and a way to wait for one to end. */
class CommittingNames extends Set<string> {
  private readonly waiters = new Map<string, Array<() => void>>();

  override delete(name: string): boolean {
    const had = super.delete(name);
    const waiting = this.waiters.get(name);
    if (waiting) {
      this.waiters.delete(name);
      for (const wake of waiting) wake();
    }
    return had;
  }

  /** Resolves once no Commit of this name is in flight. */
  async settled(name: string): Promise<void> {
    while (this.has(name)) {
      await new Promise<void>((wake) => {
        const waiting = this.waiters.get(name) ?? [];
        waiting.push(wake);
        this.waiters.set(name, waiting);
      });
    }
  }
}

export class NamespacedSnapshots {
  constructor(
    readonly name: string,
    readonly backend: Snapshotter,
    private readonly db: DB,
    private readonly namespaces: NamespaceStore,
    private readonly leases: LeaseStore,
    private readonly events: EventPublisher,
    private readonly numbers: UniqueNumbers,
    readonly notifyMutation: (deletion: boolean) => void = () => {},
  ) {
    this.commits = GroupCommit.of(db);
    namespaces.registerOccupant({
      describe: (d, ns) =>
        d.prepare('SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? LIMIT 1').get(ns, name)
          ? [`snapshots on "${name}" snapshotter`]
          : [],
    });
  }

  /** @internal Durable writes of the metadata database (shared by every snapshotter's layer: one per connection). */
  readonly commits: GroupCommit;
  /**
   * Names a Commit in flight will take (namespace NUL name): the name is checked before the backend commits and
   * recorded after, so a second Commit to the same name in between must not let its backend turn its active
   * snapshot into a committed one that could never be recorded: it waits for the first to end (settled), then
   * finds the name taken (ALREADY_EXISTS) or free (the first failed).
   */
  readonly committing = new CommittingNames();
  /**
   * Commits whose backend part is done but whose records a full disk refused (namespace NUL active key): the
   * backend snapshot `bname` is committed, the record still names the active key. The client was told
   * RESOURCE_EXHAUSTED; the records are written by its next Commit of that key (whatever name it asks for), by a
   * retry once space is back, or dropped with the key's Remove. `bname` stays pending meanwhile, so neither the
   * background removal nor prune takes it.
   */
  readonly unrecorded = new Map<string, { bname: string; name: string; labels: Record<string, string>; ctx: OpContext; parent?: string }>();

  /** Backend keys whose records are gone, waiting for the background removal; and that removal. */
  private doomed: string[] = [];
  private removing: Promise<void> | undefined;

  /** The backend's capabilities: the namespaced layer adds none and hides none. */
  get capabilities(): readonly string[] {
    return capabilitiesOf(this.backend);
  }

  bind(ctx: OpContext): Snapshotter {
    return new BoundSnapshotter(this, ctx);
  }

  /** @internal Queues the removal of a backend snapshot whose record is gone. */
  removeLater(bkey: string): void {
    this.doomed.push(bkey);
    this.removing ??= this.removeDoomed();
    if (this.doomed.length >= NamespacedSnapshots.REMOVE_BATCH) this.wake?.();
  }

  /** Resolves once every queued backend removal has been attempted (at once, without the batching delay). */
  async settled(): Promise<void> {
    while (this.removing) {
      this.wake?.();
      await this.removing;
    }
  }

  /** Waits this long (or for a full batch) before removing queued backend snapshots, so removals share syncs. */
  static readonly REMOVE_DELAY_MS = 50;
  private static readonly REMOVE_BATCH = 64;
  private wake: (() => void) | undefined;

  private async removeDoomed(): Promise<void> {
    // The Remove that queued the key answers first; a burst of removals gathers into one batch.
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, NamespacedSnapshots.REMOVE_DELAY_MS);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
    this.wake = undefined;
    try {
      while (this.doomed.length > 0) {
        // The database closed under the queue (a store closed without flushing it): what is left is a backend
        // snapshot without a record, which the next start's collection prunes.
        if (!this.db.open) {
          this.doomed.length = 0;
          break;
        }
        // Checked right before the removal: a key another record has taken since (a namespace adopting a shared
        // layer) or that a call in progress holds stays.
        const keys = this.doomed.splice(0, NamespacedSnapshots.REMOVE_BATCH).filter((k) => !this.pending.has(k) && !this.recordsBackendKey(k));
        if (keys.length === 0) continue;
        crashPoint('snapshot.remove.before-backend');
        const many = (this.backend as Snapshotter & { removeMany?: (keys: string[]) => Promise<void> }).removeMany;
        // Failures (a child in another namespace, gone already) keep the snapshot for the garbage collector; a
        // full disk (the backend's own bookkeeping cannot be written) is retried a little later, so a snapshot
        // that a failed unpack removed does not hold its space until the next collection.
        const failed = (ks: string[]) => (err: unknown) => {
          if (isNoSpace(err)) this.retryLater(ks);
        };
        if (many && keys.length > 1) {
          await many.call(this.backend, keys).catch(failed(keys));
          continue;
        }
        for (const k of keys) await this.backend.remove(k).catch(failed([k]));
      }
    } finally {
      this.removing = undefined;
    }
  }

  /** How long a Prepare waits at most for another caller's extraction of the same layer (awaitOtherExtraction). */
  static EXTRACTION_WAIT_MS = 10 * 60_000;
  /** Extractions in progress (Prepares labelled containerd.io/snapshot.ref), by `${namespace}\0${key}`. */
  readonly extractions = new Map<string, { target: string; alive: () => boolean; preparing: boolean }>();

  /** Removals that failed for want of space, queued again after NO_SPACE_RETRY_MS. */
  private retrying: string[] = [];
  private retryTimer: NodeJS.Timeout | undefined;
  static readonly NO_SPACE_RETRY_MS = 1000;

  private retryLater(keys: string[]): void {
    this.retrying.push(...keys);
    this.retryTimer ??= setTimeout(() => {
      this.retryTimer = undefined;
      for (const k of this.retrying.splice(0)) this.removeLater(k);
    }, NamespacedSnapshots.NO_SPACE_RETRY_MS).unref();
  }

  /** @internal Inside a write: the commit of `key` to `name` (backend name `bname`) is about to happen. */
  notePendingCommit(ns: string, key: string, name: string, bname: string, parent: string, labels: Record<string, string>): void {
    this.db
      .prepare('INSERT OR REPLACE INTO snapshot_commits (namespace, snapshotter, key, name, backend_key, parent, labels) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(ns, this.name, key, name, bname, parent, encodeLabels(labels));
  }

  /** @internal Inside a write: the commit of `key` is recorded or failed. */
  dropPendingCommit(ns: string, key: string): void {
    this.db.prepare('DELETE FROM snapshot_commits WHERE namespace = ? AND snapshotter = ? AND key = ?').run(ns, this.name, key);
  }

  /**
   * @internal Inside a write: the active snapshot `key` becomes the committed snapshot `name` (backend name
   * `bname`); its lease entries follow it.
   */
  recordCommit(ns: string, key: string, name: string, bname: string, parent: string, labels: Record<string, string>): void {
    const now = nowTime();
    this.db.prepare('DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?').run(ns, this.name, key);
    this.db
      .prepare(
        'INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, kind, labels, created_at, created_ns, updated_at, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
      )
      .run(ns, this.name, name, bname, parent, 'committed', encodeLabels(labels), now.getTime(), now.subMs, now.getTime(), now.subMs);
    // The active key's lease entries now protect the committed snapshot.
    const resource = `snapshots/${this.name}`;
    this.db.prepare('UPDATE OR IGNORE lease_resources SET id = ? WHERE namespace = ? AND type = ? AND id = ?').run(name, ns, resource, key);
    this.db.prepare('DELETE FROM lease_resources WHERE namespace = ? AND type = ? AND id = ?').run(ns, resource, key);
    this.dropPendingCommit(ns, key);
  }

  /**
   * Finishes, at start, the commits a crash interrupted after the backend committed and before the record was
   * written (the record still names the active snapshot, which the backend has turned into the committed one);
   * forgets those that never reached the backend or were recorded. Returns how many it finished.
   */
  async recoverCommits(): Promise<number> {
    const pending = this.db
      .prepare('SELECT namespace, key, name, backend_key, parent, labels FROM snapshot_commits WHERE snapshotter = ?')
      .all(this.name) as { namespace: string; key: string; name: string; backend_key: string; parent: string; labels: string }[];
    let finished = 0;
    for (const p of pending) {
      const row = this.row(p.namespace, p.key);
      const has = async (bkey: string) => {
        try {
          await this.backend.stat(bkey);
          return true;
        } catch (err) {
          if (isNotFound(err)) return false;
          throw err;
        }
      };
      const finish =
        row !== undefined &&
        row.kind === 'active' &&
        !this.row(p.namespace, p.name) &&
        // A rebase commit's parent (the record's own parent otherwise) must still be there.
        (p.parent === '' || this.row(p.namespace, p.parent) !== undefined) &&
        !(await has(row.backend_key)) &&
        (await has(p.backend_key));
      this.commits.write(() => {
        if (finish) {
          this.recordCommit(p.namespace, p.key, p.name, p.backend_key, p.parent, parseLabels(p.labels));
          finished++;
        } else {
          this.dropPendingCommit(p.namespace, p.key);
        }
      });
    }
    if (pending.length > 0) await this.commits.durable();
    return finished;
  }

  private recordsBackendKey(bkey: string): boolean {
    return this.db.prepare('SELECT 1 FROM snapshots WHERE snapshotter = ? AND backend_key = ? LIMIT 1').get(this.name, bkey) !== undefined;
  }

  /**
   * Backend keys that a prepare, view or commit in progress has created (or is creating) but not yet recorded,
   * and the key a commit is moving away from: the garbage collector and prune leave them alone.
   */
  readonly pending = new Set<string>();

  /** @internal Runs `fn`, which marks backend keys pending through `hold`, and releases them when it ends. */
  async holding<T>(fn: (hold: (bkey: string) => void) => Promise<T>): Promise<T> {
    const held: string[] = [];
    try {
      return await fn((bkey) => {
        held.push(bkey);
        this.pending.add(bkey);
      });
    } finally {
      for (const k of held) this.pending.delete(k);
    }
  }

  /** @internal */ row(ns: string, key: string): Row | undefined {
    return this.db
      .prepare(
        'SELECT key, backend_key, parent, kind, labels, created_at, created_ns, updated_at, updated_ns FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?',
      )
      .get(ns, this.name, key) as Row | undefined;
  }

  /** @internal */ mustRow(ns: string, key: string): Row {
    // An empty key names no snapshot: NOT_FOUND, as containerd's bolt lookups answer.
    const r = key ? this.row(ns, key) : undefined;
    if (!r) throw notFound(`snapshot ${key} does not exist`);
    return r;
  }

  /** @internal */ get database(): DB {
    return this.db;
  }
  /** @internal */ get store() {
    return { namespaces: this.namespaces, leases: this.leases, events: this.events, numbers: this.numbers };
  }
}

class BoundSnapshotter implements Snapshotter {
  private readonly ns: string;
  private readonly resource: string;

  constructor(
    private readonly s: NamespacedSnapshots,
    private readonly ctx: OpContext,
  ) {
    this.ns = ctx.namespace;
    this.resource = `snapshots/${s.name}`;
  }

  private get db() {
    return this.s.database;
  }

  get capabilities(): readonly string[] {
    return this.s.capabilities;
  }

  async stat(key: string): Promise<Info> {
    return toInfo(this.s.mustRow(this.ns, key));
  }

  async update(info: Pick<Info, 'name' | 'labels'>, fieldpaths: string[] = []): Promise<Info> {
    if (!info.name) throw invalidArgument('snapshot name must not be empty');
    validateLabelEntries(info.labels);
    const { row, labels, now } = this.s.commits.write(() => {
      const row = this.s.mustRow(this.ns, info.name);
      let labels: Record<string, string>;
      try {
        labels = applyLabelPaths(parseLabels(row.labels), info.labels ?? {}, fieldpaths);
      } catch {
        throw invalidArgument(`cannot update ${JSON.stringify(fieldpaths)} field on snapshot ${info.name}`);
      }
      validateLabels(labels); // what the snapshot would hold (the limits of one object); a throw rolls back
      const now = nowTime();
      this.db
        .prepare('UPDATE snapshots SET labels = ?, updated_at = ?, updated_ns = ? WHERE namespace = ? AND snapshotter = ? AND key = ?')
        .run(encodeLabels(labels), now.getTime(), now.subMs, this.ns, this.s.name, info.name);
      return { row, labels, now };
    });
    await this.s.commits.durable();
    this.s.notifyMutation(false);
    // Inherited labels are the backend's too (a lazy-pull snapshotter reads them).
    const touched = fieldpaths.length === 0 || fieldpaths.some((p) => p === 'labels' || p.startsWith(`labels.${INHERITED_LABEL_PREFIX}`) || p === `labels.${LABEL_SNAPSHOT_REF}`);
    if (touched) {
      await this.s.backend.update({ name: row.backend_key, labels: inheritedLabels(labels) }, ['labels']).catch(() => undefined);
    }
    return { ...toInfo(row), labels, updated: now };
  }

  async usage(key: string): Promise<Usage> {
    return this.s.backend.usage(this.s.mustRow(this.ns, key).backend_key);
  }

  async mounts(key: string): Promise<Mount[]> {
    const row = this.s.mustRow(this.ns, key);
    if (this.s.unrecorded.has(`${this.ns}\0${key}`)) {
      throw failedPrecondition(`snapshot ${key} is committed but its record waits for disk space: commit it again or remove it`);
    }
    return this.s.backend.mounts(row.backend_key);
  }

  prepare(key: string, parent: string, opts: SnapshotOpts = {}): Promise<Mount[]> {
    return this.create(key, parent, false, opts);
  }

  view(key: string, parent: string, opts: SnapshotOpts = {}): Promise<Mount[]> {
    return this.create(key, parent, true, opts);
  }

  private async create(key: string, parent: string, readonly: boolean, opts: SnapshotOpts): Promise<Mount[]> {
    const target = readonly ? undefined : opts.labels?.[LABEL_SNAPSHOT_REF];
    if (!target) return this.s.holding((hold) => this.createHeld(key, parent, readonly, opts, hold));
    const id = `${this.ns}\0${key}`;
    await this.claimExtraction(id, target, opts.callerAlive ?? (() => true));
    try {
      const mounts = await this.s.holding((hold) => this.createHeld(key, parent, readonly, opts, hold));
      const e = this.s.extractions.get(id);
      if (e) e.preparing = false;
      return mounts;
    } catch (err) {
      this.s.extractions.delete(id);
      throw err;
    }
  }

  /**
   * Concurrent client-side unpacks of one layer share its extraction. containerd's unpacker (ctr image pull, the
   * Go client's Pull with unpack) prepares `extract-<random> <chainID>` labelled containerd.io/snapshot.ref =
   * chainID, and on ALREADY_EXISTS stats the chainID: found, the layer counts as unpacked (the remote-snapshot
   * handshake) and is never fetched. So while another caller that is still there (its connection open) extracts
   * the same chainID in this namespace, this Prepare waits: once that one is committed, the Prepare answers
   * ALREADY_EXISTS for the target and this client skips the layer; once it is removed (its extraction failed) or
   * its caller is gone, this client extracts the layer itself. Bounded by EXTRACTION_WAIT_MS all the same.
   * Returns having registered this Prepare as the layer's extraction, in the same turn as the last check.
   */
  private async claimExtraction(id: string, target: string, alive: () => boolean): Promise<void> {
    const deadline = Date.now() + NamespacedSnapshots.EXTRACTION_WAIT_MS;
    const prefix = `${this.ns}\0`;
    const another = () => {
      for (const [other, e] of this.s.extractions) {
        if (other === id || !other.startsWith(prefix) || e.target !== target) continue;
        if (!e.preparing && !this.s.row(this.ns, other.slice(prefix.length))) {
          this.s.extractions.delete(other); // committed or removed
          continue;
        }
        if (e.alive()) return true;
      }
      return false;
    };
    while (Date.now() < deadline && !this.s.row(this.ns, target) && another()) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    this.s.extractions.set(id, { target, alive, preparing: true });
  }

  private async createHeld(key: string, parent: string, readonly: boolean, opts: SnapshotOpts, hold: (bkey: string) => void): Promise<Mount[]> {
    if (!key) throw invalidArgument('snapshot key must not be empty');
    validateLabels(opts.labels);
    const labels = compactLabels(opts.labels); // "" values are not stored, as containerd's writeMap
    const target = labels[LABEL_SNAPSHOT_REF];

    // Check and pick a backend key (a read-only transaction: no fsync); the backend call happens outside it.
    const { bkey: reserved, bparent } = this.db.transaction(() => {
      if (target && this.s.row(this.ns, target)) throw alreadyExists(`target snapshot "${target}"`);
      if (this.s.row(this.ns, key)) throw alreadyExists(`snapshot "${key}"`);
      let bparent = '';
      if (parent) {
        const p = this.s.row(this.ns, parent);
        if (!p) throw notFound(`parent snapshot ${parent} does not exist`);
        bparent = p.backend_key;
      }
      // As containerd's first transaction: the namespace exists from here on, whatever the backend answers.
      if (!this.s.store.namespaces.exists(this.ns)) this.s.store.namespaces.ensure(this.ns);
      return { bkey: `${this.ns}/${this.s.store.numbers.next()}/${key}`, bparent };
    })();
    hold(reserved);

    let bkey = reserved;
    let recordKey = key;
    let recordParent = parent;
    let kind: Kind = readonly ? 'view' : 'active';
    let mounts: Mount[] = [];
    let created = false;
    let adopted: Error | undefined;
    const made = nowTime();
    let times: { created: Date; updated: Date } = { created: made, updated: made };
    const blabels = inheritedLabels(labels);
    try {
      crashPoint('snapshot.prepare.before-backend');
      mounts = readonly ? await this.s.backend.view(bkey, bparent, { labels: blabels }) : await this.s.backend.prepare(bkey, bparent, { labels: blabels });
      created = true;
      // A lazy-pull backend asked for a remote layer that prepared an ordinary snapshot says why on it
      // (LABEL_LAZY_FALLBACK): recorded here too, so the unpack reports it in the pull's progress.
      if (target && labels[LABEL_STARGZ_DIGEST] !== undefined) {
        const why = await this.s.backend.stat(bkey).then(
          (i) => i.labels[LABEL_LAZY_FALLBACK],
          () => undefined,
        );
        if (why !== undefined) labels[LABEL_LAZY_FALLBACK] = why;
      }
      crashPoint('snapshot.prepare.after-backend');
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      if (!target) throw unknown(`unexpected error from snapshotter: ${(err as Error).message}`);
      // The backend has the target layer already (a remote or shared snapshot): record it under its name.
      let found: Info | undefined;
      await this.s.backend.walk(
        (i) => {
          if (!found && i.kind === 'committed' && i.labels[LABEL_SNAPSHOT_REF] === target && i.parent === bparent) found = i;
        },
        [`labels."${LABEL_SNAPSHOT_REF}"==${JSON.stringify(target)},parent==${JSON.stringify(bparent)}`],
      );
      if (!found) throw notFound(`target snapshot "${target}" in backend`);
      hold(found.name);
      recordKey = target;
      bkey = found.name;
      kind = 'committed';
      times = { created: found.created, updated: found.updated };
      for (const [k, v] of Object.entries(found.labels)) if (!(k in labels)) labels[k] = v;
      adopted = alreadyExists(`target snapshot "${target}" from snapshotter`);
      recordParent = parent;
    }

    try {
      crashPoint('snapshot.prepare.before-record');
      this.s.commits.write(() => {
        this.s.store.namespaces.ensure(this.ns);
        if (this.s.row(this.ns, recordKey)) throw alreadyExists(`snapshot "${recordKey}"`);
        // The parent may have been removed (or garbage collected) while the backend worked.
        if (recordParent && !this.s.row(this.ns, recordParent)) throw notFound(`parent snapshot ${recordParent} does not exist`);
        this.db
          .prepare(
            'INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, kind, labels, created_at, created_ns, updated_at, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
          )
          .run(this.ns, this.s.name, recordKey, bkey, recordParent, kind, encodeLabels(labels), times.created.getTime(), subMsOf(times.created), times.updated.getTime(), subMsOf(times.updated));
        this.s.store.leases.attach(this.ctx, this.resource, recordKey);
      });
    } catch (err) {
      // A full disk may refuse the backend's removal too: tried again once there is room.
      if (created) await retryOnNoSpace(() => this.s.backend.remove(bkey));
      throw err;
    }
    crashPoint('snapshot.prepare.after-record');
    await this.s.commits.durable();
    crashPoint('snapshot.prepare.after-sync');
    this.s.notifyMutation(false);
    if (adopted) throw adopted;
    // containerd publishes for Prepare only, not for View.
    if (!readonly) this.s.store.events.publish(this.ns, '/snapshot/prepare', typedEvent('containerd.events.SnapshotPrepare', { key, parent }));
    return mounts;
  }

  commit(name: string, key: string, opts: SnapshotOpts = {}): Promise<void> {
    return this.s.holding((hold) => this.commitHeld(name, key, opts, hold));
  }

  private async commitHeld(name: string, key: string, opts: SnapshotOpts, hold: (bkey: string) => void): Promise<void> {
    if (!name) throw invalidArgument('snapshot name must not be empty');
    validateLabels(opts.labels);
    const labels = compactLabels(opts.labels); // "" values are not stored, as containerd's writeMap
    // A Commit of this name in flight: wait for its end, as containerd's second Commit waits for bolt's write
    // lock. ALREADY_EXISTS then means the snapshot is there: ctr's unpacker takes it as "layer done" and at once
    // prepares the next layer on it as a parent (NOT_FOUND if the first Commit were still in flight).
    await this.s.committing.settled(`${this.ns}\0${name}`);
    const unrecorded = this.s.unrecorded.get(`${this.ns}\0${key}`);
    if (unrecorded) {
      // The backend committed this key already (a full disk refused the records): only the records are left.
      if (this.s.row(this.ns, name) || this.s.committing.has(`${this.ns}\0${name}`)) throw alreadyExists(`snapshot "${name}"`);
      return this.finishUnrecorded(key, name, labels);
    }
    const { row, bname, rebase } = this.db.transaction(() => {
      // containerd's order: the name taken first (ALREADY_EXISTS even for an unknown key), then the key.
      if (this.s.row(this.ns, name) || this.s.committing.has(`${this.ns}\0${name}`)) throw alreadyExists(`snapshot "${name}"`);
      const row = this.s.mustRow(this.ns, key);
      // containerd's words (its backend reports this, wrapped by the commit).
      if (row.kind !== 'active') throw failedPrecondition(`failed to commit snapshot: snapshot ${JSON.stringify(key)} is not active`);
      // containerd 2.2's WithParent (rebase): onto a committed parent of this namespace; only a snapshot
      // prepared without a parent moves, and only on a backend with the `rebase` capability.
      let rebase: { parent: string; bparent: string } | undefined;
      if (opts.parent && opts.parent !== row.parent) {
        const p = this.s.row(this.ns, opts.parent);
        if (!p) throw notFound(`parent snapshot ${opts.parent} does not exist`);
        if (p.kind !== 'committed') throw invalidArgument(`parent ${JSON.stringify(opts.parent)} is not committed snapshot`);
        if (row.parent) {
          throw failedPrecondition(`failed to commit snapshot: snapshot ${JSON.stringify(key)} has parent ${JSON.stringify(row.parent)}: only a snapshot prepared without a parent can be committed onto one`);
        }
        if (!hasCapability(this.s.backend, SnapshotterCapability.Rebase)) {
          throw notImplemented(`snapshotter ${JSON.stringify(this.s.name)} cannot commit a snapshot onto a parent (no rebase capability)`);
        }
        rebase = { parent: opts.parent, bparent: p.backend_key };
      }
      this.s.committing.add(`${this.ns}\0${name}`);
      return { row, bname: `${this.ns}/${this.s.store.numbers.next()}/${name}`, rebase };
    })();
    try {
      await this.commitReserved(name, key, labels, row, bname, hold, rebase);
    } finally {
      this.s.committing.delete(`${this.ns}\0${name}`);
    }
  }

  private async commitReserved(
    name: string,
    key: string,
    labels: Record<string, string>,
    row: Row,
    bname: string,
    hold: (bkey: string) => void,
    rebase?: { parent: string; bparent: string },
  ): Promise<void> {
    hold(row.backend_key);
    hold(bname);
    if (rebase) hold(rebase.bparent);

    const parent = rebase ? rebase.parent : row.parent;
    // The backend name this commit gives the active snapshot (and the parent it commits onto), on disk before the
    // backend commits: a crash after the backend's commit and before the record's is finished at the next start
    // (recoverCommits).
    this.s.commits.write(() => this.s.notePendingCommit(this.ns, key, name, bname, parent, labels));
    await this.s.commits.durable();
    crashPoint('snapshot.commit.before-backend');
    try {
      await this.s.backend.commit(bname, row.backend_key, { labels: inheritedLabels(labels), ...(rebase ? { parent: rebase.bparent } : {}) });
    } catch (err) {
      this.s.commits.write(() => this.s.dropPendingCommit(this.ns, key));
      throw err;
    }
    crashPoint('snapshot.commit.after-backend');

    try {
      await this.recordCommit(name, key, labels, bname, this.ctx, rebase?.parent);
    } catch (err) {
      if (!isNoSpace(err)) {
        // Not to be finished at the next start either: the backend's committed snapshot is garbage for the collector.
        this.s.commits.write(() => this.s.dropPendingCommit(this.ns, key));
        throw err;
      }
      // The backend's commit stands, its record could not be written: kept for the next Commit of the key, and
      // tried again once there is room.
      const id = `${this.ns}\0${key}`;
      this.s.unrecorded.set(id, { bname, name, labels, ctx: this.ctx, ...(rebase ? { parent: rebase.parent } : {}) });
      this.s.pending.add(bname);
      void retryOnNoSpace(async () => {
        const u = this.s.unrecorded.get(id);
        if (u?.bname === bname && !this.s.row(this.ns, u.name)) await this.finishUnrecorded(key, u.name, u.labels);
      });
      throw err;
    }
  }

  /** Writes the records of a commit whose backend part was done by an earlier call (see unrecorded). */
  private async finishUnrecorded(key: string, name: string, labels: Record<string, string>): Promise<void> {
    const id = `${this.ns}\0${key}`;
    const u = this.s.unrecorded.get(id);
    if (!u) throw notFound(`snapshot ${key} does not exist`);
    this.s.committing.add(`${this.ns}\0${name}`);
    try {
      await this.recordCommit(name, key, labels, u.bname, u.ctx, u.parent);
    } catch (err) {
      // The active key is gone (removed by a collection): its committed backend snapshot goes too.
      if (isNotFound(err) && !this.s.row(this.ns, key)) this.dropUnrecorded(key);
      throw err;
    } finally {
      this.s.committing.delete(`${this.ns}\0${name}`);
    }
    if (this.s.unrecorded.get(id) === u) {
      this.s.unrecorded.delete(id);
      this.s.pending.delete(u.bname);
    }
  }

  /** Forgets an unrecorded commit of `key` and queues its backend snapshot's removal. */
  private dropUnrecorded(key: string): void {
    const id = `${this.ns}\0${key}`;
    const u = this.s.unrecorded.get(id);
    if (!u) return;
    this.s.unrecorded.delete(id);
    this.s.pending.delete(u.bname);
    this.s.removeLater(u.bname);
    try {
      this.s.commits.write(() => this.s.dropPendingCommit(this.ns, key));
    } catch {
      // still full: the next start forgets a pending commit whose active record is gone
    }
  }

  /** The records of a commit whose backend part is done: the active key's record becomes `name`'s, on `bname`. */
  private async recordCommit(name: string, key: string, labels: Record<string, string>, bname: string, ctx: OpContext, rebaseParent?: string): Promise<void> {
    this.s.commits.write(() => {
      // The active snapshot may have been removed (or garbage collected) while the backend committed it.
      const row = this.s.mustRow(this.ns, key);
      // So may the parent a rebase committed it onto (the backend keeps its data for the collector: it has a child).
      if (rebaseParent && !this.s.row(this.ns, rebaseParent)) throw notFound(`parent snapshot ${rebaseParent} does not exist`);
      this.s.recordCommit(this.ns, key, name, bname, rebaseParent || row.parent, labels);
      this.s.store.leases.attach(ctx, this.resource, name);
    });
    crashPoint('snapshot.commit.after-record');
    await this.s.commits.durable();
    crashPoint('snapshot.commit.after-sync');
    this.s.notifyMutation(false);
    this.s.store.events.publish(this.ns, '/snapshot/commit', typedEvent('containerd.events.SnapshotCommit', { key, name }));
  }

  async remove(key: string): Promise<void> {
    crashPoint('snapshot.remove.before-record');
    const row = this.s.commits.write(() => {
      const row = this.s.mustRow(this.ns, key);
      const child = this.db
        .prepare('SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND parent = ? LIMIT 1')
        .get(this.ns, this.s.name, key);
      if (child) throw failedPrecondition('cannot remove snapshot with child');
      this.db.prepare('DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?').run(this.ns, this.s.name, key);
      this.db.prepare('DELETE FROM lease_resources WHERE namespace = ? AND type = ? AND id = ?').run(this.ns, this.resource, key);
      const shared = this.db.prepare('SELECT 1 FROM snapshots WHERE snapshotter = ? AND backend_key = ? LIMIT 1').get(this.s.name, row.backend_key);
      return { ...row, shared: shared !== undefined };
    });
    crashPoint('snapshot.remove.after-record');
    await this.s.commits.durable();
    crashPoint('snapshot.remove.after-sync');
    this.dropUnrecorded(key);
    this.s.notifyMutation(true);
    // The record is gone; the backend data follows in the background unless another namespace still records it.
    // A backend that refuses (e.g. a child in another namespace) keeps it for the garbage collector.
    if (!row.shared) this.s.removeLater(row.backend_key);
    this.s.store.events.publish(this.ns, '/snapshot/remove', typedEvent('containerd.events.SnapshotRemove', { key }));
  }

  async walk(fn: WalkFn, filters: string[] = []): Promise<void> {
    const filter = parseAll(filters);
    const rows = this.db
      .prepare(
        'SELECT key, backend_key, parent, kind, labels, created_at, created_ns, updated_at, updated_ns FROM snapshots WHERE namespace = ? AND snapshotter = ? ORDER BY key', // containerd's order: by key bytes
      )
      .all(this.ns, this.s.name) as Row[];
    for (const r of rows) {
      const info = toInfo(r);
      if (filter.match(snapshotAdaptor(info))) await fn(info);
    }
  }

  async cleanup(): Promise<void> {
    // containerd's Cleanup removes what removals left behind: the queued backend removals first.
    await this.s.settled();
    await this.s.backend.cleanup();
  }

  async close(): Promise<void> {
    // The backend belongs to the daemon, not to one namespace's view of it.
  }
}
