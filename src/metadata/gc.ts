/**
 * What the garbage collector reads from and deletes in the metadata database (containerd's metadata/gc.go): the
 * records as plain objects, the sweep's deletes, and the queries the data passes make before each removal.
 * The algorithm (the reference graph, the mark, what to remove and when) is src/gc's; every statement on these
 * tables is here, next to the schema.
 */
import { crashPoint } from '../core/crashpoint.js';
import { type DB } from '../core/sqlite.js';
import { parseLabels } from '../core/labels.js';
import type { GCRecordStore, Records, SweepPlan } from '../gc/types.js';

/**
 * The labels GC reads (containerd.io/gc.*): the JSON is parsed only when it mentions one, which most records'
 * labels (distribution sources, snapshot refs...) do not. Labels are written with JSON.stringify, which never
 * escapes these characters, so the substring test is exact.
 */
function gcLabels(json: string): Record<string, string> {
  if (!json.includes('containerd.io/gc.')) return {};
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(parseLabels(json))) if (k.startsWith('containerd.io/gc.')) out[k] = v;
  return out;
}

/**
 * Reads every record the mark needs. Synchronous: call it inside the transaction that acts on the result.
 * Containers are read when their table exists (schema 4 on): each is a root, like an image.
 */
function loadRecords(db: DB, now: number): Records {
  const content = (
    db.prepare('SELECT namespace, digest, size, labels FROM content').all() as { namespace: string; digest: string; size: number; labels: string }[]
  ).map((r) => ({ namespace: r.namespace, digest: r.digest, size: r.size, labels: gcLabels(r.labels) }));

  const ingests = (
    db.prepare('SELECT namespace, ref, backend_ref, shared_digest, expires_at, created_at FROM ingests').all() as {
      namespace: string;
      ref: string;
      backend_ref: string;
      shared_digest: string | null;
      expires_at: number | null;
      created_at: number;
    }[]
  ).map((r) => ({
    namespace: r.namespace,
    ref: r.ref,
    backendRef: r.backend_ref,
    sharedDigest: r.shared_digest,
    expiresAt: r.expires_at,
    createdAt: r.created_at,
  }));

  const snapshots = (
    db.prepare('SELECT namespace, snapshotter, key, backend_key, parent, kind, labels FROM snapshots').all() as {
      namespace: string;
      snapshotter: string;
      key: string;
      backend_key: string;
      parent: string;
      kind: string;
      labels: string;
    }[]
  ).map((r) => ({
    namespace: r.namespace,
    snapshotter: r.snapshotter,
    key: r.key,
    backendKey: r.backend_key,
    parent: r.parent,
    kind: r.kind,
    labels: gcLabels(r.labels),
  }));

  const images = (
    db.prepare('SELECT namespace, name, target_digest, labels FROM images').all() as { namespace: string; name: string; target_digest: string; labels: string }[]
  ).map((r) => ({ namespace: r.namespace, name: r.name, targetDigest: r.target_digest, labels: gcLabels(r.labels) }));

  const hasContainers = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'containers'").get() !== undefined;
  const containers = hasContainers
    ? (
        db.prepare('SELECT namespace, id, snapshotter, snapshot_key, labels FROM containers').all() as {
          namespace: string;
          id: string;
          snapshotter: string;
          snapshot_key: string;
          labels: string;
        }[]
      ).map((r) => ({ namespace: r.namespace, id: r.id, snapshotter: r.snapshotter, snapshotKey: r.snapshot_key, labels: gcLabels(r.labels) }))
    : [];

  const resources = new Map<string, { type: string; id: string }[]>();
  for (const r of db.prepare('SELECT namespace, lease, type, id FROM lease_resources').all() as { namespace: string; lease: string; type: string; id: string }[]) {
    const k = `${r.namespace}\0${r.lease}`;
    let list = resources.get(k);
    if (!list) resources.set(k, (list = []));
    list.push({ type: r.type, id: r.id });
  }
  const leases = (db.prepare('SELECT namespace, id, labels FROM leases').all() as { namespace: string; id: string; labels: string }[]).map((r) => ({
    namespace: r.namespace,
    id: r.id,
    labels: gcLabels(r.labels),
    resources: resources.get(`${r.namespace}\0${r.id}`) ?? [],
  }));

  return { now, content, ingests, snapshots, images, containers, leases };
}

export class MetadataGC implements GCRecordStore {
  constructor(private readonly db: DB) {}

  read<T>(now: () => number, fn: (records: Records) => T): T {
    return this.db.transaction(() => fn(loadRecords(this.db, now())))();
  }

