/**
 * How Strata opens a SQLite file: WAL, durable commits, foreign keys, a versioned schema applied in one
 * transaction, and a per-connection statement cache. The metadata database and each snapshotter's own
 * bookkeeping open their files through here, each with its own list of migrations.
 */
import Database from 'better-sqlite3';
import { execFileSync } from 'node:child_process';
import { mkdirSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';

export type DB = Database.Database;

/**
 * Opens (creating if needed) the database at `path` and brings its schema to `migrations.length`, applying
 * the missing steps in order in one transaction. A migration list is append-only: never edit a released step.
 * `what` names the database in the error raised when the file's schema is newer than this build knows.
 */
export function openSqlite(path: string, migrations: readonly string[], what: string): DB {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  noCowOnBtrfs(dirname(path));
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  // FULL: every committed transaction is on disk before the call returns, as containerd's bolt commits are.
  // (NORMAL would survive kill -9 but could lose the last transactions on power loss, e.g. a content commit
  // the client was told succeeded.)
  db.pragma('synchronous = FULL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  try {
    migrate(db, migrations, what);
  } catch (err) {
    db.close();
    throw err;
  }
  return cacheStatements(db);
}

const BTRFS_SUPER_MAGIC = 0x9123683e;

/**
 * On btrfs, marks the database's directory No_COW (chattr +C; files created in it afterwards inherit it). SQLite
 * maps its WAL index (the -shm file) into memory; on a copy-on-write file system every store into that mapping
 * needs a newly allocated block, and when the file system is full the kernel answers the store with SIGBUS,
 * which kills the daemon (seen with a btrfs snapshotter's root_path filled up during an unpack). A No_COW file
 * is rewritten in place, so a full file system shows up as SQLITE_FULL from the calls that grow it instead.
 * Best effort: an older file keeps its flag (No_COW only takes on empty files) and a missing chattr changes nothing.
 */
function noCowOnBtrfs(dir: string): void {
  try {
    if (statfsSync(dir).type !== BTRFS_SUPER_MAGIC) return;
    execFileSync('chattr', ['+C', dir], { stdio: 'ignore' });
  } catch {
    // not btrfs-aware here: leave it
  }
}

function migrate(db: DB, migrations: readonly string[], what: string): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
  const row = db.prepare('SELECT version FROM schema_version').get() as { version: number } | undefined;
  const current = row?.version ?? 0;
  if (current > migrations.length) {
    throw new Error(`${what} schema version ${current} is newer than this stratad understands (${migrations.length})`);
  }
  if (current === migrations.length) return;
  db.transaction(() => {
    for (let v = current; v < migrations.length; v++) db.exec(migrations[v]!);
    db.prepare('DELETE FROM schema_version').run();
    db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(migrations.length);
  }).immediate();
}

/**
 * Makes db.prepare() return one compiled statement per SQL text instead of compiling on every call: the
 * stores prepare inline, next to where the SQL is read, and compiling was a fifth of a snapshot call's CPU.
 * Safe because statements here run synchronously to completion (no .iterate() left open across calls).
 */
export function cacheStatements(db: DB): DB {
  const compile = db.prepare.bind(db);
  const cache = new Map<string, Database.Statement>();
  (db as { prepare: (sql: string) => Database.Statement }).prepare = (sql: string) => {
    let stmt = cache.get(sql);
    if (!stmt) {
      stmt = compile(sql);
      cache.set(sql, stmt);
    }
    return stmt;
  };
  return db;
}
