/**
 * Leases: named holds on objects in flight. An object created under a lease (a blob committed, an ingest
 * started, later a snapshot prepared) is recorded as the lease's resource, and GC treats unexpired leases as
 * roots. Deleting a lease only drops the hold; the collector removes what nothing else keeps.
 */
import { randomBytes } from 'node:crypto';
import { alreadyExists, invalidArgument, notFound, notImplemented } from '../core/errdefs.js';
import { parseAll, labelField, adapt } from '../filters/index.js';
import { parseDigest } from '../content/digest.js';
import { type DB } from '../core/sqlite.js';
import { encodeLabels, parseLabels } from '../core/labels.js';
import { type NamespaceStore } from './namespaces.js';
import { compactLabels, validateLabels } from '../core/labels.js';
import type { OpContext } from './context.js';
import { LABEL_GC_EXPIRE } from '../core/labels.js';
import { fromParts, now as nowTime } from '../core/time.js';

export interface Lease {
  id: string;
  createdAt: Date;
  labels: Record<string, string>;
}

export interface LeaseResource {
  id: string;
  /** "content", "ingests" or "snapshots/<snapshotter>". */
  type: string;
}

/** A random id in the style containerd's clients use. */
export function generateLeaseId(): string {
  const ns = process.hrtime.bigint() % 1_000_000_000n;
  return `${ns}-${randomBytes(3).toString('base64url')}`;
}

export class LeaseStore {
  constructor(
    private readonly db: DB,
    private readonly namespaces: NamespaceStore,
    private readonly notifyMutation: (deletion: boolean) => void = () => {},
  ) {}

  create(namespace: string, id: string, labels: Record<string, string> = {}): Lease {
    if (id === '') id = generateLeaseId();
    // As containerd: a containerd.io/gc.expire that is not a time is stored; the collector ignores it. A label
    // set to "" is not stored, nor answered (containerd's writeMap drops it from the map it answers with).
    validateLabels(labels);
    labels = compactLabels(labels);
    const createdAt = nowTime();
    this.db.transaction(() => {
      this.namespaces.ensure(namespace);
      const res = this.db
        .prepare('INSERT OR IGNORE INTO leases (namespace, id, labels, created_at, created_ns) VALUES (?, ?, ?, ?, ?)')
        .run(namespace, id, encodeLabels(labels), createdAt.getTime(), createdAt.subMs);
      if (res.changes === 0) throw alreadyExists(`lease "${id}"`);
    }).immediate();
    this.expiry = undefined;
    this.notifyMutation(false);
    return { id, createdAt, labels };
  }

  get(namespace: string, id: string): Lease {
    const row = this.db.prepare('SELECT labels, created_at, created_ns FROM leases WHERE namespace = ? AND id = ?').get(namespace, id) as
      | { labels: string; created_at: number; created_ns: number }
      | undefined;
    if (!row) throw notFound(`lease "${id}"`);
    return { id, createdAt: fromParts(row.created_at, row.created_ns), labels: parseLabels(row.labels) };
  }

  list(namespace: string, filters: string[] = []): Lease[] {
    const filter = parseAll(filters);
    const rows = this.db
      .prepare('SELECT id, labels, created_at, created_ns FROM leases WHERE namespace = ? ORDER BY id') // containerd's order: its bolt bucket's, by id bytes
      .all(namespace) as { id: string; labels: string; created_at: number; created_ns: number }[];
    const leases = rows.map((r) => ({ id: r.id, createdAt: fromParts(r.created_at, r.created_ns), labels: parseLabels(r.labels) }));
    return leases.filter((l) =>
      filter.match(
        adapt((path) => {
          if (path.length === 0) return undefined;
          if (path[0] === 'id' && path.length === 1) return l.id;
          if (path[0] === 'labels') return labelField(l.labels, path.slice(1));
          return undefined;
        }),
      ),
    );
  }

  delete(namespace: string, id: string): void {
    const res = this.db.prepare('DELETE FROM leases WHERE namespace = ? AND id = ?').run(namespace, id);
    if (res.changes === 0) throw notFound(`lease "${id}"`);
    this.expiry = undefined;
    this.notifyMutation(true);
  }