  sweep(now: () => number, dryRun: boolean, decide: (records: Records) => SweepPlan): SweepPlan {
    const db = this.db;
    const tx = db.transaction((): SweepPlan => {
      const plan = decide(loadRecords(db, now()));
      if (!dryRun) {
        // Lease resources go with their lease (ON DELETE CASCADE). Live leases name only reachable objects.
        const delLease = db.prepare('DELETE FROM leases WHERE namespace = ? AND id = ?');
        for (const l of plan.expiredLeases) delLease.run(l.namespace, l.id);
        const delContent = db.prepare('DELETE FROM content WHERE namespace = ? AND digest = ?');
        for (const c of plan.content) delContent.run(c.namespace, c.digest);
        const delIngest = db.prepare('DELETE FROM ingests WHERE namespace = ? AND ref = ?');
        for (const i of plan.ingests) delIngest.run(i.namespace, i.ref);
        const delSnapshot = db.prepare('DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?');
        for (const s of plan.snapshots) delSnapshot.run(s.namespace, s.snapshotter, s.key);
      }
      return plan;
    });
    // A real sweep takes the write lock from the start (BEGIN IMMEDIATE); a dry run only reads.
    if (dryRun) return tx();
    crashPoint('gc.sweep.before-record');
    const plan = tx.immediate();
    crashPoint('gc.sweep.after-record');
    return plan;
  }

  blobRecords(digests: string[]): { digest: string; kind: 'content' | 'lease' | 'ingest'; namespace: string; id: string }[] {
    const out: { digest: string; kind: 'content' | 'lease' | 'ingest'; namespace: string; id: string }[] = [];
    // SQLite's default limit on bound parameters is 32766; callers pass batches far below it.
    for (let at = 0; at < digests.length; at += 500) {
      const part = digests.slice(at, at + 500);
      const marks = part.map(() => '?').join(', ');
      const rows = this.db
        .prepare(
          `SELECT digest, 'content' AS kind, namespace, '' AS id FROM content WHERE digest IN (${marks})` +
            ` UNION ALL SELECT id AS digest, 'lease' AS kind, namespace, lease AS id FROM lease_resources WHERE type = 'content' AND id IN (${marks})` +
            ` UNION ALL SELECT shared_digest AS digest, 'ingest' AS kind, namespace, ref AS id FROM ingests WHERE shared_digest IN (${marks})`,
        )
        .all(...part, ...part, ...part) as { digest: string; kind: 'content' | 'lease' | 'ingest'; namespace: string; id: string }[];
      out.push(...rows);
    }
    return out;
  }

  writingIngestsCreatedBy(ms: number): { namespace: string; ref: string; backendRef: string; createdAt: number }[] {
    return this.db
      .prepare('SELECT namespace, ref, backend_ref AS backendRef, created_at AS createdAt FROM ingests WHERE shared_digest IS NULL AND created_at <= ?')
      .all(ms) as { namespace: string; ref: string; backendRef: string; createdAt: number }[];
  }

  ingestsWithBackendRef(backendRef: string): { namespace: string; ref: string }[] {
    return this.db.prepare('SELECT namespace, ref FROM ingests WHERE backend_ref = ?').all(backendRef) as { namespace: string; ref: string }[];
  }

  snapshotsWithBackendKey(snapshotter: string, backendKey: string): { namespace: string; key: string }[] {
    return this.db
      .prepare('SELECT namespace, key FROM snapshots WHERE snapshotter = ? AND backend_key = ?')
      .all(snapshotter, backendKey) as { namespace: string; key: string }[];
  }

  snapshotRecorded(namespace: string, snapshotter: string, key: string, backendKey: string): boolean {
    return (
      this.db
        .prepare('SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ? AND backend_key = ?')
        .get(namespace, snapshotter, key, backendKey) !== undefined
    );
  }

  contentKeys(): { namespace: string; digest: string }[] {
    return this.db.prepare('SELECT namespace, digest FROM content ORDER BY namespace, digest').all() as { namespace: string; digest: string }[];
  }

  leasedContent(): { namespace: string; lease: string; id: string }[] {
    return this.db.prepare("SELECT namespace, lease, id FROM lease_resources WHERE type = 'content'").all() as {
      namespace: string;
      lease: string;
      id: string;
    }[];
  }

  adoptions(): { namespace: string; ref: string; digest: string }[] {
    return this.db.prepare('SELECT namespace, ref, shared_digest AS digest FROM ingests WHERE shared_digest IS NOT NULL').all() as {
      namespace: string;
      ref: string;
      digest: string;
    }[];
  }

  snapshotKeys(snapshotter: string): { namespace: string; key: string; backendKey: string }[] {
    return this.db
      .prepare('SELECT namespace, key, backend_key AS backendKey FROM snapshots WHERE snapshotter = ? ORDER BY namespace, key')
      .all(snapshotter) as { namespace: string; key: string; backendKey: string }[];
  }
}
