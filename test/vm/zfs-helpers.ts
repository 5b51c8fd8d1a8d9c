/**
 * Helpers of the VM tier's zfs tests: the zfs module (built by zfs-dkms for the guest's kernel, loaded from the
 * host's /lib/modules over the guest's root) and pools on a file vdev in the guest's tmpfs (a whole-disk pool
 * would need udev; a file vdev does not).
 */
import { execFile } from 'node:child_process';
import { access, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/**
 * Loads the zfs module (ARC kept small: the pools live in guest memory) and throws, failing the file rather than
 * skipping it, when it cannot: these files are meant for the guest of scripts/vm/run.sh on a host where
 * scripts/vm/setup.sh installed zfs.
 */
export async function requireZfs(): Promise<void> {
  if (!(await exists('/sys/module/zfs'))) {
    try {
      await run('modprobe', ['zfs', `zfs_arc_max=${256 << 20}`]);
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(
        `cannot load the zfs module (${(e.stderr || e.message).trim()}): run the VM tier in its guest ` +
          '(scripts/vm/run.sh -- npx vitest run -c vitest.vm.config.ts) after scripts/vm/setup.sh installed zfs',
      );
    }
  }
  if (!(await exists('/dev/zfs'))) throw new Error('the zfs module is loaded but there is no /dev/zfs');
  await run('zfs', ['version']).catch((err: Error) => {
    throw new Error(`zfs command unusable: ${err.message} (install zfsutils-linux: scripts/vm/setup.sh)`);
  });
}

export interface ZfsPool {
  /** The pool's name. */
  name: string;
  /** A filesystem dataset of the pool (`<pool>/strata`), mounted at `mountpoint`. */
  dataset: string;
  mountpoint: string;
  destroy(): Promise<void>;
}

let seq = 0;

/**
 * A pool of its own on a sparse file in a private directory of the guest's tmpfs, with a dataset
 * `<pool>/strata` mounted at `<dir>/mnt`: a snapshotter's root goes under that mount point.
 */
export async function makeZfsPool(size = '1G'): Promise<ZfsPool> {
  const name = `strata${process.pid}x${++seq}`;
  const dir = await mkdtemp(join(tmpdir(), 'strata-zpool-'));
  const vdev = join(dir, 'vdev');
  const mountpoint = join(dir, 'mnt');
  let created = false;
  try {
    await run('truncate', ['-s', size, vdev]);
    await mkdir(mountpoint);
    // No automatic mounts of the pool's root dataset; atime off as a container host would have it.
    await run('zpool', ['create', '-f', '-O', 'mountpoint=none', '-O', 'atime=off', '-O', 'compression=off', name, vdev]);
    created = true;
    await run('zfs', ['create', '-o', `mountpoint=${mountpoint}`, `${name}/strata`]);
  } catch (err) {
    if (created) await run('zpool', ['destroy', '-f', name]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    name,
    dataset: `${name}/strata`,
    mountpoint,
    destroy: async () => {
      // Snapshots' datasets are legacy-mounted: whatever a failed case left mounted goes with -f.
      await run('zpool', ['destroy', '-f', name]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** The datasets and snapshots under a dataset (not itself), for assertions on what a snapshotter left. */
export async function listUnder(dataset: string): Promise<string[]> {
  const { stdout } = await run('zfs', ['list', '-H', '-o', 'name', '-t', 'filesystem,snapshot', '-r', dataset]);
  return stdout
    .split('\n')
    .filter((n) => n && n !== dataset)
    .sort();
}
