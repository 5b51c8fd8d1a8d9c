/** containerd's snapshotter suite on the btrfs backend, on a loop-mounted scratch btrfs. */
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { deleteSubvolume, openBtrfsSnapshotter } from '../../src/snapshots/btrfs/index.js';
import { makeBtrfs, type BtrfsFs } from '../helpers/btrfs.js';
import { snapshotterSuite } from './testsuite.js';

// One filesystem for the file (making one per case would cost more than the cases); a private root per case.
let fs: BtrfsFs | undefined;
beforeAll(async () => {
  fs = await makeBtrfs(2 * 2 ** 30);
});
afterAll(async () => {
  await fs?.cleanup();
});

/** Deletes what a snapshotter root holds: its subvolumes (read-only ones cannot be emptied by rm), then the rest. */
async function removeRoot(base: string, root: string): Promise<void> {
  for (const dir of await readdir(root).catch(() => [] as string[])) {
    const path = join(root, dir);
    const entries = await readdir(path).catch(() => undefined);
    if (entries === undefined) continue; // a file (metadata.db...)
    for (const name of entries) await deleteSubvolume(join(path, name));
  }
  await rm(base, { recursive: true, force: true });
}

snapshotterSuite('btrfs', async () => {
  if (!fs) throw new Error('no btrfs filesystem (makeBtrfs failed)');
  // The root is a subdirectory of a private directory, so that the suite can watch what appears beside it.
  const base = await mkdtemp(join(fs.path, 'case-'));
  const root = join(base, 'root');
  try {
    await mkdir(root);
    const sn = await openBtrfsSnapshotter(root);
    return {
      sn,
      root,
      reopen: () => openBtrfsSnapshotter(root),
      cleanup: () => removeRoot(base, root),
    };
  } catch (err) {
    await removeRoot(base, root);
    throw err;
  }
});
