/**
 * A scratch btrfs filesystem for tests: a sparse 1 GiB image in a temporary directory, formatted with
 * mkfs.btrfs and loop-mounted (mount -o loop: the loop device detaches itself at the last unmount).
 * cleanup() unmounts whatever is still mounted under it, then the filesystem, then removes the directory.
 * Needs root.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { tempDir } from './temp.js';

const run = promisify(execFile);

export interface BtrfsFs {
  /** The mount point: the root of the btrfs filesystem. */
  path: string;
  /** The loop device it is mounted from. */
  device: string;
  cleanup(): Promise<void>;
}

const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

interface Entry {
  point: string;
  source: string;
}

async function mountTable(): Promise<Entry[]> {
  return (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const f = l.split(' ');
      return { point: unescape(f[4]!), source: unescape(f[f.indexOf('-', 6) + 2] ?? '') };
    });
}

/**
 * Mount points at or below dir, and (given the device) every other mount of that device (the subvolid=
 * mounts a test left behind), deepest and most recent first, dir itself last.
 */
async function mountsUnder(dir: string, device?: string): Promise<string[]> {
  const points = (await mountTable())
    .filter((m) => m.point === dir || m.point.startsWith(dir + '/') || (device && m.source === device))
    .map((m) => m.point);
  return points.reverse().sort((a, b) => (a === dir ? 1 : b === dir ? -1 : b.length - a.length));
}

async function umount(target: string): Promise<void> {
  try {
    await run('umount', [target]);
  } catch {
    await run('umount', ['-l', target]).catch(() => undefined);
  }
}

export async function makeBtrfs(size = 1 << 30): Promise<BtrfsFs> {
  const tmp = await tempDir('strata-btrfs-');
  const image = join(tmp.path, 'btrfs.img');
  const path = join(tmp.path, 'mnt');
  try {
    await writeFile(image, '');
    await truncate(image, size);
    await run('mkfs.btrfs', ['-q', image]);
    await mkdir(path);
    await run('mount', ['-o', 'loop', image, path]);
  } catch (err) {
    for (const p of await mountsUnder(path)) await umount(p);
    await tmp.cleanup();
    throw err;
  }
  const device = (await mountTable()).find((m) => m.point === path)?.source ?? '';
  let done: Promise<void> | undefined;
  return {
    path,
    device,
    cleanup: () =>
      (done ??= (async () => {
        // Other mounts of the device (snapshot mounts a failed test left) would keep the loop device busy.
        for (const p of await mountsUnder(path, device || undefined)) await umount(p);
        await tmp.cleanup();
      })()),
  };
}
