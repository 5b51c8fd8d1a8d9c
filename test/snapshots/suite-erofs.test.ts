/** containerd's snapshotter suite on the EROFS backend: committed snapshots are loop-mounted EROFS images. */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openErofsSnapshotter } from '../../src/snapshots/erofs/index.js';
import { snapshotterSuite } from './testsuite.js';

snapshotterSuite('erofs', async () => {
  const base = await mkdtemp(join(tmpdir(), 'strata-erofs-'));
  const root = join(base, 'root');
  try {
    await mkdir(root);
    const sn = await openErofsSnapshotter(root);
    return {
      sn,
      root,
      reopen: () => openErofsSnapshotter(root),
      cleanup: () => rm(base, { recursive: true, force: true }),
    };
  } catch (err) {
    await rm(base, { recursive: true, force: true });
    throw err;
  }
}, { committedIsOneFile: true });
