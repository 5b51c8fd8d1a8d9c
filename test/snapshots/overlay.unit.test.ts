/**
 * The overlayfs snapshotter on real mounts: lifecycle, whiteouts, read-only views, the shape of its mounts,
 * usage, removal, cleanup, the plugin, and a 500-layer chain mounted both by src/mount and the way containerd's
 * own mount code would mount it.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ErrorKind } from '../../src/core/errdefs.js';
import { silentLogger } from '../../src/log/index.js';
import { isMountPoint, mountAll, unmount, withTempMount } from '../../src/mount/index.js';
import { PluginSet, PluginType, registered } from '../../src/plugin/index.js';
import {
  checkOverlaySupport,
  containerdCompaction,
  openOverlaySnapshotter,
  overlayOptionsFit,
} from '../../src/snapshots/overlay/index.js';
import '../../src/snapshots/overlay/plugin.js';
import type { Snapshotter } from '../../src/snapshots/types.js';
import type { Mount } from '../../src/core/mount.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const run = promisify(execFile);
const indexOff = existsSync('/sys/module/overlay/parameters/index');

let tmp: TempDir;
/** Mount points made by this file, unmounted in afterAll whatever happened. */
const targets: string[] = [];
/** Snapshotters opened by this file, closed in afterAll. */
const opened: Snapshotter[] = [];

beforeAll(async () => {
  tmp = await tempDir('strata-overlay-');
});

afterAll(async () => {
  for (const t of targets.reverse()) await unmount(t).catch(() => undefined);
  for (const sn of opened) await sn.close().catch(() => undefined);
  const left = (await readFile('/proc/mounts', 'utf8')).split('\n').filter((l) => l.includes(tmp.path));
  for (const l of left.reverse()) await run('umount', ['-l', l.split(' ')[1]!]).catch(() => undefined);
  await tmp.cleanup();
});

let n = 0;
async function open(opts: { mountOptions?: string[] } = {}): Promise<{ sn: Snapshotter; root: string }> {
  const root = join(tmp.path, `root-${++n}`);
  const sn = await openOverlaySnapshotter(root, { ...opts, log: silentLogger });
  opened.push(sn);
  return { sn, root };
}

async function mountOn(mounts: Mount[]): Promise<string> {
  const target = await mkdtemp(join(tmp.path, 'mnt-'));
  targets.push(target);
  await mountAll(mounts, target);
  return target;
}

async function unmountFrom(target: string): Promise<void> {
  await unmount(target);
  targets.splice(targets.indexOf(target), 1);
  expect(await isMountPoint(target)).toBe(false);
  await rm(target, { recursive: true });
}

async function expectKind(p: Promise<unknown>, kind: ErrorKind): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected a '${kind}' error`).toBeDefined();
  expect((err as { kind?: string }).kind, String(err)).toBe(kind);
}

const errnoOf = (p: Promise<unknown>) =>
  p.then(
    () => 'succeeded',
    (e: NodeJS.ErrnoException) => e.code,
  );

const option = (m: Mount, name: string) => m.options.find((o) => o.startsWith(`${name}=`))?.slice(name.length + 1);
const idOf = (root: string, path: string) => {
  const m = new RegExp(`^${root}/snapshots/(\\d+)/fs$`).exec(path);
  if (!m) throw new Error(`${path} is not a snapshot's fs under ${root}`);
  return Number(m[1]);
};

/** Writes a file into an active snapshot's own layer, straight into the directory its mounts name. */
async function writeLayer(mounts: Mount[], name: string, content: string): Promise<void> {
  const m = mounts[0]!;
  const dir = m.type === 'bind' ? m.source : option(m, 'upperdir')!;
  await writeFile(join(dir, name), content);
}

