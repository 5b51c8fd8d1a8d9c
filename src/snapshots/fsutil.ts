/**
 * File-system helpers the backends share.
 */
import { execFile } from 'node:child_process';
import { lstat, readdir } from 'node:fs/promises';
import { promisify } from 'node:util';
import { join } from 'node:path';
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

/**
 * Makes everything written on the file system holding `path` durable (syncfs(2), through `sync -f`: Node has
 * no syncfs). A snapshotter calls it at Commit, before the record turns committed: files written through the
 * active snapshot's mount (an unpack, a container's changes) sit in the page cache, and on ext4 (delayed
 * allocation) a power cut before writeback leaves them zero-length in a snapshot the record calls committed
 * (containerd #5854; the power-cut harness, docs/reliability.md, finds it without this). One journal commit
 * for the whole layer, not an fsync per file.
 */
export async function syncFilesystem(path: string): Promise<void> {
  await execFileP('sync', ['-f', path]);
}
