/** containerd's snapshotter suite on the overlayfs backend. */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openOverlaySnapshotter } from '../../src/snapshots/overlay/index.js';
import { snapshotterSuite } from './testsuite.js';

snapshotterSuite('overlayfs', async () => {
  // The root is a subdirectory of a private directory, so that the suite can watch what appears beside it.
  const base = await mkdtemp(join(tmpdir(), 'strata-overlay-'));
  const root = join(base, 'root');
  try {
    await mkdir(root);
    const sn = await openOverlaySnapshotter(root);
    return {
      sn,
      root,
      reopen: () => openOverlaySnapshotter(root),
      cleanup: () => rm(base, { recursive: true, force: true }),
    };
  } catch (err) {
    await rm(base, { recursive: true, force: true });
    throw err;
  }
});
