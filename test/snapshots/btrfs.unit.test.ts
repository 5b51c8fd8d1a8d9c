/**
 * The btrfs snapshotter on a loop-mounted btrfs image: the lifecycle through real subvolid= mounts, commit
 * making a read-only snapshot, read-only views, usage counting only what a snapshot adds, removal deleting
 * subvolumes (as `btrfs subvolume list` shows), cleanup of unowned subvolumes, and the skip on a root that
 * is not on btrfs.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ErrorKind } from '../../src/core/errdefs.js';
import { silentLogger } from '../../src/log/index.js';
import { withTempMount } from '../../src/mount/index.js';
import { PluginSet, PluginType, registered, SkipPlugin } from '../../src/plugin/index.js';
import { checkBtrfs, openBtrfsSnapshotter, type BtrfsSnapshotter } from '../../src/snapshots/btrfs/index.js';
import { lookupMount } from '../../src/snapshots/btrfs/mountinfo.js';
import '../../src/snapshots/btrfs/plugin.js';
import { makeBtrfs, type BtrfsFs } from '../helpers/btrfs.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const run = promisify(execFile);
const MiB = 1 << 20;

let fs: BtrfsFs;
let tmp: TempDir;
let n = 0;
const opened: BtrfsSnapshotter[] = [];

beforeAll(async () => {
  fs = await makeBtrfs();
  tmp = await tempDir('strata-btrfs-unit-');
});
afterAll(async () => {
  for (const sn of opened) await sn.close();
  await fs?.cleanup();
  await tmp?.cleanup();
});

async function open(): Promise<{ sn: BtrfsSnapshotter; root: string }> {
  const root = join(fs.path, `sn-${++n}`, 'root');
  const sn = await openBtrfsSnapshotter(root);
  opened.push(sn);
  return { sn, root };
}

async function expectKind(p: Promise<unknown>, kind: ErrorKind): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected a '${kind}' error`).toBeDefined();
  expect((err as { kind?: unknown }).kind, String((err as Error).message)).toBe(kind);
}

/** Subvolumes under root (relative paths), from `btrfs subvolume list` on the whole filesystem. */
async function listBelow(root: string): Promise<string[]> {
  const { stdout } = await run('btrfs', ['subvolume', 'list', fs.path]);
  const prefix = root.slice(fs.path.length + 1) + '/';
  return stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => l.slice(l.indexOf(' path ') + 6))
    .filter((p) => p.startsWith(prefix))
    .map((p) => p.slice(prefix.length))
    .sort();
}

const isReadOnly = async (path: string) => (await run('btrfs', ['property', 'get', '-ts', path, 'ro'])).stdout.trim() === 'ro=true';

