/**
 * The metadata database: one SQLite file under the daemon root, in WAL mode, with a versioned schema.
 * Every subsystem's records live here so that one transaction can change several of them (a commit that
 * creates a content record, drops its ingest and attaches it to a lease is all-or-nothing).
 *
 * Calls are synchronous (better-sqlite3) and kept short: no file I/O happens inside a transaction.
 */
import { openSqlite, type DB } from '../core/sqlite.js';

export type { DB };

/**
 * Schema migrations, applied in order. Never edit a released step: append a new one.
 * Labels are JSON objects in TEXT columns; times are milliseconds since the epoch (*_at) plus the nanoseconds
 * within that millisecond (*_ns, from step 5).
 */
const migrations: string[] = [
  // 1: namespaces, content, ingests, leases.
  `
  CREATE TABLE namespaces (
    name       TEXT PRIMARY KEY,
    labels     TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
  );
  CREATE TABLE content (
    namespace  TEXT NOT NULL REFERENCES namespaces(name),
    digest     TEXT NOT NULL,
    size       INTEGER NOT NULL,
    labels     TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, digest)
  ) WITHOUT ROWID;
  CREATE INDEX content_by_digest ON content(digest);
  CREATE TABLE ingests (
    namespace   TEXT NOT NULL REFERENCES namespaces(name),
    ref         TEXT NOT NULL,
    backend_ref TEXT NOT NULL UNIQUE,
    -- set when the blob is adopted from another namespace (shared content policy)
    shared_digest TEXT,
    shared_size   INTEGER,
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (namespace, ref)
  ) WITHOUT ROWID;
  CREATE TABLE leases (
    namespace  TEXT NOT NULL REFERENCES namespaces(name),
    id         TEXT NOT NULL,
    labels     TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, id)
  ) WITHOUT ROWID;
  CREATE TABLE lease_resources (
    namespace TEXT NOT NULL,
    lease     TEXT NOT NULL,
    type      TEXT NOT NULL,
    id        TEXT NOT NULL,
    PRIMARY KEY (namespace, lease, type, id),
    FOREIGN KEY (namespace, lease) REFERENCES leases(namespace, id) ON DELETE CASCADE
  ) WITHOUT ROWID;
  CREATE INDEX lease_resources_by_object ON lease_resources(namespace, type, id);
  CREATE TABLE sequences (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
  );
  `,
  // 2: snapshots, per namespace and snapshotter, mapped to backend keys.
  `
  CREATE TABLE snapshots (
    namespace   TEXT NOT NULL REFERENCES namespaces(name),
    snapshotter TEXT NOT NULL,
    key         TEXT NOT NULL,
    backend_key TEXT NOT NULL,
    parent      TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL CHECK (kind IN ('view', 'active', 'committed')),
    labels      TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (namespace, snapshotter, key)
  ) WITHOUT ROWID;
  CREATE INDEX snapshots_by_parent ON snapshots(namespace, snapshotter, parent);
  CREATE INDEX snapshots_by_backend_key ON snapshots(snapshotter, backend_key);
  `,
  // 3: images, per namespace: a name pointing at a root descriptor.
  `
  CREATE TABLE images (
    namespace          TEXT NOT NULL REFERENCES namespaces(name),
    name               TEXT NOT NULL,
    target_media_type  TEXT NOT NULL,
    target_digest      TEXT NOT NULL,
    target_size        INTEGER NOT NULL,
    target_annotations TEXT NOT NULL DEFAULT '{}',
    labels             TEXT NOT NULL DEFAULT '{}',
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
  ) WITHOUT ROWID;
  CREATE INDEX images_by_target ON images(target_digest);
  `,
  // 4: containers, per namespace: runtime, spec and extensions (protobuf Any: type URL + bytes), rootfs snapshot.
  `
  CREATE TABLE containers (
    namespace            TEXT NOT NULL REFERENCES namespaces(name),
    id                   TEXT NOT NULL,
    labels               TEXT NOT NULL DEFAULT '{}',
    image                TEXT NOT NULL DEFAULT '',
    runtime_name         TEXT NOT NULL,
    runtime_options_type TEXT,
    runtime_options      BLOB,
    spec_type            TEXT,
    spec                 BLOB,
    snapshotter          TEXT NOT NULL DEFAULT '',
    snapshot_key         TEXT NOT NULL DEFAULT '',
    -- {name: {typeUrl, value (base64)}}
    extensions           TEXT NOT NULL DEFAULT '{}',
    sandbox_id           TEXT NOT NULL DEFAULT '',
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    PRIMARY KEY (namespace, id)
  ) WITHOUT ROWID;
  CREATE INDEX containers_by_snapshot ON containers(namespace, snapshotter, snapshot_key);
  `,
  // 5: nanosecond timestamps (src/time): each *_at column keeps its milliseconds, a *_ns sibling holds the
  // nanoseconds within that millisecond (0 for rows written before).
  `
  ALTER TABLE namespaces ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE content ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE content ADD COLUMN updated_ns INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE ingests ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE leases ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE snapshots ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE snapshots ADD COLUMN updated_ns INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE images ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE images ADD COLUMN updated_ns INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE containers ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE containers ADD COLUMN updated_ns INTEGER NOT NULL DEFAULT 0;
  `,
  // 6: snapshot commits in progress: the backend name a Commit gives the active snapshot, on disk before the
  // backend commits, so that a crash between the backend's commit and the record's is finished at the next start.
  `
  CREATE TABLE snapshot_commits (
    namespace   TEXT NOT NULL,
    snapshotter TEXT NOT NULL,
    key         TEXT NOT NULL,
    name        TEXT NOT NULL,
    backend_key TEXT NOT NULL,
    labels      TEXT NOT NULL,
    PRIMARY KEY (namespace, snapshotter, key)
  ) WITHOUT ROWID;
  `,
];

export const SCHEMA_VERSION = migrations.length;

export function openDatabase(path: string): DB {
  return openSqlite(path, migrations, 'metadata');
}

/**
 * Unique numbers for backend keys and ingest refs without a durable write per number: a durable epoch, bumped
 * once when the allocator starts (and again every 2^20 numbers), times an in-memory counter. Numbers never
 * repeat across restarts because an epoch is on disk before any of its numbers is handed out. This keeps the
 * "reserve a key" step of a snapshot call read-only, which spares it an fsync.
 */
export class UniqueNumbers {
  private static readonly PER_EPOCH = 1 << 20;
  private epoch = 0;
  private used = UniqueNumbers.PER_EPOCH;

  constructor(private readonly db: DB) {}

  next(): number {
    if (this.used >= UniqueNumbers.PER_EPOCH) {
      this.epoch = nextSequence(this.db, 'epoch');
      this.used = 0;
    }
    return this.epoch * UniqueNumbers.PER_EPOCH + ++this.used;
  }
}

/** Next value of a named counter, inside the caller's transaction. */
export function nextSequence(db: DB, name: string): number {
  const row = db
    .prepare('INSERT INTO sequences (name, value) VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value')
    .get(name) as { value: number };
  return row.value;
}

