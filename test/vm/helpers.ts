/** Helpers of the VM tier (tests that run in the QEMU guest of scripts/vm/run.sh). */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, beforeAll } from 'vitest';
import { deviceMapperMissing } from '../../src/snapshots/devmapper/plugin.js';

const run = promisify(execFile);
const repo = fileURLToPath(new URL('../..', import.meta.url));

/**
 * Throws (failing the file, not skipping it) when the kernel cannot run device-mapper thin pools: these files
 * are meant for the guest, where it can.
 */
export async function requireDeviceMapper(): Promise<void> {
  await run('modprobe', ['dm-thin-pool']).catch(() => undefined);
  await run('modprobe', ['loop']).catch(() => undefined);
  const missing = await deviceMapperMissing();
  if (missing) throw new Error(`${missing}: run the VM tier in its guest (scripts/vm/run.sh -- npx vitest run -c vitest.vm.config.ts)`);
}

export interface ThinPool {
  name: string;
  remove(): Promise<void>;
}

let seq = 0;

/** A thin pool of its own on sparse loop files in a private directory of the guest's tmpfs. */
export async function makeThinPool(size = '2G'): Promise<ThinPool> {
  const name = `strata-t${process.pid}-${++seq}`;
  const dir = await mkdtemp(join(tmpdir(), 'strata-pool-'));
  const script = join(repo, 'scripts', 'devmapper-pool.sh');
  try {
    await run('bash', [script, 'create', name, '--dir', dir, '--size', size, '--meta-size', '64M'], { env: { ...process.env, DM_DISABLE_UDEV: '1' } });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    name,
    remove: async () => {
      await run('bash', [script, 'remove', name], { env: { ...process.env, DM_DISABLE_UDEV: '1' } });
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * One thin pool for a whole test file (made in beforeAll, removed in afterAll): a pool costs a dozen processes
 * (losetup, dd, dmsetup...) to make and to remove, each slow under emulation, and the cases of a file run one
 * after the other. Each case opens its snapshotter on a root of its own with a thin-id range of its own
 * (`seedCase`); `releaseCase(root)` (the case's cleanup, after its snapshotter is closed) deactivates and
 * deletes from the pool every thin device the case's records still hold. (A first version gave every case ids
 * from 1 and removed every device of the pool after a case: a case that timed out and went on running then
 * removed the next case's device under it.)
 */
export function useSharedThinPool(size = '4G'): {
  name: () => string;
  seedCase: (root: string) => void;
  releaseCase: (root: string) => Promise<void>;
} {
  let pool: ThinPool | undefined;
  let cases = 0;
  beforeAll(async () => {
    await requireDeviceMapper();
    pool = await makeThinPool(size);
  });
  afterAll(async () => {
    await pool?.remove();
  });
  const name = () => {
    if (!pool) throw new Error('the shared thin pool is not made yet (useSharedThinPool at the top of the file)');
    return pool.name;
  };
  const env = { ...process.env, DM_DISABLE_UDEV: '1' };
  const thinIds = (root: string): number[] => {
    const dbPath = join(root, `${name()}.db`);
    if (!existsSync(dbPath)) return [];
    const db = new Database(dbPath, { readonly: true });
    try {
      return (db.prepare('SELECT thin_id FROM devices').all() as { thin_id: number }[]).map((r) => r.thin_id);
    } finally {
      db.close();
    }
  };
  /**
   * Gives the case's device records (made by a first open of the snapshotter, closed again) a thin-id range of
   * their own, 100000 ids from the case's number on: a case that timed out and still runs (vitest does not stop
   * it) never touches the ids of the next.
   */
  const seedCase = (root: string) => {
    const db = new Database(join(root, `${name()}.db`));
    try {
      db.prepare('UPDATE next_thin_id SET id = ?').run(++cases * 100_000 + 1);
    } finally {
      db.close();
    }
  };
  /** Deactivates and deletes the thin devices the case's records still hold (its range only). */
  const releaseCase = async (root: string) => {
    for (const id of thinIds(root)) {
      const dev = `${name()}-snap-${id}`;
      await run('dmsetup', ['remove', '--force', dev], { env }).catch((err: { stderr?: string }) => {
        if (!/No such device|not exist|not found/i.test(err.stderr ?? '')) throw err;
      });
      await run('dmsetup', ['message', `/dev/mapper/${name()}`, '0', `delete ${id}`], { env }).catch((err: { stderr?: string }) => {
        if (!/No data available/.test(err.stderr ?? '')) throw err;
      });
    }
  };
  return { name, seedCase, releaseCase };
}
