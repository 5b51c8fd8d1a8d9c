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
import { validateLabelEntries, validateLabels } from '../core/labels.js';
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

  /**
   * Creates a namespace. The event goes to `eventNamespace`: containerd publishes it in the caller's namespace
   * (the client's default), not in the namespace created.
   */
  create(name: string, labels: Record<string, string> = {}, eventNamespace = name): Namespace {
    validateIdentifier(name);
    validateLabels(labels);
    const created = nowTime();
    const res = this.db
      .prepare('INSERT OR IGNORE INTO namespaces (name, labels, created_at, created_ns) VALUES (?, ?, ?, ?)')
      .run(name, encodeLabels(labels), created.getTime(), created.subMs);
    if (res.changes === 0) throw alreadyExists(`namespace ${name}`);
    this.events.publish(eventNamespace, '/namespaces/create', typedEvent('containerd.events.NamespaceCreate', { name, labels }));
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
   * Updates labels as containerd's namespaces service does. With no field paths every label is replaced by the
   * request's; otherwise only "labels.<key>" paths are accepted (not "labels": containerd refuses it here, unlike
   * its other stores), each setting one key or removing it when the request has no value for it. An empty value
   * removes a label. Each label set creates the namespace when it has no record yet (so does a "labels.<key>"
   * path, even one that removes); an update that sets nothing creates nothing. The event carries the request's
   * labels and goes to `eventNamespace` (containerd: the caller's namespace).
   */
  update(ns: Namespace, fieldpaths: string[] = [], eventNamespace = ns.name): void {
    validateIdentifier(ns.name);
    const requested = ns.labels ?? {};
    for (const path of fieldpaths) {
      if (!path.startsWith('labels.')) throw invalidArgument(`cannot update ${JSON.stringify(path)} field`);
    }
    const set: Record<string, string> = {};
    const keys = fieldpaths.length > 0 ? fieldpaths.map((p) => p.slice('labels.'.length)) : Object.keys(requested);
    for (const k of keys) set[k] = requested[k] ?? '';
    validateLabelEntries(Object.fromEntries(Object.entries(set).filter(([, v]) => v !== '')));
    this.db.transaction(() => {
      const exists = this.exists(ns.name);
      if (!exists && keys.length === 0) return;
      this.ensure(ns.name);
      const labels = fieldpaths.length > 0 ? this.get(ns.name).labels : {};
      for (const [k, v] of Object.entries(set)) {
        if (v === '') delete labels[k];
        else labels[k] = v;
      }
      validateLabels(labels); // what the namespace would hold (the limits of one object); a throw rolls back
      this.db.prepare('UPDATE namespaces SET labels = ? WHERE name = ?').run(encodeLabels(labels), ns.name);
    }).immediate();
    this.events.publish(eventNamespace, '/namespaces/update', typedEvent('containerd.events.NamespaceUpdate', { name: ns.name, labels: requested }));
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