describe('overlayfs snapshotter', () => {
  it('checkOverlaySupport passes here and leaves nothing behind', async () => {
    const root = join(tmp.path, 'check');
    await checkOverlaySupport(root);
    expect(await readdir(root)).toEqual([]);
  });

  it('lifecycle: prepare, write, commit, child sees the parent, whiteouts, read-only views', async () => {
    const { sn, root } = await open();
    const base = await sn.prepare('base', '', { labels: { a: '1' } });
    expect(base).toEqual([{ type: 'bind', source: expect.stringMatching(/\/snapshots\/\d+\/fs$/), options: ['rw', 'rbind'] }]);
    await withTempMount(base, async (dir) => {
      await writeFile(join(dir, 'hello'), 'from base\n');
      await mkdir(join(dir, 'etc'));
      await writeFile(join(dir, 'etc', 'motd'), 'motd\n');
    });
    await sn.commit('base-c', 'base', { labels: { b: '2' } });
    expect(await sn.stat('base-c')).toMatchObject({ kind: 'committed', name: 'base-c', parent: '', labels: { b: '2' } });
    await expectKind(sn.stat('base'), 'not found');

    const child = await sn.prepare('child', 'base-c');
    expect(child[0]!.type).toBe('overlay');
    const dir = await mountOn(child);
    try {
      expect(await readFile(join(dir, 'hello'), 'utf8')).toBe('from base\n');
      expect(((await stat(dir)).mode & 0o7777).toString(8)).toBe('755');
      await rm(join(dir, 'hello'));
      await writeFile(join(dir, 'etc', 'motd'), 'changed\n');
      await writeFile(join(dir, 'new'), 'new\n');
      expect((await readdir(dir)).sort()).toEqual(['etc', 'new']);
    } finally {
      await unmountFrom(dir);
    }
    // The deletion is a whiteout (a 0/0 character device) in the child's own layer; the parent is untouched.
    const upper = option(child[0]!, 'upperdir')!;
    const wh = await lstat(join(upper, 'hello'));
    expect(wh.isCharacterDevice() && wh.rdev === 0).toBe(true);
    expect(await readFile(join(base[0]!.source, 'hello'), 'utf8')).toBe('from base\n');
    await sn.commit('child-c', 'child');

    // A view of a chain of two: overlay of lower dirs only, read-only, showing the child's changes.
    const v2 = await sn.view('v2', 'child-c');
    expect(v2[0]!.type).toBe('overlay');
    expect(option(v2[0]!, 'upperdir')).toBeUndefined();
    const vdir = await mountOn(v2);
    try {
      expect((await readdir(vdir)).sort()).toEqual(['etc', 'new']);
      expect(await readFile(join(vdir, 'etc', 'motd'), 'utf8')).toBe('changed\n');
      expect(await errnoOf(writeFile(join(vdir, 'x'), 'x'))).toBe('EROFS');
      expect(await errnoOf(rm(join(vdir, 'new')))).toBe('EROFS');
    } finally {
      await unmountFrom(vdir);
    }

    // A view of one committed snapshot: a read-only bind of the parent's layer.
    const v1 = await sn.view('v1', 'base-c');
    expect(v1).toEqual([{ type: 'bind', source: base[0]!.source, options: ['ro', 'rbind'] }]);
    const v1dir = await mountOn(v1);
    try {
      expect(await readFile(join(v1dir, 'hello'), 'utf8')).toBe('from base\n');
      expect(await errnoOf(writeFile(join(v1dir, 'testfile'), 'x'))).toBe('EROFS');
      expect(await errnoOf(writeFile(join(v1dir, 'hello'), 'x', { flag: 'a' }))).toBe('EROFS');
      expect(await errnoOf(mkdir(join(v1dir, 'd')))).toBe('EROFS');
    } finally {
      await unmountFrom(v1dir);
    }
    // A view without a parent: an empty read-only bind.
    const v0 = await sn.view('v0', '');
    expect(v0[0]!.options).toEqual(['ro', 'rbind']);
    await withTempMount(v0, async (d) => {
      expect(await readdir(d)).toEqual([]);
      expect(await errnoOf(writeFile(join(d, 'x'), 'x'))).toBe('EROFS');
    });
    expect(existsSync(join(root, 'metadata.db'))).toBe(true);
  });

  it('mounts: the shape of each kind, the same from mounts(), mount_options first', async () => {
    const { sn, root } = await open({ mountOptions: ['nodev'] });
    const a = await sn.prepare('a', '');
    expect(await sn.mounts('a')).toEqual(a);
    const idA = idOf(root, a[0]!.source);
    expect(a[0]!.options).toEqual(['rw', 'rbind']); // mount_options are for overlay mounts only, as in containerd
    await sn.commit('c1', 'a');
    await expectKind(sn.mounts('c1'), 'failed precondition');
    await sn.prepare('b', 'c1');
    await sn.commit('c2', 'b');
    await sn.prepare('c', 'c2');
    await sn.commit('c3', 'c');

    const act = await sn.prepare('act', 'c3');
    expect(await sn.mounts('act')).toEqual(act);
    expect(act).toHaveLength(1);
    const m = act[0]!;
    expect(m.type).toBe('overlay');
    expect(m.source).toBe('overlay');
    const idAct = idOf(root, option(m, 'upperdir')!);
    const want = ['nodev'];
    if (indexOff) want.push('index=off');
    want.push(`workdir=${root}/snapshots/${idAct}/work`, `upperdir=${root}/snapshots/${idAct}/fs`);
    // Nearest parent first, containerd's plain paths for a short chain.
    const lowers = option(m, 'lowerdir')!.split(':');
    expect(lowers).toHaveLength(3);
    expect(lowers[2]).toBe(`${root}/snapshots/${idA}/fs`);
    expect(m.options).toEqual([...want, `lowerdir=${lowers.join(':')}`]);
    expect(m.options).not.toContain('userxattr'); // real root in the initial user namespace
    expect((await stat(option(m, 'workdir')!)).mode & 0o777).toBe(0o711);

    const view = await sn.view('view', 'c3');
    expect(await sn.mounts('view')).toEqual(view);
    expect(view[0]!.options).toEqual([...want.slice(0, indexOff ? 2 : 1), `lowerdir=${lowers.join(':')}`]);
    await expectKind(sn.mounts('nope'), 'not found');
    await withTempMount(act, async (d) => expect(await readdir(d)).toEqual([]));
  });

  it('usage: active measured now, committed as measured at commit, views zero', async () => {
    const { sn } = await open();
    const MiB = 1 << 20;
    const a = await sn.prepare('a', '');
    const empty = await sn.usage('a');
    expect(empty.inodes).toBe(1);
    await writeFile(join(a[0]!.source, 'big'), Buffer.alloc(MiB, 7));
    await mkdir(join(a[0]!.source, 'd'));
    await writeFile(join(a[0]!.source, 'd', 'small'), 'x');
    const active = await sn.usage('a');
    expect(active.size).toBeGreaterThanOrEqual(MiB);
    expect(active.inodes).toBe(4);
    await sn.commit('c', 'a');
    expect(await sn.usage('c')).toEqual(active);
    // The stored value, not a new measurement.
    await writeFile(join(a[0]!.source, 'later'), 'x');
    expect(await sn.usage('c')).toEqual(active);
    await sn.view('v', 'c');
    expect(await sn.usage('v')).toEqual({ size: 0, inodes: 0 });
    const child = await sn.prepare('child', 'c');
    await writeLayer(child, 'f', 'f');
    const cu = await sn.usage('child');
    expect(cu.inodes).toBe(2);
    expect(cu.size).toBeLessThan(MiB);
    await expectKind(sn.usage('nope'), 'not found');
  });

  it('errors are containerd kinds', async () => {
    const { sn, root } = await open();
    await sn.prepare('a', '');
    await expectKind(sn.prepare('a', ''), 'already exists');
    await expectKind(sn.view('a', ''), 'already exists');
    await expectKind(sn.prepare('b', 'missing'), 'not found');
    await expectKind(sn.prepare('b', 'a'), 'invalid argument'); // parent not committed
    await expectKind(sn.prepare('', ''), 'invalid argument');
    await sn.commit('c', 'a');
    await sn.view('v', 'c');
    await expectKind(sn.commit('x', 'v'), 'failed precondition');
    await expectKind(sn.commit('x', 'c'), 'failed precondition');
    await expectKind(sn.commit('x', 'gone'), 'not found');
    await sn.prepare('d', 'c');
    await expectKind(sn.commit('c', 'd'), 'already exists');
    await expectKind(sn.remove('nope'), 'not found');
    // Nothing left half-made by the failures.
    expect((await readdir(join(root, 'snapshots'))).filter((x) => !/^\d+$/.test(x))).toEqual([]);
  });

  it('remove: a parent with children stays; removed snapshots leave no directory or link', async () => {
    const { sn, root } = await open();
    const a = await sn.prepare('a', '');
    const idA = idOf(root, a[0]!.source);
    await writeLayer(a, 'f', 'f');
    await sn.commit('c', 'a');
    const child = await sn.prepare('child', 'c');
    const idChild = idOf(root, option(child[0]!, 'upperdir')!);
    await expectKind(sn.remove('c'), 'failed precondition');
    expect((await sn.stat('c')).kind).toBe('committed');
    expect(await readlink(join(root, 'l', idA.toString(36)))).toBe(`../snapshots/${idA}/fs`);

    await sn.remove('child');
    await expectKind(sn.stat('child'), 'not found');
    await expectKind(sn.mounts('child'), 'not found');
    await sn.remove('c');
    expect(await readdir(join(root, 'snapshots'))).toEqual([]);
    expect(await readdir(join(root, 'l'))).toEqual([]);
    expect([idA, idChild].every((id) => !existsSync(join(root, 'snapshots', String(id))))).toBe(true);
    // The key is free again.
    await sn.prepare('child', '');
  });

  it('remove moves the data into the trash within the call; cleanup waits until the trash is empty', async () => {
    const { sn, root } = await open();
    const a = await sn.prepare('a', '');
    const id = idOf(root, a[0]!.source);
    for (let i = 0; i < 50; i++) await writeLayer(a, `f${i}`, 'data');
    await sn.commit('c', 'a');
    await sn.remove('c');
    expect(existsSync(join(root, 'snapshots', String(id)))).toBe(false);
    expect(existsSync(join(root, 'l', id.toString(36)))).toBe(false);
    await sn.cleanup();
    expect(await readdir(join(root, 'trash'))).toEqual([]);
  });

  it('removes many snapshots in one batch, children before parents, reporting what stays', async () => {
    const { sn, root } = await open();
    await sn.prepare('a', '');
    await sn.commit('base', 'a');
    await sn.prepare('b', 'base');
    await sn.commit('mid', 'b');
    await sn.prepare('top', 'mid');
    await sn.prepare('kept', 'base');
    const many = (sn as Snapshotter & { removeMany(keys: string[]): Promise<void> }).removeMany.bind(sn);
    // 'base' still has a child outside the batch ('kept'): it stays and its error is thrown after the rest went.
    await expectKind(many(['base', 'mid', 'top', 'missing']), 'failed precondition');
    await expectKind(sn.stat('mid'), 'not found');
    await expectKind(sn.stat('top'), 'not found');
    expect((await sn.stat('base')).kind).toBe('committed');
    await many(['kept', 'base']);
    await sn.cleanup();
    expect(await readdir(join(root, 'snapshots'))).toEqual([]);
    expect(await readdir(join(root, 'trash'))).toEqual([]);
  });

  it('deletes what a crash left in the trash when it opens again, and keeps every recorded snapshot', async () => {
    const { sn, root } = await open();
    const a = await sn.prepare('a', '');
    await writeLayer(a, 'kept', 'kept');
    await sn.commit('c', 'a');
    await sn.close();
    opened.splice(opened.indexOf(sn), 1);
    // A removal interrupted after its rename into the trash.
    await mkdir(join(root, 'trash', '4242', 'fs', 'deep'), { recursive: true });
    await writeFile(join(root, 'trash', '4242', 'fs', 'deep', 'x'), 'x');
    const again = await openOverlaySnapshotter(root, { log: silentLogger });
    opened.push(again);
    // Without a cleanup() call: opening starts the deletion in the background.
    for (let i = 0; i < 250 && (await readdir(join(root, 'trash'))).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(await readdir(join(root, 'trash'))).toEqual([]);
    const v = await again.view('v', 'c');
    await withTempMount(v, async (d) => expect(await readdir(d)).toEqual(['kept']));
  });

  it('cleanup removes what no record owns and keeps the rest', async () => {
    const { sn, root } = await open();
    const a = await sn.prepare('a', '');
    await writeLayer(a, 'mine', 'mine\n');
    await sn.commit('c', 'a');
    const act = await sn.prepare('act', 'c');
    await writeLayer(act, 'top', 'top\n');
    await sn.view('v', 'c');
    const snapshots = join(root, 'snapshots');
    const owned = (await readdir(snapshots)).sort();
    // Left by crashes: an id with no record, a half-made snapshot, a half-deleted one, a dangling link.
    await mkdir(join(snapshots, '9999', 'fs'), { recursive: true });
    await writeFile(join(snapshots, '9999', 'fs', 'junk'), 'junk');
    await mkdir(join(snapshots, 'new-123abc', 'fs'), { recursive: true });
    await mkdir(join(snapshots, 'rm-7', 'fs'), { recursive: true });
    await symlink('../snapshots/9999/fs', join(root, 'l', (9999).toString(36)));
    await sn.cleanup();
    expect((await readdir(snapshots)).sort()).toEqual(owned);
    expect((await readdir(join(root, 'l'))).map((x) => parseInt(x, 36)).sort((x, y) => x - y)).toEqual(owned.map(Number).sort((x, y) => x - y));
    await withTempMount(await sn.mounts('act'), async (d) => {
      expect((await readdir(d)).sort()).toEqual(['mine', 'top']);
    });
    await sn.cleanup();
    expect((await readdir(snapshots)).sort()).toEqual(owned);
  });

  it('a directory left at the next id by an uncommitted transaction does not leak into a new snapshot', async () => {
    const { sn, root } = await open();
    const a = await sn.prepare('a', '');
    const next = idOf(root, a[0]!.source) + 1;
    await mkdir(join(root, 'snapshots', String(next), 'fs'), { recursive: true });
    await writeFile(join(root, 'snapshots', String(next), 'fs', 'stale'), 'stale');
    const b = await sn.prepare('b', '');
    expect(idOf(root, b[0]!.source)).toBe(next);
    expect(await readdir(b[0]!.source)).toEqual([]);
    await sn.cleanup();
    expect((await readdir(join(root, 'snapshots'))).sort()).toEqual([String(next - 1), String(next)]);
  });

  it('close and reopen keeps everything; close twice is fine', async () => {
    const { sn, root } = await open();
    const a = await sn.prepare('a', '');
    await writeLayer(a, 'f', 'f\n');
    await sn.commit('c', 'a');
    const act = await sn.prepare('act', 'c', { labels: { x: 'y' } });
    await sn.close();
    await sn.close();
    const again = await openOverlaySnapshotter(root);
    opened.push(again);
    expect(await again.mounts('act')).toEqual(act);
    expect((await again.stat('act')).labels).toEqual({ x: 'y' });
    const names: string[] = [];
    await again.walk((i) => {
      names.push(i.name);
    });
    expect(names.sort()).toEqual(['act', 'c']);
    await withTempMount(act, async (d) => expect(await readFile(join(d, 'f'), 'utf8')).toBe('f\n'));
  });

  it('plugin: loads on a root where overlayfs works, skips with the reason where it does not', async () => {
    const reg = registered().find((r) => r.type === PluginType.Snapshot && r.id === 'overlayfs')!;
    expect(reg).toBeDefined();
    expect(reg.config?.()).toEqual({ mount_options: [] });
    const load = (root: string) =>
      PluginSet.load(
        {
          root,
          state: join(root, 'state'),
          address: '',
          log: silentLogger,
          configFor: (_uri, defaults) => defaults,
        },
        [reg],
      );
    const okRoot = join(tmp.path, 'plugin-ok');
    const ok = await load(okRoot);
    const entry = ok.loaded[0]!;
    expect(entry.status).toEqual({ state: 'ok' });
    const pluginRoot = join(okRoot, 'io.containerd.snapshotter.v1.overlayfs');
    expect(entry.meta.exports.root).toBe(pluginRoot);
    const sn = entry.instance as Snapshotter;
    await sn.prepare('a', '');
    expect(existsSync(join(pluginRoot, 'metadata.db'))).toBe(true);
    await ok.close(silentLogger);
    await expect(sn.prepare('b', '')).rejects.toThrow(); // closed by onClose

    // overlayfs cannot put upper directories on overlayfs: a root inside an overlay mount skips the plugin.
    const o = join(tmp.path, 'ovl');
    for (const d of ['lower', 'upper', 'work', 'merged']) await mkdir(join(o, d), { recursive: true });
    const merged = await mountOn([
      { type: 'overlay', source: 'overlay', options: [`lowerdir=${o}/lower`, `upperdir=${o}/upper`, `workdir=${o}/work`] },
    ]);
    try {
      const skipped = await load(merged);
      const st = skipped.loaded[0]!.status;
      expect(st.state).toBe('skipped');
      const reason = st.state === 'skipped' ? st.reason : '';
      expect(reason).toMatch(/^overlayfs not supported on .*io\.containerd\.snapshotter\.v1\.overlayfs: failed to mount overlay: /);
      expect(reason).toMatch(/not supported as upperdir|itself on overlayfs/);
      expect(reason).toMatch(/: skip plugin$/);
      await skipped.close(silentLogger);
      // The check left nothing mounted or behind.
      expect(await readdir(join(merged, 'io.containerd.snapshotter.v1.overlayfs'))).toEqual([]);
    } finally {
      await unmountFrom(merged);
    }
  });

  it(
    '500-layer chain with four-digit ids: an active snapshot on 500 parents mounts, through src/mount and as containerd would',
    { timeout: 300_000 },
    async () => {
      const { sn, root } = await open();
      // Push the ids into the thousands first, as on a long-lived host.
      for (let i = 0; i < 1000; i++) {
        await sn.prepare(`warmup-${i}`, '');
        await sn.remove(`warmup-${i}`);
      }
      const N = 500;
      let parent = '';
      let first = 0;
      for (let i = 1; i <= N; i++) {
        const key = `layer-${i}-active`;
        const mounts = await sn.prepare(key, parent);
        if (i === 1) first = idOf(root, mounts[0]!.source);
        await writeLayer(mounts, `file-${i}`, `layer ${i}\n`);
        await sn.commit(`layer-${i}`, key);
        parent = `layer-${i}`;
      }
      expect(first).toBeGreaterThan(1000);

      const top = await sn.prepare('top', parent);
      expect(await sn.mounts('top')).toEqual(top);
      const m = top[0]!;
      const lowers = option(m, 'lowerdir')!.split(':');
      expect(lowers).toHaveLength(N);
      // Too long as plain paths even compacted, so the layers go through the short links, nearest first.
      expect(lowers.every((l) => l.startsWith(`${root}/l/`))).toBe(true);
      const ids = lowers.map((l) => parseInt(l.slice(`${root}/l/`.length), 36));
      expect(ids[N - 1]).toBe(first);
      for (const [i, id] of ids.entries()) {
        expect(await readlink(lowers[i]!)).toBe(`../snapshots/${id}/fs`);
        if (i > 0) expect(id).toBeLessThan(ids[i - 1]!);
      }
      expect(overlayOptionsFit(m.options)).toBe(true);
      const plain = m.options.map((o) =>
        o.startsWith('lowerdir=') ? `lowerdir=${ids.map((id) => `${root}/snapshots/${id}/fs`).join(':')}` : o,
      );
      expect(overlayOptionsFit(plain)).toBe(false);

      const expected = Array.from({ length: N }, (_, i) => `file-${i + 1}`).sort();
      const check = async (dir: string) => {
        expect((await readdir(dir)).sort()).toEqual(expected);
        expect(await readFile(join(dir, 'file-1'), 'utf8')).toBe('layer 1\n');
        expect(await readFile(join(dir, `file-${N}`), 'utf8')).toBe(`layer ${N}\n`);
      };

      // Through src/mount.
      const dir = await mountOn(top);
      try {
        await check(dir);
        await writeFile(join(dir, 'file-1'), 'overwritten on top\n');
        await rm(join(dir, `file-${N}`));
      } finally {
        await unmountFrom(dir);
      }
      expect(await readFile(join(option(m, 'upperdir')!, 'file-1'), 'utf8')).toBe('overwritten on top\n');

      // As containerd 1.6's mount package would: its compaction, mount(2) run from the common directory.
      const cd = containerdCompaction(m.options);
      expect(cd.cwd).toBe(join(root, 'l'));
      expect(cd.options.join(',').length).toBeLessThan(4096);
      const target = await mkdtemp(join(tmp.path, 'mnt-'));
      targets.push(target);
      await run('mount', ['-t', 'overlay', '-o', cd.options.join(','), 'overlay', target], { cwd: cd.cwd });
      try {
        expect(await readFile(join(target, 'file-1'), 'utf8')).toBe('overwritten on top\n');
        expect(existsSync(join(target, `file-${N}`))).toBe(false);
        expect((await readdir(target)).length).toBe(N - 1);
      } finally {
        await unmountFrom(target);
      }

      // A read-only view of all 500 layers.
      const view = await sn.view('top-view', parent);
      expect(option(view[0]!, 'lowerdir')!.split(':')).toHaveLength(N);
      await withTempMount(view, check);
    },
  );
});

