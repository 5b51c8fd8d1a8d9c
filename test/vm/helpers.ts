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
 * after the other. Each case opens its snapshotter on a root of its own, whose thin ids start at 1 again:
 * `releaseCase(root)` (the case's cleanup, after its snapshotter is closed) deactivates every device of the
 * pool and deletes from it every thin id the case's device records still hold, so the next case finds the
 * pool empty. A case that leaves an id behind makes the next one fail (create_thin of an id in use), never
 * pass by accident.
 */
export function useSharedThinPool(size = '4G'): { name: () => string; releaseCase: (root: string) => Promise<void> } {
  let pool: ThinPool | undefined;
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
  const releaseCase = async (root: string) => {
    const env = { ...process.env, DM_DISABLE_UDEV: '1' };
    const prefix = `${name()}-snap-`;
    const listed = (await run('dmsetup', ['ls'], { env })).stdout;
    for (const dev of listed.split('\n').map((l) => l.trim().split(/\s+/)[0] ?? '').filter((n) => n.startsWith(prefix))) {
      await run('dmsetup', ['remove', '--force', dev], { env });
    }
    const dbPath = join(root, `${name()}.db`);
    if (!existsSync(dbPath)) return;
    const db = new Database(dbPath, { readonly: true });
    let ids: number[];
    try {
      ids = (db.prepare('SELECT thin_id FROM devices').all() as { thin_id: number }[]).map((r) => r.thin_id);
    } finally {
      db.close();
    }
    for (const id of ids) {
      await run('dmsetup', ['message', `/dev/mapper/${name()}`, '0', `delete ${id}`], { env }).catch((err: { stderr?: string }) => {
        if (!/No data available/.test(err.stderr ?? '')) throw err;
      });
    }
  };
  return { name, releaseCase };
}
