/** Helpers of the VM tier (tests that run in the QEMU guest of scripts/vm/run.sh). */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
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