  // As containerd's: an unknown lease is NOT_FOUND before the resource is looked at.
  addResource(namespace: string, id: string, resource: LeaseResource): void {
    this.db.transaction(() => {
      this.get(namespace, id);
      const r = normalizeResource(resource);
      this.db
        .prepare('INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)')
        .run(namespace, id, r.type, r.id);
    }).immediate();
    this.notifyMutation(false);
  }

  deleteResource(namespace: string, id: string, resource: LeaseResource): void {
    this.db.transaction(() => {
      this.get(namespace, id);
      const r = normalizeResource(resource);
      this.db
        .prepare('DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?')
        .run(namespace, id, r.type, r.id);
    }).immediate();
    this.notifyMutation(true);
  }

  listResources(namespace: string, id: string): LeaseResource[] {
    this.get(namespace, id);
    return this.db
      .prepare('SELECT id, type FROM lease_resources WHERE namespace = ? AND lease = ? ORDER BY type, id')
      .all(namespace, id) as LeaseResource[];
  }

  /**
   * The earliest `containerd.io/gc.expire` after `now` among the leases of every namespace (milliseconds since
   * the epoch), or undefined when no lease expires in the future. The GC scheduler sets a timer for it.
   */
  nextExpiry(now = Date.now()): number | undefined {
    // The GC scheduler asks after every burst of writes (a snapshot call, a content commit): the answer is kept
    // until a lease is created or deleted here, or the time passes it. Leases are only created here; a lease
    // deleted elsewhere (the collector, a namespace's removal) can only make the kept answer early, which costs
    // at worst one needless collection at that time, never a late one.
    const e = this.expiry;
    if (e && now >= e.at && (e.next === undefined || now < e.next)) return e.next;
    const next = this.scanExpiry(now);
    this.expiry = { at: now, next };
    return next;
  }

  /** nextExpiry's kept answer: computed at `at` (ms since the epoch). */
  private expiry: { at: number; next: number | undefined } | undefined;

  private scanExpiry(now: number): number | undefined {
    const rows = this.db.prepare("SELECT labels FROM leases WHERE labels LIKE '%containerd.io/gc.expire%'").all() as { labels: string }[];
    let next: number | undefined;
    for (const r of rows) {
      const at = Date.parse(parseLabels(r.labels)[LABEL_GC_EXPIRE] ?? '');
      if (at > now && (next === undefined || at < next)) next = at;
    }
    return next;
  }

  /**
   * Attaches an object to the context's lease, inside the caller's transaction. Without a lease in the
   * context this does nothing; with an unknown lease it fails, so nothing is created unprotected by mistake.
   * Returns whether a lease took the object.
   */
  attach(ctx: OpContext, type: string, objectId: string): boolean {
    if (!ctx.lease) return false;
    const exists = this.db.prepare('SELECT 1 FROM leases WHERE namespace = ? AND id = ?').get(ctx.namespace, ctx.lease);
    if (!exists) throw notFound(`lease "${ctx.lease}" does not exist`);
    this.db
      .prepare('INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)')
      .run(ctx.namespace, ctx.lease, type, objectId);
    return true;
  }

  /** Drops an object from the context's lease, inside the caller's transaction. */
  detach(ctx: OpContext, type: string, objectId: string): void {
    if (!ctx.lease) return;
    this.db
      .prepare('DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?')
      .run(ctx.namespace, ctx.lease, type, objectId);
  }
}

function normalizeResource(r: LeaseResource): LeaseResource {
  const parts = r.type.split('/');
  switch (parts[0]) {
    case 'content':
    case 'ingests':
      if (parts.length !== 1) throw invalidArgument(`invalid resource type ${r.type}`);
      if (parts[0] === 'content') {
        try {
          parseDigest(r.id);
        } catch (err) {
          throw invalidArgument(`invalid content resource id ${r.id}`, err);
        }
      }
      break;
    case 'snapshots':
      if (parts.length !== 2 || parts[1] === '') throw invalidArgument(`invalid snapshot resource type ${r.type}`);
      break;
    default:
      throw notImplemented(`resource type ${r.type} not supported yet`);
  }
  if (r.id === '') throw invalidArgument('resource id must not be empty');
  return { id: r.id, type: r.type };
}
