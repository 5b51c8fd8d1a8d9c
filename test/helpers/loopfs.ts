/**
 * A scratch filesystem on a loop device for tests: a sparse image file in a temporary directory, attached with
 * `losetup -f --show`, formatted (ext4 or btrfs) and mounted. cleanup() unmounts whatever is still mounted under
 * it (and any other mount of its device), then the filesystem, detaches the loop device and removes the
 * directory. Needs root.
 *
 * fill() takes the free space away with a filler file (fallocate), leaving about `leave` bytes; free() deletes
 * the filler: the "disk full" and "space freed" of the full-disk tests.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, rm, statfs, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { tempDir } from './temp.js';

const run = promisify(execFile);

export type LoopFsType = 'ext4' | 'btrfs';

export interface LoopFs {
  /** The mount point: the root of the filesystem. */
  path: string;
  /** The loop device it is mounted from. */
  device: string;
  /** Bytes an unprivileged-or-not writer can still allocate (statfs f_bavail; the ext4 images reserve none). */
  available(): Promise<number>;
  /** Fills the filesystem with a filler file until about `leave` bytes are left (0: full). */
  fill(leave?: number): Promise<void>;
  /** Deletes the filler file. */
  free(): Promise<void>;
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
 * mounts a btrfs test left behind), deepest and most recent first, dir itself last.
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

async function detach(device: string): Promise<void> {
  // A lazily unmounted filesystem may hold the device a moment longer: retry, then leave autoclear to it.
  for (let i = 0; i < 20; i++) {
    try {
      await run('losetup', ['-d', device]);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

const FILLER = '.filler';

export async function makeLoopFs(type: LoopFsType, size: number): Promise<LoopFs> {
  const tmp = await tempDir(`strata-${type}-`);
  const image = join(tmp.path, `${type}.img`);
  const path = join(tmp.path, 'mnt');
  let device = '';
  try {
    await writeFile(image, '');
    await truncate(image, size);
    device = (await run('losetup', ['-f', '--show', image])).stdout.trim();
    if (type === 'ext4') await run('mkfs.ext4', ['-q', '-F', '-m', '0', '-E', 'lazy_itable_init=0,lazy_journal_init=0', device]);
    else await run('mkfs.btrfs', ['-q', device]);
    await mkdir(path);
    await run('mount', [device, path]);
  } catch (err) {
    for (const p of await mountsUnder(path)) await umount(p);
    if (device) await detach(device);
    await tmp.cleanup();
    throw err;
  }
  const filler = join(path, FILLER);
  const available = async () => {
    const s = await statfs(path);
    return s.bavail * s.bsize;
  };
  let done: Promise<void> | undefined;
  return {
    path,
    device,
    available,
    async fill(leave = 0) {
      // fallocate needs room for the file's own extent blocks too: shrink the request until it fits, then top
      // up with smaller pieces until no more than `leave` (plus a block or so) is free.
      let piece = 0;
      for (let attempt = 0; attempt < 200; attempt++) {
        const room = (await available()) - leave;
        if (room <= 64 * 1024) return;
        const want = Math.max(4096, room - (attempt === 0 ? 0 : 256 * 1024));
        try {
          await run('fallocate', ['-o', String(piece), '-l', String(want), filler]);
          piece += want;
        } catch {
          // ENOSPC for the whole piece: the next round asks for less
          if (want <= 4096) return;
        }
      }
    },
    async free() {
      await rm(filler, { force: true });
      await run('sync', ['-f', path]).catch(() => undefined);
    },
    cleanup: () =>
      (done ??= (async () => {
        // Other mounts of the device (snapshot mounts a failed test left) would keep the loop device busy.
        for (const p of await mountsUnder(path, device || undefined)) await umount(p);
        if (device) await detach(device);
        await tmp.cleanup();
      })()),
  };
}
