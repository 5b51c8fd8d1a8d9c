/**
 * What `strata fsck` (src/fsck) reads from and repairs in the metadata database, with the daemon stopped: the
 * records as plain rows (labels as stored text, so a label that does not parse is reported, not thrown), SQLite's
 * own checks, and the few repairs fsck makes. The checks themselves are src/fsck's; every statement is here,
 * next to the schema.
 */
import { type DB } from '../core/sqlite.js';
import { openDatabase } from './db.js';

/** The tables that carry labels, with the columns that name one row. */
export const LABELLED_TABLES = {
  namespaces: ['name'],
  content: ['namespace', 'digest'],
  leases: ['namespace', 'id'],
  snapshots: ['namespace', 'snapshotter', 'key'],
  images: ['namespace', 'name'],
  containers: ['namespace', 'id'],
} as const;
export type LabelledTable = keyof typeof LABELLED_TABLES;

export interface LabelledRow {
  table: LabelledTable;
  /** The row's key columns, in LABELLED_TABLES order. */
  id: string[];
  labels: string;
}

export interface ContentRecord {
  namespace: string;
  digest: string;
  size: number;
}
export interface IngestRecord {
  namespace: string;
  ref: string;
  backendRef: string;
  sharedDigest: string | null;
}
export interface SnapshotRecordRow {
  namespace: string;
  snapshotter: string;
  key: string;
  backendKey: string;
  parent: string;
  kind: string;
}
export interface LeaseResourceRow {
  namespace: string;
  lease: string;
  type: string;
  id: string;
}

export class MetadataCheck {
  private constructor(private readonly db: DB) {}

