/**
 * File-system helpers the backends share.
 */
import { execFile } from 'node:child_process';
import { opendirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { lstat, readdir, statfs } from 'node:fs/promises';
import { getSystemErrorName, promisify } from 'node:util';
import { join } from 'node:path';
import { nativeArtifact } from '../core/native.js';
import type { Usage } from './types.js';

/**
 * Disk usage of a directory tree as containerd reports it: allocated blocks (st_blocks * 512) and inodes,
 * each hardlinked inode counted once. Walks with bounded concurrency so large trees keep the event loop free.
 */
export async function diskUsage(root: string): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  let inodes = 0;
  const account = (st: { dev: number; ino: number; blocks: number }) => {
    const id = `${st.dev}:${st.ino}`;
    if (seen.has(id)) return;
    seen.add(id);
    inodes++;
    size += st.blocks * 512;
  };
  const rootStat = await lstat(root);
  account(rootStat);
  let queue: string[] = rootStat.isDirectory() ? [root] : [];
  while (queue.length > 0) {
    const next: string[] = [];
    // One directory level at a time, a bounded number of directories in flight.
    for (let i = 0; i < queue.length; i += 64) {
      await Promise.all(
        queue.slice(i, i + 64).map(async (dir) => {
          const entries = await readdir(dir, { withFileTypes: true });
          await Promise.all(
            entries.map(async (e) => {
              const p = join(dir, e.name);
              const st = await lstat(p);
              account(st);
              if (st.isDirectory()) next.push(p);
            }),
          );
        }),
      );
    }
    queue = next;
  }
  return { size, inodes };
}

const execFileP = promisify(execFile);

interface SyncfsBinding {
  syncfs(path: string, done: (errno: number) => void): void;
}

let syncfsBinding: SyncfsBinding | null | undefined;

/** The built syncfs binding (scripts/build-native.sh), or null when this checkout has not built it. */
function loadSyncfs(): SyncfsBinding | null {
  if (syncfsBinding === undefined) {
    const path = nativeArtifact('strata-syncfs.node');
    syncfsBinding = path ? (createRequire(import.meta.url)(path) as SyncfsBinding) : null;
  }
  return syncfsBinding;
}

/**
 * Makes everything written on the file system holding `path` durable: syncfs(2), on the thread pool through
 * native/syncfs-napi.c, or through `sync -f` where the binding is not built (Node has no syncfs). A
 * snapshotter calls it at Commit, before the record turns committed: files written through the active
 * snapshot's mount (an unpack, a container's changes) sit in the page cache, and on ext4 (delayed allocation)
 * a power cut before writeback leaves them zero-length in a snapshot the record calls committed (containerd
 * #5854; the power-cut harness, docs/reliability.md, finds it without this). One journal commit for the whole
 * layer, not an fsync per file.
 */
export async function syncFilesystem(path: string): Promise<void> {
  const binding = loadSyncfs();
  if (!binding) {
    await execFileP('sync', ['-f', path]);
    return;
  }
  await new Promise<void>((resolve, reject) => {
    binding.syncfs(path, (errno) => {
      if (errno === 0) resolve();
      else reject(Object.assign(new Error(`syncfs failed: ${getSystemErrorName(-errno)}`), { errno: -errno, code: getSystemErrorName(-errno) }));
    });
  });
}

/** ext4 and xfs: metadata goes through a journal in order, so a later fsync of any file commits it too. */
const METADATA_ORDERED_FS = new Set([0xef53, 0x58465342]);

/**
 * syncFilesystem for a layer at Commit, skipped when there is nothing it could save: the layer directory is
 * empty (a Commit with no changes, common for metadata-only build steps) and its file system journals metadata
 * in order, so the directory itself is made durable by the journal commit of the record's own fsync. Anywhere
 * else (btrfs, whose fsync logs only the file it is given; a layer with files) it syncs.
 */
export async function syncLayer(dir: string, snapshotterRoot: string): Promise<void> {
  if (!isEmptyDirectory(dir) || !(await journalsMetadataInOrder(snapshotterRoot))) await syncFilesystem(dir);
}

/** By snapshotter root (its layers live on its file system): asked once, not at every Commit. */
const orderedByRoot = new Map<string, boolean>();
async function journalsMetadataInOrder(root: string): Promise<boolean> {
  let ordered = orderedByRoot.get(root);
  if (ordered === undefined) {
    ordered = METADATA_ORDERED_FS.has((await statfs(root)).type);
    orderedByRoot.set(root, ordered);
  }
  return ordered;
}

/**
 * Synchronous on purpose: one getdents of at most one entry, whatever the directory holds (bounded, microseconds),
 * where the thread pool would cost three round trips on Commit's path.
 */
function isEmptyDirectory(dir: string): boolean {
  const handle = opendirSync(dir, { bufferSize: 1 });
  try {
    return handle.readSync() === null;
  } finally {
    handle.closeSync();
  }
}
