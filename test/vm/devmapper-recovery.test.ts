/**
 * The devmapper snapshotter after a crash between its device and metadata changes, and its removal modes, in
 * the VM tier. A crash is simulated by leaving what it would leave (a device row still 'creating' with its
 * thin device built, a committed device still active) and opening the snapshotter again.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openDevmapperSnapshotter, type DevmapperOptions, type DevmapperSnapshotter } from '../../src/snapshots/devmapper/index.js';
import { makeThinPool, requireDeviceMapper, type ThinPool } from './helpers.js';

const run = promisify(execFile);
const env = { ...process.env, DM_DISABLE_UDEV: '1' };
const dmsetup = (...args: string[]) => run('dmsetup', args, { env });
const loaded = (name: string) => dmsetup('info', name).then(
  () => true,
  () => false,
);
/** Whether the pool still has a thin id: `delete` of an id it does not have fails with ENODATA. */
const poolHas = async (pool: string, id: number) => {
  try {
    await dmsetup('message', `/dev/mapper/${pool}`, '0', `create_snap 16000000 ${id}`);
  } catch (err) {
    if (/No data available/.test((err as { stderr?: string }).stderr ?? '')) return false;
    throw err;
  }
  await dmsetup('message', `/dev/mapper/${pool}`, '0', 'delete 16000000');
  return true;
};

beforeAll(requireDeviceMapper);

let undo: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const u of undo.reverse()) await u();
  undo = [];
});

async function setup(extra: Partial<DevmapperOptions> = {}): Promise<{ pool: ThinPool; opts: DevmapperOptions; sn: DevmapperSnapshotter }> {
  const base = await mkdtemp(join(tmpdir(), 'strata-dm-recovery-'));
  const pool = await makeThinPool('1G');
  undo.push(async () => {
    await pool.remove();
    await rm(base, { recursive: true, force: true });
  });
  const opts: DevmapperOptions = { rootPath: join(base, 'root'), poolName: pool.name, baseImageSize: 128 * 2 ** 20, ...extra };
  await mkdir(opts.rootPath);
  const sn = await openDevmapperSnapshotter(opts);
  undo.push(() => sn.close());
  return { pool, opts, sn };
}

describe('devmapper snapshotter recovery', () => {
  it('deletes a thin device a crash left between its creation and its snapshot record, and keeps the others', async () => {
    const { pool, opts, sn } = await setup();
    await sn.prepare('kept', '');
    await sn.close();
    // What a crash after the pool created thin id 50 (activated), before the snapshot record, leaves.
    const db = new Database(join(opts.rootPath, `${pool.name}.db`));
    db.prepare("INSERT INTO devices (thin_id, snapshot_id, fs_type, state) VALUES (50, NULL, 'ext4', 'creating')").run();
    db.close();
    await dmsetup('message', `/dev/mapper/${pool.name}`, '0', 'create_thin 50');
    await dmsetup('create', `${pool.name}-snap-50`, '--table', `0 262144 thin /dev/mapper/${pool.name} 50`);
    expect(await poolHas(pool.name, 50)).toBe(true);

    const again = await openDevmapperSnapshotter(opts);
    undo.push(() => again.close());
    expect(await loaded(`${pool.name}-snap-50`)).toBe(false);
    expect(await poolHas(pool.name, 50)).toBe(false);
    expect((await again.stat('kept')).kind).toBe('active');
    const [m] = await again.mounts('kept');
    expect(await loaded(m!.source.replace('/dev/mapper/', ''))).toBe(true);
  });

  it('deactivates a committed device a crash left active, and activates an active one that is not loaded', async () => {
    const { pool, opts, sn } = await setup();
    await sn.prepare('a', '');
    await sn.commit('c', 'a');
    const [m] = await sn.prepare('b', 'c');
    await sn.close();
    const active = m!.source.replace('/dev/mapper/', '');
    // The committed one is thin id 1: loaded again as a crash between the commit record and deactivation leaves it.
    await dmsetup('create', `${pool.name}-snap-1`, '--table', `0 262144 thin /dev/mapper/${pool.name} 1`);
    await dmsetup('remove', active);

    const again = await openDevmapperSnapshotter(opts);
    undo.push(() => again.close());
    expect(await loaded(`${pool.name}-snap-1`)).toBe(false);
    expect(await loaded(active)).toBe(true);
  });

  it('with async_remove, keeps a removed snapshot device until cleanup, then deletes it', async () => {
    const { pool, sn } = await setup({ asyncRemove: true });
    const [m] = await sn.prepare('a', '');
    const name = m!.source.replace('/dev/mapper/', '');
    const id = Number(name.slice(`${pool.name}-snap-`.length));
    await sn.remove('a');
    expect(await poolHas(pool.name, id)).toBe(true);
    await sn.cleanup();
    expect(await loaded(name)).toBe(false);
    expect(await poolHas(pool.name, id)).toBe(false);
  });

  it('without async_remove, deletes the device within remove', async () => {
    const { pool, sn } = await setup();
    const [m] = await sn.prepare('a', '');
    const name = m!.source.replace('/dev/mapper/', '');
    const id = Number(name.slice(`${pool.name}-snap-`.length));
    await sn.remove('a');
    expect(await loaded(name)).toBe(false);
    expect(await poolHas(pool.name, id)).toBe(false);
  });
});
