/**
 * containerd's snapshotter suite (the 34 behaviours of test/snapshots/testsuite.ts) on the devmapper backend,
 * in the VM tier: each case gets a thin pool of its own (on loop files in the guest's tmpfs) and a private
 * root. Small thin devices (256 MiB virtual) keep mkfs cheap under emulation.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll } from 'vitest';
import { openDevmapperSnapshotter, type DevmapperOptions } from '../../src/snapshots/devmapper/index.js';
import { snapshotterSuite, type SnapshotterFactory } from '../snapshots/testsuite.js';
import { makeThinPool, requireDeviceMapper } from './helpers.js';

beforeAll(requireDeviceMapper);

function factory(extra: Partial<DevmapperOptions> = {}): SnapshotterFactory {
  return async () => {
    const base = await mkdtemp(join(tmpdir(), 'strata-devmapper-'));
    const root = join(base, 'root');
    const pool = await makeThinPool();
    const opts: DevmapperOptions = {
      rootPath: root,
      poolName: pool.name,
      baseImageSize: 256 * 2 ** 20,
      ...extra,
    };
    const cleanup = async () => {
      await pool.remove();
      await rm(base, { recursive: true, force: true });
    };
    try {
      await mkdir(root);
      const sn = await openDevmapperSnapshotter(opts);
      return { sn, root, reopen: () => openDevmapperSnapshotter(opts), cleanup };
    } catch (err) {
      await cleanup();
      throw err;
    }
  };
}

snapshotterSuite('devmapper (ext4)', factory());
