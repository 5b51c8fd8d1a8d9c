/**
 * Namespaces: the top of every key space. A namespace exists once created explicitly or once anything is
 * written in it (as in containerd, `ctr -n foo content ingest` makes "foo"). Deleting one that still holds
 * objects is a failed precondition that names what is left.
 */
import { alreadyExists, failedPrecondition, invalidArgument, notFound } from '../core/errdefs.js';
import { typedEvent, type EventPublisher } from '../events/types.js';
import { type DB } from '../core/sqlite.js';
import { encodeLabels, parseLabels } from '../core/labels.js';
import { validateIdentifier } from '../core/identifiers.js';
import { validateLabels, applyLabelPaths } from '../core/labels.js';
import { now as nowTime } from '../core/time.js';

export interface Namespace {
  name: string;
  labels: Record<string, string>;
}

/** Tables whose rows keep a namespace alive, with the word containerd uses for them in the error. */
export interface NamespaceOccupant {
  describe(db: DB, namespace: string): string[];
}

export class NamespaceStore {
  private readonly occupants: NamespaceOccupant[] = [];

  constructor(
    private readonly db: DB,
    private readonly events: EventPublisher,
  ) {
    this.registerOccupant({
      describe: (d, ns) => (d.prepare('SELECT 1 FROM content WHERE namespace = ? LIMIT 1').get(ns) ? ['blobs'] : []),
    });
  }

  /** Later subsystems (images, containers, snapshots) add their tables here. */
  registerOccupant(o: NamespaceOccupant): void {
    this.occupants.push(o);
  }

  /** Creates the namespace if it does not exist; used inside write transactions of other stores. */
  ensure(name: string): void {
    const t = nowTime();
    this.db.prepare('INSERT OR IGNORE INTO namespaces (name, created_at, created_ns) VALUES (?, ?, ?)').run(name, t.getTime(), t.subMs);
  }

  exists(name: string): boolean {
    return this.db.prepare('SELECT 1 FROM namespaces WHERE name = ?').get(name) !== undefined;
  }

  create(name: string, labels: Record<string, string> = {}): Namespace {
    validateIdentifier(name);
    validateLabels(labels);
    const created = nowTime();
    const res = this.db
      .prepare('INSERT OR IGNORE INTO namespaces (name, labels, created_at, created_ns) VALUES (?, ?, ?, ?)')
      .run(name, encodeLabels(labels), created.getTime(), created.subMs);
    if (res.changes === 0) throw alreadyExists(`namespace ${name}`);
    this.events.publish(name, '/namespaces/create', typedEvent('containerd.events.NamespaceCreate', { name, labels }));
    return { name, labels };
  }

  get(name: string): Namespace {
    const row = this.db.prepare('SELECT labels FROM namespaces WHERE name = ?').get(name) as
      | { labels: string }
      | undefined;
    if (!row) throw notFound(`namespace ${name}`);
    return { name, labels: parseLabels(row.labels) };
  }

  list(): Namespace[] {
    const rows = this.db.prepare('SELECT name, labels FROM namespaces ORDER BY name').all() as {
      name: string;
      labels: string;
    }[];
    return rows.map((r) => ({ name: r.name, labels: parseLabels(r.labels) }));
  }

  /**
   * Updates labels. With no field paths all labels are replaced; "labels" replaces all; "labels.<key>" sets
   * one key (or removes it when the new value is absent or empty).
   */
  update(ns: Namespace, fieldpaths: string[] = []): Namespace {
    validateLabels(ns.labels);
    const updated = this.db.transaction(() => {
      if (!this.exists(ns.name)) {
        // containerd's Update sets each label in the namespace's label bucket, creating the namespace: one with
        // no record yet appears once a label is set, and an update that sets none answers empty labels.
        validateIdentifier(ns.name);
        const labels = applyLabelPaths({}, ns.labels, fieldpaths);
        if (Object.keys(labels).length === 0 && !fieldpaths.some((p) => p.startsWith('labels.'))) return { name: ns.name, labels };
        this.ensure(ns.name);
      }
      const current = this.get(ns.name);
      const labels = applyLabelPaths(current.labels, ns.labels, fieldpaths);
      this.db.prepare('UPDATE namespaces SET labels = ? WHERE name = ?').run(encodeLabels(labels), ns.name);
      return { name: ns.name, labels };
    })();
    this.events.publish(ns.name, '/namespaces/update', typedEvent('containerd.events.NamespaceUpdate', { ...updated }));
    return updated;
  }

  delete(name: string): void {
    this.db.transaction(() => {
      if (!this.exists(name)) throw notFound(`namespace ${name}`);
      const left = this.occupants.flatMap((o) => o.describe(this.db, name));
      if (left.length > 0) {
        throw failedPrecondition(`namespace "${name}" must be empty, but it still has ${left.join(', ')}`);
      }
      // Leases and ingests go with the namespace: they protect nothing once it is empty.
      this.db.prepare('DELETE FROM lease_resources WHERE namespace = ?').run(name);
      this.db.prepare('DELETE FROM leases WHERE namespace = ?').run(name);
      this.db.prepare('DELETE FROM ingests WHERE namespace = ?').run(name);
      this.db.prepare('DELETE FROM namespaces WHERE name = ?').run(name);
    }).immediate();
    this.events.publish(name, '/namespaces/delete', typedEvent('containerd.events.NamespaceDelete', { name }));
  }
}
