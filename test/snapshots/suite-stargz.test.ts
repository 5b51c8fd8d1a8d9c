/**
 * containerd's snapshotter suite on the stargz backend: without remote layers it must behave exactly as the
 * overlayfs snapshotter it is built on (and start no lazyfs process).
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { openStargzSnapshotter } from '../../src/snapshots/stargz/index.js';
import { snapshotterSuite } from './testsuite.js';

snapshotterSuite('stargz', async () => {
  const base = await mkdtemp(join(tmpdir(), 'strata-stargz-suite-'));
  const root = join(base, 'root');
  try {
    await mkdir(root);
    const sn = await openStargzSnapshotter(root);
    return {
      sn,
      root,
      reopen: () => openStargzSnapshotter(root),
      cleanup: async () => {
        // Nothing remote was asked for: no lazyfs was ever started.
        expect(existsSync(join(root, 'lazyfs.sock'))).toBe(false);
        await rm(base, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await rm(base, { recursive: true, force: true });
    throw err;
  }
});
