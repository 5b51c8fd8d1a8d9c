/**
 * The usage of a btrfs snapshot alone, not counting what it still shares with its parent (containerd's
 * fs.DiffUsage for active btrfs snapshots): blocks and inodes of every entry that is new or changed
 * compared to the parent subvolume, each inode once.
 *
 * A btrfs snapshot starts with the parent's inodes (same numbers, same ctimes); any change to an inode's
 * data or metadata moves its ctime, and userspace cannot set a ctime back. So an entry is unchanged when the
 * parent has the same path with the same type, inode number and ctime (to the nanosecond). Deleted entries
 * cost nothing and are not counted; the snapshot's root directory is not counted.
 */
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { diskUsage } from '../fsutil.js';
import type { Usage } from '../types.js';

type BigStats = Awaited<ReturnType<typeof statBig>>;
const statBig = (p: string) => lstat(p, { bigint: true });
const fileType = (st: BigStats) => st.mode & 0o170000n;

async function statOrUndefined(p: string): Promise<BigStats | undefined> {
  try {
    return await statBig(p);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw err;
  }
}

export async function diffUsage(dir: string, parentDir?: string): Promise<Usage> {
  if (parentDir === undefined) return diskUsage(dir);
  const seen = new Set<string>();
  let size = 0;
  let inodes = 0;
  let queue = [''];
  while (queue.length > 0) {
    const next: string[] = [];
    for (let i = 0; i < queue.length; i += 64) {
      await Promise.all(
        queue.slice(i, i + 64).map(async (rel) => {
          const entries = await readdir(join(dir, rel));
          await Promise.all(
            entries.map(async (name) => {
              const r = join(rel, name);
              const st = await statBig(join(dir, r));
              if (st.isDirectory()) next.push(r);
              const before = await statOrUndefined(join(parentDir, r));
              if (before && fileType(before) === fileType(st) && before.ino === st.ino && before.ctimeNs === st.ctimeNs) return;
              const id = `${st.dev}:${st.ino}`;
              if (seen.has(id)) return;
              seen.add(id);
              inodes++;
              size += Number(st.blocks) * 512;
            }),
          );
        }),
      );
    }
    queue = next;
  }
  return { size, inodes };
}
