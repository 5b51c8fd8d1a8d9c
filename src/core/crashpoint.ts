/**
 * Named crash points: places in every mutating path (before and after each rename, fsync, record commit, mount,
 * unmount and directory removal) where a test can make the process die as a power cut or `kill -9` would, to
 * show that whatever a crash there leaves, a restart, fsck and a retry of the operation cope with it.
 *
 * - `STRATA_CRASH_AT=<name>[:<n>]`: at the n-th hit (default 1) of that point the process writes
 *   `strata crash point <name>` to stderr and sends itself SIGKILL (no handler, no cleanup, no flush).
 * - `STRATA_CRASH_TRACE=<file>`: every point reached is appended to the file, one name a line (a synchronous
 *   append, so the line is there whatever happens next), so a test can prove that its walk reaches every point.
 *
 * Both are read once, when this module loads. Unset (production), a call costs one boolean check.
 * docs/reliability.md lists the points and how the crash walk uses them.
 */
import { appendFileSync, writeSync } from 'node:fs';

/** Every crash point, grouped by the operation that reaches it. The names say where: `<area>.<step>.<when>`. */
export const CRASH_POINTS = [
  // content ingest (src/content/local.ts): the ingest directory is built aside and renamed into place
  'content.ingest.before-rename',
  'content.ingest.after-rename',
  // content commit: data fsync, rename onto the blob path, directory fsync, ingest removal, then the record
  'content.commit.before-fsync',
  'content.commit.after-fsync',
  'content.commit.before-rename',
  'content.commit.after-rename',
  'content.commit.after-fsync-dir',
  'content.commit.before-remove-ingest',
  'content.commit.after-remove-ingest',
  'content.commit.before-record',
  'content.commit.after-record',
  // content abort (metadata record, then the ingest directory: renamed away, then deleted)
  'content.abort.before-record',
  'content.abort.after-record',
  'content.abort.before-rename',
  'content.abort.after-rename',
  'content.abort.after-remove',
  // content delete (the record, then the blob when nothing else names it)
  'content.delete.before-record',
  'content.delete.after-record',
  'content.delete.before-unlink',
  'content.delete.after-unlink',
  // snapshot prepare: metadata (src/metadata/snapshots.ts) around the backend (overlayfs, its storage)
  'snapshot.prepare.before-backend',
  'overlay.prepare.before-rename',
  'overlay.prepare.after-rename',
  'overlay.prepare.after-record',
  'snapshot.prepare.after-backend',
  'snapshot.prepare.before-record',
  'snapshot.prepare.after-record',
  'snapshot.prepare.after-sync',
  // snapshot commit
  'snapshot.commit.before-backend',
  'overlay.commit.before-record',
  'overlay.commit.after-record',
  'snapshot.commit.after-backend',
  'snapshot.commit.after-record',
  'snapshot.commit.after-sync',
  // snapshot remove: the metadata record, then (in the background) the backend: record, sync, rename to trash,
  // directory removal
  'snapshot.remove.before-record',
  'snapshot.remove.after-record',
  'snapshot.remove.after-sync',
  'snapshot.remove.before-backend',
  'overlay.remove.before-record',
  'overlay.remove.after-record',
  'overlay.remove.after-sync',
  'overlay.remove.after-rename',
  'overlay.remove.before-rmdir',
  'overlay.remove.after-rmdir',
  // the group commit every snapshot storage write goes through (src/snapshots/storage.ts): the WAL fdatasync
  'storage.group-commit.before-fsync',
  'storage.group-commit.after-fsync',
  // unpack (src/images/unpack.ts, src/diff): prepare, apply into the snapshot, commit, the uncompressed label
  'unpack.layer.after-prepare',
  'diff.apply.before-write',
  'diff.apply.mid-write',
  'diff.apply.after-write',
  'unpack.layer.after-apply',
  'unpack.layer.after-commit',
  'unpack.layer.after-label',
  // image records (src/metadata/images.ts)
  'image.create.before-record',
  'image.create.after-record',
  'image.delete.before-record',
  'image.delete.after-record',
  // temporary mounts (src/mount: the differ's double walk, apply through a mount)
  'mount.temp.before-mount',
  'mount.temp.after-mount',
  'mount.temp.before-unmount',
  'mount.temp.after-unmount',
  'mount.temp.after-rmdir',
  // garbage collection (src/gc, src/metadata/gc.ts): the sweep's record deletes, then the data
  'gc.sweep.before-record',
  'gc.sweep.after-record',
  'gc.blob.before-unlink',
  'gc.blob.after-unlink',
  'gc.ingest.before-remove',
  'gc.ingest.after-remove',
  'gc.snapshot.before-remove',
  'gc.snapshot.after-remove',
] as const;

export type CrashPoint = (typeof CRASH_POINTS)[number];

function parseAt(v: string | undefined): { name: string; n: number } | undefined {
  if (!v) return undefined;
  const m = /^(.*?)(?::(\d+))?$/.exec(v.trim());
  if (!m || !m[1]) return undefined;
  return { name: m[1], n: m[2] ? Math.max(1, Number(m[2])) : 1 };
}

const at = parseAt(process.env.STRATA_CRASH_AT);
const trace = process.env.STRATA_CRASH_TRACE || undefined;
/** The one check a call costs when neither variable is set. */
const armed = at !== undefined || trace !== undefined;
let hits = 0;

/** Dies here (SIGKILL to itself) when STRATA_CRASH_AT names this point and its hit count is reached. */
export function crashPoint(name: CrashPoint): void {
  if (!armed) return;
  reached(name);
}

function reached(name: CrashPoint): void {
  if (trace !== undefined) {
    try {
      appendFileSync(trace, `${name}\n`);
    } catch {
      // a trace that cannot be written must not change what the process does
    }
  }
  if (at === undefined || at.name !== name || ++hits < at.n) return;
  try {
    writeSync(2, `strata crash point ${name}\n`);
  } catch {
    // stderr gone: die all the same
  }
  process.kill(process.pid, 'SIGKILL');
}
