/**
 * containerd's snapshotter suite (the 34 behaviours of test/snapshots/testsuite.ts) on the devmapper backend,
 * in the VM tier: one thin pool for the file (on loop files in the guest's tmpfs), a private root and thin-id
 * range per case, whose devices are deleted from the pool after it (useSharedThinPool). Small thin devices (256 MiB virtual)
 * keep mkfs cheap under emulation.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDevmapperSnapshotter, type DevmapperOptions } from '../../src/snapshots/devmapper/index.js';
import { snapshotterSuite, type SnapshotterFactory } from '../snapshots/testsuite.js';
import { useSharedThinPool } from './helpers.js';

const pool = useSharedThinPool();

function factory(extra: Partial<DevmapperOptions> = {}): SnapshotterFactory {
  return async () => {
    const base = await mkdtemp(join(tmpdir(), 'strata-devmapper-'));
    const root = join(base, 'root');
    const opts: DevmapperOptions = {
      rootPath: root,
      poolName: pool.name(),
      baseImageSize: 256 * 2 ** 20,
      ...extra,
    };
    const cleanup = async () => {
      await pool.releaseCase(root);
      await rm(base, { recursive: true, force: true });
    };
    try {
      await mkdir(root);
      // A first open makes the device records; the case's thin-id range is set in them before the real open.
      await (await openDevmapperSnapshotter(opts)).close();
      pool.seedCase(root);
      const sn = await openDevmapperSnapshotter(opts);
      return { sn, root, reopen: () => openDevmapperSnapshotter(opts), cleanup };
    } catch (err) {
      await cleanup();
      throw err;
    }
  };
}

// Software emulation (scripts/vm/run.sh): the long cases get four times their host timeout.
snapshotterSuite('devmapper (ext4)', factory(), { timeoutFactor: 4 });