  /** Opens the database file (which must exist: fsck never creates one). */
  static open(path: string): MetadataCheck {
    return new MetadataCheck(openDatabase(path));
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  private hasTable(name: string): boolean {
    return this.db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(name) !== undefined;
  }

  /** integrity_check and foreign_key_check, as lines (nothing when both are clean). */
  checkFile(): { integrity: string[]; foreignKeys: { table: string; parent: string; rowid: number | null }[] } {
    const integrity = (this.db.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check).filter((l) => l !== 'ok');
    const foreignKeys = (this.db.pragma('foreign_key_check') as { table: string; rowid: number | null; parent: string }[]).map((r) => ({
      table: r.table,
      parent: r.parent,
      rowid: r.rowid,
    }));
    return { integrity, foreignKeys };
  }

  /** Namespaces that rows of some table name but that have no namespaces row (a foreign key broken). */
  missingNamespaces(): string[] {
    const tables = ['content', 'ingests', 'leases', 'snapshots', 'images', ...(this.hasTable('containers') ? ['containers'] : [])];
    const union = tables.map((t) => `SELECT namespace FROM ${t}`).join(' UNION ');
    return (this.db.prepare(`SELECT namespace FROM (${union}) WHERE namespace NOT IN (SELECT name FROM namespaces) ORDER BY namespace`).all() as {
      namespace: string;
    }[]).map((r) => r.namespace);
  }

  /** Lease resources whose lease row is gone (a foreign key broken). */
  orphanLeaseResources(): LeaseResourceRow[] {
    return this.db
      .prepare(
        'SELECT r.namespace, r.lease, r.type, r.id FROM lease_resources r LEFT JOIN leases l ON l.namespace = r.namespace AND l.id = r.lease WHERE l.id IS NULL',
      )
      .all() as LeaseResourceRow[];
  }

  content(): ContentRecord[] {
    return this.db.prepare('SELECT namespace, digest, size FROM content ORDER BY namespace, digest').all() as ContentRecord[];
  }

  ingests(): IngestRecord[] {
    return this.db
      .prepare('SELECT namespace, ref, backend_ref AS backendRef, shared_digest AS sharedDigest FROM ingests ORDER BY namespace, ref')
      .all() as IngestRecord[];
  }

  snapshots(): SnapshotRecordRow[] {
    return this.db
      .prepare('SELECT namespace, snapshotter, key, backend_key AS backendKey, parent, kind FROM snapshots ORDER BY snapshotter, namespace, key')
      .all() as SnapshotRecordRow[];
  }

  /** Commits noted before their backend commit and not recorded yet (snapshot_commits, schema 6). */
  pendingCommits(): { namespace: string; snapshotter: string; key: string; name: string; backendKey: string; labels: string }[] {
    if (!this.hasTable('snapshot_commits')) return [];
    return this.db.prepare('SELECT namespace, snapshotter, key, name, backend_key AS backendKey, labels FROM snapshot_commits').all() as {
      namespace: string;
      snapshotter: string;
      key: string;
      name: string;
      backendKey: string;
      labels: string;
    }[];
  }

  leaseResources(): LeaseResourceRow[] {
    return this.db.prepare('SELECT namespace, lease, type, id FROM lease_resources ORDER BY namespace, lease, type, id').all() as LeaseResourceRow[];
  }

  images(): { namespace: string; name: string; targetDigest: string }[] {
    return this.db.prepare('SELECT namespace, name, target_digest AS targetDigest FROM images ORDER BY namespace, name').all() as {
      namespace: string;
      name: string;
      targetDigest: string;
    }[];
  }

  /** Every labelled row of every table that has labels, with its labels as stored. */
  labelled(): LabelledRow[] {
    const out: LabelledRow[] = [];
    for (const [table, cols] of Object.entries(LABELLED_TABLES) as [LabelledTable, readonly string[]][]) {
      if (!this.hasTable(table)) continue;
      const rows = this.db.prepare(`SELECT ${cols.join(', ')}, labels FROM ${table} ORDER BY ${cols.join(', ')}`).all() as Record<string, string>[];
      for (const r of rows) out.push({ table, id: cols.map((c) => String(r[c])), labels: String(r.labels) });
    }
    return out;
  }

  // Repairs. Each is one transaction.

  setLabels(table: LabelledTable, id: string[], json: string): void {
    const cols = LABELLED_TABLES[table];
    this.db.prepare(`UPDATE ${table} SET labels = ? WHERE ${cols.map((c) => `${c} = ?`).join(' AND ')}`).run(json, ...id);
  }

  /** Drops a content record and the lease entries that name it in its namespace. */
  deleteContent(namespace: string, digest: string): void {
    this.db
      .transaction(() => {
        this.db.prepare('DELETE FROM content WHERE namespace = ? AND digest = ?').run(namespace, digest);
        this.db.prepare("DELETE FROM lease_resources WHERE namespace = ? AND type = 'content' AND id = ?").run(namespace, digest);
      })
      .immediate();
  }

  setContentSize(namespace: string, digest: string, size: number): void {
    this.db.prepare('UPDATE content SET size = ? WHERE namespace = ? AND digest = ?').run(size, namespace, digest);
  }

  /** Drops snapshot records and the lease entries that name them. */
  deleteSnapshots(rows: { namespace: string; snapshotter: string; key: string }[]): void {
    this.db
      .transaction(() => {
        for (const r of rows) {
          this.db.prepare('DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?').run(r.namespace, r.snapshotter, r.key);
          this.db.prepare('DELETE FROM lease_resources WHERE namespace = ? AND type = ? AND id = ?').run(r.namespace, `snapshots/${r.snapshotter}`, r.key);
        }
      })
      .immediate();
  }

  /**
   * Finishes a Commit a crash interrupted after its backend commit: the active record `key` becomes the committed
   * record `name` naming `backendKey`, and the lease entries of the key move to the name (what the commit's own
   * transaction does).
   */
  finishCommit(namespace: string, snapshotter: string, key: string, name: string, backendKey: string, labels: string): void {
    const resource = `snapshots/${snapshotter}`;
    this.db
      .transaction(() => {
        const row = this.db.prepare('SELECT parent FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?').get(namespace, snapshotter, key) as
          | { parent: string }
          | undefined;
        if (!row) return;
        const now = Date.now();
        this.db.prepare('DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?').run(namespace, snapshotter, key);
        this.db
          .prepare(
            "INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, kind, labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'committed', ?, ?, ?)",
          )
          .run(namespace, snapshotter, name, backendKey, row.parent, labels, now, now);
        this.db.prepare('UPDATE OR IGNORE lease_resources SET id = ? WHERE namespace = ? AND type = ? AND id = ?').run(name, namespace, resource, key);
        this.db.prepare('DELETE FROM lease_resources WHERE namespace = ? AND type = ? AND id = ?').run(namespace, resource, key);
        if (this.hasTable('snapshot_commits')) {
          this.db.prepare('DELETE FROM snapshot_commits WHERE namespace = ? AND snapshotter = ? AND key = ?').run(namespace, snapshotter, key);
        }
      })
      .immediate();
  }

  deleteLeaseResource(r: LeaseResourceRow): void {
    this.db.prepare('DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?').run(r.namespace, r.lease, r.type, r.id);
  }

  /** Puts back a namespaces row that records of that namespace need (created now, no labels). */
  restoreNamespace(name: string): void {
    this.db.prepare("INSERT OR IGNORE INTO namespaces (name, labels, created_at) VALUES (?, '{}', ?)").run(name, Date.now());
  }
}
