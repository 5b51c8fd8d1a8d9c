/**
 * The EROFS snapshotter on real mounts, beyond containerd's suite (suite-erofs.test.ts): the mount types it returns
 * and that they mount, the EROFS differ applying a layer (whiteouts, opaque directories) that the commit turns into
 * an image, usage of images and upper dirs, what a crash at each step of a commit leaves and what cleanup()
 * deletes, a failed image build, and the plugin's skip reasons.
 */
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, stat, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErofsDiffer, erofsLayerDir } from '../../src/diff/erofs.js';
import { WalkingDiffer } from '../../src/diff/walking.js';
import { mountAll, unmount, withTempMount } from '../../src/mount/index.js';
import { EROFS_SUPER_MAGIC, erofsUnsupportedReason } from '../../src/snapshots/erofs/erofs.js';
import { openErofsSnapshotter, type ErofsSnapshotter } from '../../src/snapshots/erofs/index.js';
import { openOverlaySnapshotter } from '../../src/snapshots/overlay/index.js';
import { parseOverlayOptions } from '../../src/mount/index.js';
import { contentStore, putBlob } from '../diff/helpers.js';
import { makeTar } from '../helpers/tar.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { silentLogger } from '../../src/log/index.js';
import { PluginSet, PluginType, registered } from '../../src/plugin/index.js';
import '../../src/snapshots/erofs/plugin.js';

let tmp: TempDir;
let root: string;
let sn: ErofsSnapshotter | undefined;

beforeEach(async () => {
  tmp = await tempDir('strata-erofs-');
  root = join(tmp.path, 'root');
  sn = await openErofsSnapshotter(root);
});

afterEach(async () => {
  await sn?.close().catch(() => undefined);
  sn = undefined;
  // Nothing of this test stays mounted.
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  expect(info.split('\n').filter((l) => l.includes(tmp.path))).toEqual([]);
  await tmp.cleanup();
});

const isErofs = async (dir: string) => (await statfs(dir)).type === EROFS_SUPER_MAGIC;

/** Writes files into an active snapshot through its mounts. */
async function write(mounts: Parameters<typeof mountAll>[0], files: Record<string, string>): Promise<void> {
  await withTempMount(mounts, async (dir) => {
    for (const [name, body] of Object.entries(files)) {
      await mkdir(join(dir, name, '..'), { recursive: true });
      await writeFile(join(dir, name), body);
    }
  });
}