describe('btrfs snapshotter', () => {
  it('is skipped when its root is not on btrfs, with the reason', async () => {
    const root = join(tmp.path, 'not-btrfs', 'root');
    const fstype = (await lookupMount(tmp.path)).fstype;
    expect(fstype).not.toBe('btrfs');
    const err = await checkBtrfs(root).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SkipPlugin);
    expect((err as Error).message).toBe(
      `path ${root} (${fstype}) must be a btrfs filesystem to be used with the btrfs snapshotter: skip plugin`,
    );
    await expect(openBtrfsSnapshotter(root)).rejects.toBeInstanceOf(SkipPlugin);
    // Nothing was created for a skipped plugin.
    await expect(lstat(join(tmp.path, 'not-btrfs'))).rejects.toMatchObject({ code: 'ENOENT' });
    // A root that does not exist yet is checked where it would be created.
    expect((await checkBtrfs(join(fs.path, 'not', 'yet'))).fstype).toBe('btrfs');
  });

  it('loads as the btrfs plugin: skipped on the daemon root here, ok with root_path on btrfs', async () => {
    const reg = registered().find((r) => r.type === PluginType.Snapshot && r.id === 'btrfs')!;
    const opts = (config: Record<string, unknown>) => ({
      root: join(tmp.path, 'daemon'),
      state: join(tmp.path, 'state'),
      address: join(tmp.path, 'state', 's.sock'),
      log: silentLogger,
      configFor: (_uri: string, defaults: Record<string, unknown>) => ({ ...defaults, ...config }),
    });
    const skipped = await PluginSet.load(opts({}), [reg]);
    const root = join(tmp.path, 'daemon', 'io.containerd.snapshotter.v1.btrfs');
    expect(skipped.loaded[0]!.status).toEqual({
      state: 'skipped',
      reason: `path ${root} (${(await lookupMount(tmp.path)).fstype}) must be a btrfs filesystem to be used with the btrfs snapshotter: skip plugin`,
    });
    const onBtrfs = join(fs.path, 'plugin-root');
    const ok = await PluginSet.load(opts({ root_path: onBtrfs }), [reg]);
    expect(ok.loaded[0]!.status).toEqual({ state: 'ok' });
    expect(ok.loaded[0]!.meta.exports).toEqual({ root: onBtrfs });
    const sn = ok.get<BtrfsSnapshotter>(PluginType.Snapshot, 'btrfs');
    expect(sn.device).toBe(fs.device);
    await ok.close(silentLogger);
  });

  it('goes through prepare, commit, prepare on a parent, view and remove with real subvolid mounts', async () => {
    const { sn, root } = await open();
    const a = await sn.prepare('a', '');
    expect(a).toHaveLength(1);
    expect(a[0]).toMatchObject({ type: 'btrfs', source: fs.device });
    expect(a[0]!.options).toHaveLength(1);
    expect(a[0]!.options[0]).toMatch(/^subvolid=\d+$/);
    expect(await sn.mounts('a')).toEqual(a);
    expect(await listBelow(root)).toEqual(['active/1']);
    await withTempMount(a, async (dir) => {
      expect(((await lstat(dir)).mode & 0o7777).toString(8), 'mode of a new snapshot root').toBe('755');
      expect(await readdir(dir)).toEqual([]);
      await writeFile(join(dir, 'big'), randomBytes(MiB));
      await mkdir(join(dir, 'etc'));
      await writeFile(join(dir, 'etc', 'hosts'), 'h\n');
    });
    const activeUsage = await sn.usage('a');
    expect(activeUsage.size).toBeGreaterThanOrEqual(MiB);
    expect(activeUsage.inodes).toBeGreaterThanOrEqual(3);

    // Commit: a read-only snapshots/<id>, the active subvolume gone.
    await sn.commit('c', 'a', { labels: { x: 'y' } });
    expect(await sn.stat('c')).toMatchObject({ kind: 'committed', name: 'c', labels: { x: 'y' } });
    expect(await listBelow(root)).toEqual(['snapshots/1']);
    expect(await isReadOnly(join(root, 'snapshots', '1'))).toBe(true);
    await expect(writeFile(join(root, 'snapshots', '1', 'x'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    expect(await sn.usage('c')).toEqual(activeUsage);
    await expectKind(sn.mounts('c'), 'failed precondition');

    // A child: writable, the parent's files in it, counting only what it adds.
    const b = await sn.prepare('b', 'c');
    expect(b[0]!.options).toEqual([expect.stringMatching(/^subvolid=\d+$/)]);
    expect(b[0]!.options[0]).not.toBe(a[0]!.options[0]);
    expect(await isReadOnly(join(root, 'active', '2'))).toBe(false);
    expect((await sn.usage('b')).size, 'a fresh child shares everything').toBeLessThan(64 * 1024);
    await withTempMount(b, async (dir) => {
      expect(await readFile(join(dir, 'etc', 'hosts'), 'utf8')).toBe('h\n');
      await writeFile(join(dir, 'etc', 'hosts'), 'changed\n');
      await writeFile(join(dir, 'more'), randomBytes(2 * MiB));
    });
    const childUsage = await sn.usage('b');
    expect(childUsage.size).toBeGreaterThanOrEqual(2 * MiB);
    expect(childUsage.size, "the parent's 1 MiB is not the child's").toBeLessThan(3 * MiB);

    // A view: a read-only snapshot, mounted read-only.
    const v = await sn.view('v', 'c');
    expect(v[0]!.options).toEqual([expect.stringMatching(/^subvolid=\d+$/), 'ro']);
    expect(await isReadOnly(join(root, 'view', '3'))).toBe(true);
    await withTempMount(v, async (dir) => {
      expect(await readFile(join(dir, 'etc', 'hosts'), 'utf8')).toBe('h\n');
      await expect(writeFile(join(dir, 'x'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    });
    expect(await sn.usage('v')).toEqual({ size: 0, inodes: 0 });
    const emptyView = await sn.view('empty-view', '');
    await withTempMount(emptyView, async (dir) => {
      expect(await readdir(dir)).toEqual([]);
      await expect(writeFile(join(dir, 'x'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    });

    expect(await listBelow(root)).toEqual(['active/2', 'snapshots/1', 'view/3', 'view/4']);
    await expectKind(sn.commit('from-view', 'v'), 'failed precondition');
    await expectKind(sn.prepare('x', 'b'), 'invalid argument');
    await expectKind(sn.prepare('x', 'nothing'), 'not found');
    await expectKind(sn.view('v', 'c'), 'already exists');
    await expectKind(sn.remove('c'), 'failed precondition');

    // A committed child of a committed parent.
    await sn.commit('c2', 'b');
    await withTempMount(await sn.prepare('top', 'c2'), async (dir) => {
      expect(await readFile(join(dir, 'etc', 'hosts'), 'utf8')).toBe('changed\n');
      expect((await lstat(join(dir, 'big'))).size).toBe(MiB);
    });

    for (const k of ['top', 'c2', 'v', 'empty-view', 'c']) await sn.remove(k);
    expect(await listBelow(root)).toEqual([]);
    await expectKind(sn.remove('c'), 'not found');
  });

  it('removes an active snapshot holding a subvolume of its own', async () => {
    const { sn, root } = await open();
    await sn.prepare('a', '');
    await run('btrfs', ['subvolume', 'create', join(root, 'active', '1', 'nested')]);
    await writeFile(join(root, 'active', '1', 'nested', 'f'), 'f');
    await sn.remove('a');
    expect(await listBelow(root)).toEqual([]);
  });

  it('cleanup deletes the subvolumes no record owns with that kind, and keeps the others', async () => {
    const { sn, root } = await open();
    await sn.prepare('a', '');
    await sn.commit('c', 'a'); // id 1, committed
    await sn.prepare('active', 'c'); // id 2
    await sn.view('view', 'c'); // id 3
    const owned = ['active/2', 'snapshots/1', 'view/3'];
    expect(await listBelow(root)).toEqual(owned);
    // Crash leftovers: a snapshot taken for a commit that never recorded, the active subvolume of a snapshot
    // whose commit went through, subvolumes with no record at all, a plain directory.
    await run('btrfs', ['subvolume', 'snapshot', '-r', join(root, 'active', '2'), join(root, 'snapshots', 'new-x')]);
    await run('btrfs', ['subvolume', 'snapshot', join(root, 'snapshots', '1'), join(root, 'active', '1')]);
    await run('btrfs', ['subvolume', 'create', join(root, 'view', '99')]);
    await run('btrfs', ['subvolume', 'create', join(root, 'active', 'new-y')]);
    await mkdir(join(root, 'active', 'rm-5', 'd'), { recursive: true });
    expect(await listBelow(root)).toHaveLength(7);
    await sn.cleanup();
    expect(await listBelow(root)).toEqual(owned);
    expect((await readdir(join(root, 'active'))).sort()).toEqual(['2']);
    await sn.cleanup();
    expect(await listBelow(root)).toEqual(owned);
    await withTempMount(await sn.mounts('view'), async (dir) => expect(await readdir(dir)).toEqual([]));
  });

  it('reopens on the same root with its snapshots', async () => {
    const { sn, root } = await open();
    await withTempMount(await sn.prepare('a', ''), (d) => writeFile(join(d, 'f'), 'f'));
    await sn.commit('c', 'a');
    const before = await sn.prepare('b', 'c');
    await sn.close();
    const again = await openBtrfsSnapshotter(root);
    opened.push(again);
    expect(await again.mounts('b')).toEqual(before);
    await withTempMount(await again.mounts('b'), async (d) => expect(await readFile(join(d, 'f'), 'utf8')).toBe('f'));
    await again.remove('b');
    await again.remove('c');
    expect(await listBelow(root)).toEqual([]);
  });
});
