/**
 * src/mount's mount-point check (read from /proc/self/mountinfo, no process) against real mounts, and what the
 * task manager relies on from it: a bind mount of the same file system counts, a path with a space in it (escaped
 * in mountinfo) counts, a symlink to a mount point counts, and unmount() leaves nothing mounted even when mounts
 * are stacked.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isMountPoint, mountAll, unmount } from '../../src/mount/index.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const run = promisify(execFile);

let tmp: TempDir;

beforeAll(async () => {
  tmp = await tempDir('strata-mount-');
});

afterAll(async () => {
  const left = (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.includes(tmp.path));
  for (const l of left.reverse()) await run('umount', ['-l', l.split(' ')[4]!.replace(/\\040/g, ' ')]).catch(() => undefined);
  await tmp.cleanup();
});

/** What mountpoint(1) answers, for comparison. */
async function mountpointSays(path: string): Promise<boolean> {
  return run('mountpoint', ['-q', path]).then(
    () => true,
    () => false,
  );
}

describe('isMountPoint', () => {
  it('answers as mountpoint(1) does for a bind mount of the same file system, before and after the unmount', async () => {
    const src = join(tmp.path, 'src');
    const target = join(tmp.path, 'bind');
    await mkdir(src);
    await mkdir(target);
    await writeFile(join(src, 'f'), 'x');
    expect(await isMountPoint(target)).toBe(false);
    await mountAll([{ type: 'bind', source: src, options: ['rbind'] }], target);
    expect(await isMountPoint(target)).toBe(true);
    expect(await mountpointSays(target)).toBe(true);
    expect(await readFile(join(target, 'f'), 'utf8')).toBe('x');
    await unmount(target);
    expect(await isMountPoint(target)).toBe(false);
    expect(await mountpointSays(target)).toBe(false);
  });

  it('finds a mount point whose path has a space in it, and one reached through a symlink', async () => {
    const target = join(tmp.path, 'with space');
    const link = join(tmp.path, 'link-to-it');
    await mkdir(target);
    await symlink(target, link);
    await mountAll([{ type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] }], target);
    try {
      expect(await isMountPoint(target)).toBe(true);
      expect(await isMountPoint(link)).toBe(true);
      expect(await isMountPoint(join(target, '..', 'with space'))).toBe(true);
      expect(await isMountPoint(join(tmp.path, 'with'))).toBe(false);
    } finally {
      await unmount(target);
    }
    expect(await isMountPoint(target)).toBe(false);
  });

  it('says no for a path that does not exist and for a plain directory', async () => {
    expect(await isMountPoint(join(tmp.path, 'nothing-here'))).toBe(false);
    expect(await isMountPoint(tmp.path)).toBe(await mountpointSays(tmp.path));
    expect(await isMountPoint('/proc')).toBe(true);
  });

  it('unmount takes off every mount stacked on a target', async () => {
    const target = join(tmp.path, 'stacked');
    await mkdir(target);
    await mountAll(
      [
        { type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] },
        { type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] },
      ],
      target,
    );
    const count = async () => (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').filter((l) => l.split(' ')[4] === target).length;
    expect(await count()).toBe(2);
    await unmount(target);
    expect(await count()).toBe(0);
    expect(await isMountPoint(target)).toBe(false);
  });
});