describe('the erofs snapshotter', () => {
  it('returns a bind for a parentless snapshot, erofs ro,loop for a view of one layer, and an overlay over mounted images otherwise', async () => {
    const s = sn!;
    const m0 = await s.prepare('a', '');
    expect(m0).toEqual([{ type: 'bind', source: join(root, 'snapshots', '1', 'fs'), options: ['rw', 'rbind'] }]);
    await write(m0, { 'f': 'base', 'd/g': 'deep' });
    await s.commit('base', 'a');
    const image = join(root, 'snapshots', '1', 'layer.erofs');
    expect((await readFile(image)).readUInt32LE(1024)).toBe(EROFS_SUPER_MAGIC);
    // The upper dir went with the commit: the committed snapshot is its image.
    expect((await readdir(join(root, 'snapshots', '1'))).sort()).toEqual(['.erofslayer', 'fs', 'layer.erofs']);

    const view = await s.view('v', 'base');
    expect(view).toEqual([{ type: 'erofs', source: image, options: ['ro', 'loop'] }]);
    await withTempMount(view, async (dir) => {
      expect(await readFile(join(dir, 'd', 'g'), 'utf8')).toBe('deep');
      expect(await isErofs(dir)).toBe(true);
      await expect(writeFile(join(dir, 'x'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    });

    const active = await s.prepare('b', 'base');
    expect(active).toHaveLength(1);
    expect(active[0]!.type).toBe('overlay');
    const o = parseOverlayOptions(active[0]!.options);
    expect(o.lowerdirs).toEqual([join(root, 'snapshots', '1', 'fs')]);
    expect(o.upperdir).toBe(join(root, 'snapshots', '3', 'fs'));
    // The lower is the image, mounted by the snapshotter read-only.
    expect(await isErofs(o.lowerdirs[0]!)).toBe(true);
    await write(active, { f: 'changed' });
    await withTempMount(active, async (dir) => {
      expect(await readFile(join(dir, 'f'), 'utf8')).toBe('changed');
      expect(await readFile(join(dir, 'd', 'g'), 'utf8')).toBe('deep');
    });
    await s.close();
    // close() unmounts what it mounted.
    expect(await isErofs(o.lowerdirs[0]!)).toBe(false);
    // A reopened snapshotter mounts the images again when a mount list names them.
    sn = await openErofsSnapshotter(root);
    await withTempMount(await sn.mounts('b'), async (dir) => expect(await readFile(join(dir, 'd', 'g'), 'utf8')).toBe('deep'));
  });

  it('the EROFS differ applies a layer into the upper dir, and a file deleted by it stays deleted in the image the commit builds', async () => {
    const s = sn!;
    const { content, md } = await contentStore(join(tmp.path, 'cs'));
    try {
      const differ = new ErofsDiffer(new WalkingDiffer());
      const tar1 = await makeTar([
        { name: 'keep', body: 'k' },
        { name: 'gone', body: 'g' },
        { name: 'dir/', type: 'directory' },
        { name: 'dir/old', body: 'o' },
      ]);
      const tar2 = await makeTar([{ name: '.wh.gone' }, { name: 'dir/', type: 'directory' }, { name: 'dir/.wh..wh..opq' }, { name: 'dir/new', body: 'n' }]);
      const put = async (t: Buffer) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: await putBlob(content, t), size: t.length });

      const m1 = await s.prepare('l1-a', '');
      expect(erofsLayerDir(m1)).toBe(join(root, 'snapshots', '1'));
      const d1 = await differ.apply(await put(tar1), m1, content);
      expect(d1.size).toBe(tar1.length);
      await s.commit('l1', 'l1-a');
      const m2 = await s.prepare('l2-a', 'l1');
      await differ.apply(await put(tar2), m2, content);
      await s.commit('l2', 'l2-a');
      await withTempMount(await s.view('top', 'l2'), async (dir) => {
        expect((await readdir(dir)).sort()).toEqual(['dir', 'keep']);
        expect(await readdir(join(dir, 'dir'))).toEqual(['new']);
      });

      // Anything else than an EROFS snapshotter's active snapshot is not this differ's: NOT_IMPLEMENTED.
      const ov = await openOverlaySnapshotter(join(tmp.path, 'ov'));
      try {
        const om = await ov.prepare('x', '');
        await expect(differ.apply(await put(tar1), om, content)).rejects.toMatchObject({ kind: 'not implemented' });
        await expect(differ.apply(await put(tar1), await s.view('v2', 'l1'), content)).rejects.toMatchObject({ kind: 'not implemented' });
      } finally {
        await ov.close();
      }
    } finally {
      md.close();
    }
  });

  it('usage: an active snapshot counts its upper dir, a committed one its image file, a view nothing', async () => {
    const s = sn!;
    const m = await s.prepare('a', '');
    await write(m, { big: 'x'.repeat(1 << 20), small: 'y' });
    const active = await s.usage('a');
    expect(active.size).toBeGreaterThanOrEqual(1 << 20);
    expect(active.inodes).toBeGreaterThanOrEqual(3);
    await s.commit('c', 'a');
    const st = await stat(join(root, 'snapshots', '1', 'layer.erofs'));
    expect(await s.usage('c')).toEqual({ size: st.blocks * 512, inodes: 1 });
    await s.view('v', 'c');
    expect(await s.usage('v')).toEqual({ size: 0, inodes: 0 });
  });

  it('a crash before the commit record leaves the active snapshot whole and a temporary image that cleanup deletes', async () => {
    const s = sn!;
    await write(await s.prepare('a', ''), { f: 'one' });
    const dir = join(root, 'snapshots', '1');
    // What a commit leaves when the process dies after mkfs.erofs and before the transaction.
    await writeFile(join(dir, 'layer.erofs.new-dead'), 'half an image');
    await mkdir(join(dir, 'fs.new-dead'));
    await s.close();
    sn = await openErofsSnapshotter(root);
    expect((await sn.stat('a')).kind).toBe('active');
    await sn.cleanup();
    expect((await readdir(dir)).sort()).toEqual(['.erofslayer', 'fs', 'work']);
    expect(await readFile(join(dir, 'fs', 'f'), 'utf8')).toBe('one');
    await sn.commit('c', 'a');
    expect(existsSync(join(dir, 'layer.erofs'))).toBe(true);
  });

  it('a crash after the commit record leaves the image and an old upper dir that cleanup deletes; unrecorded images are unmounted and deleted', async () => {
    const s = sn!;
    await write(await s.prepare('a', ''), { f: 'one' });
    await s.commit('c', 'a');
    await s.prepare('child', 'c'); // mounts c's image
    const dir = join(root, 'snapshots', '1');
    // An upper dir the background deletion never reached.
    await mkdir(join(dir, 'fs.old-dead', 'sub'), { recursive: true });
    // A snapshot directory with no record, its image mounted (a removal interrupted between unmount and delete).
    const stray = join(root, 'snapshots', '99');
    await mkdir(join(stray, 'fs'), { recursive: true });
    await writeFile(join(stray, 'fs', 'x'), 'x');
    const { execFileSync } = await import('node:child_process');
    execFileSync('mkfs.erofs', ['--quiet', join(stray, 'layer.erofs'), join(stray, 'fs')]);
    await mountAll([{ type: 'erofs', source: join(stray, 'layer.erofs'), options: ['ro', 'loop'] }], join(stray, 'fs'));
    try {
      await s.cleanup();
      expect((await readdir(dir)).sort()).toEqual(['.erofslayer', 'fs', 'layer.erofs']);
      expect(existsSync(stray)).toBe(false);
      expect((await readdir(join(root, 'snapshots'))).sort()).toEqual(['1', '2']);
      expect(await readdir(join(root, 'trash'))).toEqual([]);
    } finally {
      await unmount(join(stray, 'fs')).catch(() => undefined);
    }
  });

  it('a failed image build leaves the snapshot active, its upper dir whole, and no image', async () => {
    await sn!.close();
    sn = await openErofsSnapshotter(root, { mkfs: '/bin/false' });
    await write(await sn.prepare('a', ''), { f: 'one' });
    await expect(sn.commit('c', 'a')).rejects.toMatchObject({ kind: 'unknown' });
    expect((await sn.stat('a')).kind).toBe('active');
    const dir = join(root, 'snapshots', '1');
    expect((await readdir(dir)).sort()).toEqual(['.erofslayer', 'fs', 'work']);
    expect(await readFile(join(dir, 'fs', 'f'), 'utf8')).toBe('one');
    await expect(sn.stat('c')).rejects.toMatchObject({ kind: 'not found' });
  });

  it('remove of a committed snapshot unmounts its image and deletes it', async () => {
    const s = sn!;
    await s.prepare('a', '');
    await s.commit('c', 'a');
    await s.prepare('child', 'c');
    const fs = join(root, 'snapshots', '1', 'fs');
    expect(await isErofs(fs)).toBe(true);
    await s.remove('child');
    await s.remove('c');
    expect(existsSync(join(root, 'snapshots', '1'))).toBe(false);
    await s.cleanup();
    expect(await readdir(join(root, 'snapshots'))).toEqual([]);
    expect(await readdir(join(root, 'trash'))).toEqual([]);
  });
});

describe('the erofs plugin', () => {
  it('loads on this host with its data under root_path, reported as its exported root', async () => {
    const reg = registered().find((x) => x.type === PluginType.Snapshot && x.id === 'erofs')!;
    expect(reg.config?.()).toEqual({ root_path: '', ovl_mount_options: [] });
    const rootPath = join(tmp.path, 'elsewhere');
    const set = await PluginSet.load(
      {
        root: join(tmp.path, 'proot'),
        state: join(tmp.path, 'pstate'),
        address: join(tmp.path, 'pstate', 's.sock'),
        log: silentLogger,
        configFor: (_uri, defaults) => ({ ...defaults, root_path: rootPath }),
      },
      [reg],
    );
    try {
      const p = set.loaded[0]!;
      expect(p.status).toEqual({ state: 'ok' });
      expect(p.meta.exports.root).toBe(rootPath);
      expect(existsSync(join(rootPath, 'metadata.db'))).toBe(true);
    } finally {
      await set.close(silentLogger);
    }
  });
});

describe('the erofs plugin host checks', () => {
  it('name what is missing: mkfs.erofs, erofs in the kernel, loop devices; none on this host', async () => {
    const fake = join(tmp.path, 'fake');
    await mkdir(fake);
    const fsWith = join(fake, 'filesystems-with');
    const fsWithout = join(fake, 'filesystems-without');
    await writeFile(fsWith, 'nodev\tproc\n\text4\n\terofs\n');
    await writeFile(fsWithout, 'nodev\tproc\n\text4\n');
    const mkfs = join(fake, 'mkfs.erofs');
    await writeFile(mkfs, '#!/bin/sh\n');
    await chmod(mkfs, 0o755);
    expect(await erofsUnsupportedReason({ mkfs: join(fake, 'none'), filesystems: fsWith })).toBe('mkfs.erofs not found (install erofs-utils)');
    expect(await erofsUnsupportedReason({ mkfs, filesystems: fsWithout })).toBe(
      'EROFS unsupported by the kernel: erofs is not in /proc/filesystems (modprobe erofs)',
    );
    expect(await erofsUnsupportedReason({ mkfs, filesystems: fsWith, loopControl: join(fake, 'loop-control') })).toBe(
      'loop devices unsupported: /dev/loop-control is missing (modprobe loop)',
    );
    expect(await erofsUnsupportedReason({ mkfs, filesystems: fsWith, loopControl: '/dev/loop-control' })).toBeUndefined();
    expect(await erofsUnsupportedReason()).toBeUndefined();
  });
});
