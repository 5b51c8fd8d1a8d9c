/**
 * The zfs snapshotter in the VM tier: containerd's snapshotter suite (the 34 behaviours of
 * test/snapshots/testsuite.ts), then what its datasets look like (containerd's layout: `<dataset>/<id>`,
 * `@snapshot` on commit, clones for children) and what a crash leaves, repaired by cleanup. One pool for the
 * file (on a file vdev in the guest's tmpfs); each case gets a dataset of its own, mounted at a private
 * directory, whose `root` subdirectory is the snapshotter's root.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isNotFound } from '../../src/core/errdefs.js';
import { mountAll, unmount } from '../../src/mount/index.js';
import { openZfsSnapshotter, type ZfsSnapshotter } from '../../src/snapshots/zfs/index.js';
import { snapshotterSuite, type SnapshotterFactory } from '../snapshots/testsuite.js';
import { listUnder, makeZfsPool, requireZfs, type ZfsPool } from './zfs-helpers.js';

const run = promisify(execFile);

let pool: ZfsPool | undefined;
beforeAll(async () => {
  await requireZfs();
  pool = await makeZfsPool('2G');
});
afterAll(async () => {
  await pool?.destroy();
});

let seq = 0;

/** A dataset of its own (`<pool>/strata/c<n>`) mounted at a private directory; root is `<dir>/root`. */
async function caseRoot(): Promise<{ root: string; dataset: string; cleanup(): Promise<void> }> {
  if (!pool) throw new Error('no pool (see beforeAll)');
  const dir = await mkdtemp(join(tmpdir(), 'strata-zfs-case-'));
  const dataset = `${pool.dataset}/c${++seq}`;
  await run('zfs', ['create', '-o', `mountpoint=${dir}`, dataset]);
  return {
    root: join(dir, 'root'),
    dataset,
    cleanup: async () => {
      // -R: the case's clones are all inside its dataset; -f: whatever a failed case left mounted.
      await run('zfs', ['destroy', '-R', '-f', dataset]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const factory: SnapshotterFactory = async () => {
  const c = await caseRoot();
  try {
    const sn = await openZfsSnapshotter(c.root);
    return { sn, root: c.root, reopen: () => openZfsSnapshotter(c.root), cleanup: c.cleanup };
  } catch (err) {
    await c.cleanup();
    throw err;
  }
};

// Software emulation (scripts/vm/run.sh): the long cases get four times their host timeout.
snapshotterSuite('zfs', factory, { timeoutFactor: 4 });

describe('zfs snapshotter datasets', () => {
  let undo: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const u of undo.reverse()) await u();
    undo = [];
  });

  async function open(): Promise<{ sn: ZfsSnapshotter; root: string; dataset: string }> {
    const c = await caseRoot();
    undo.push(c.cleanup);
    const sn = await openZfsSnapshotter(c.root);
    undo.push(() => sn.close());
    return { sn, root: c.root, dataset: c.dataset };
  }

  it("lays snapshots out as containerd's does: a dataset per snapshot, @snapshot on commit, clones for children", async () => {
    const { sn, dataset } = await open();
    const [m] = await sn.prepare('a', '');
    expect(m).toEqual({ type: 'zfs', source: `${dataset}/1`, options: [] });
    await sn.commit('c', 'a');
    const [child] = await sn.prepare('b', 'c');
    const [view] = await sn.view('v', 'c');
    expect(view!.options).toEqual(['ro']);
    expect(await sn.mounts('v')).toEqual([view]);
    expect(await listUnder(dataset)).toEqual([`${dataset}/1`, `${dataset}/1@snapshot`, child!.source, view!.source].sort());
    const props = async (name: string, p: string) => (await run('zfs', ['get', '-H', '-o', 'value', p, name])).stdout.trim();
    expect(await props(child!.source, 'origin')).toBe(`${dataset}/1@snapshot`);
    expect(await props(view!.source, 'origin')).toBe(`${dataset}/1@snapshot`);
    for (const d of [`${dataset}/1`, child!.source, view!.source]) expect(await props(d, 'mountpoint')).toBe('legacy');
    // Removing the children, then the parent, leaves nothing.
    await sn.remove('b');
    await sn.remove('v');
    await sn.remove('c');
    expect(await listUnder(dataset)).toEqual([]);
  });

  it('measures an active snapshot from its dataset: the bytes it wrote itself and the objects beyond its parent', async () => {
    const { sn } = await open();
    const mounts = await sn.prepare('a', '');
    const dir = await mkdtemp(join(tmpdir(), 'strata-zfs-m-'));
    undo.push(() => rm(dir, { recursive: true, force: true }));
    await mountAll(mounts, dir);
    try {
      await run('dd', ['if=/dev/urandom', `of=${join(dir, 'big')}`, 'bs=1M', 'count=4', 'status=none']);
      await run('mkdir', [join(dir, 'd1'), join(dir, 'd2')]);
    } finally {
      await unmount(dir);
    }
    const u = await sn.usage('a');
    expect(u.size).toBeGreaterThanOrEqual(4 << 20);
    expect(u.size).toBeLessThan(6 << 20);
    expect(u.inodes).toBe(3);
    await sn.commit('c', 'a');
    expect(u).toEqual({ size: u.size, inodes: 3 });
    const committed = await sn.usage('c');
    expect(committed.inodes).toBe(3);
    expect(committed.size).toBeGreaterThanOrEqual(4 << 20);
    // A child holds nothing of its own until it writes.
    const child = await sn.prepare('b', 'c');
    const empty = await sn.usage('b');
    expect(empty.inodes).toBe(0);
    expect(empty.size).toBeLessThan(1 << 20);
    await mountAll(child, dir);
    try {
      await run('touch', [join(dir, 'new')]);
    } finally {
      await unmount(dir);
    }
    expect((await sn.usage('b')).inodes).toBe(1);
  });

  it('cleanup destroys what a crash leaves: a dataset still under its temporary name, one without a record, a commit snapshot without its record', async () => {
    const { sn, root, dataset } = await open();
    await sn.prepare('kept', '');
    await sn.prepare('half-committed', '');
    await sn.close();
    // A create cut before its record, a removal cut after its record, a commit cut before its record.
    await run('zfs', ['create', '-o', 'mountpoint=legacy', `${dataset}/new-0123`]);
    await run('zfs', ['create', '-o', 'mountpoint=legacy', `${dataset}/77`]);
    await run('zfs', ['snapshot', `${dataset}/2@snapshot`]);
    const again = await openZfsSnapshotter(root);
    undo.push(() => again.close());
    await again.cleanup();
    expect(await listUnder(dataset)).toEqual([`${dataset}/1`, `${dataset}/2`]);
    // The cut commit can be made again.
    await again.commit('c', 'half-committed');
    expect(await listUnder(dataset)).toEqual([`${dataset}/1`, `${dataset}/2`, `${dataset}/2@snapshot`]);
  });

  it('commits an active snapshot whose ZFS snapshot a cut commit left, taking it again', async () => {
    const { sn, dataset } = await open();
    const mounts = await sn.prepare('a', '');
    await run('zfs', ['snapshot', `${dataset}/1@snapshot`]);
    const dir = await mkdtemp(join(tmpdir(), 'strata-zfs-m-'));
    undo.push(() => rm(dir, { recursive: true, force: true }));
    await mountAll(mounts, dir);
    try {
      await run('touch', [join(dir, 'after')]);
    } finally {
      await unmount(dir);
    }
    await sn.commit('c', 'a');
    const view = await sn.view('v', 'c');
    await mountAll(view, dir);
    try {
      const { stdout } = await run('ls', [dir]);
      expect(stdout.trim()).toBe('after');
    } finally {
      await unmount(dir);
    }
  });

  it('answers not found for the parent of a clone that was removed meanwhile, and leaves no dataset behind', async () => {
    const { sn, dataset } = await open();
    await sn.prepare('a', '');
    await sn.commit('c', 'a');
    const err = await sn.prepare('b', 'no-such-parent').catch((e: unknown) => e);
    expect(isNotFound(err)).toBe(true);
    expect(await listUnder(dataset)).toEqual([`${dataset}/1`, `${dataset}/1@snapshot`]);
  });
});
