/**
 * The snapshotter plugins that only detect their host for now (devmapper, zfs, aufs): each is registered with
 * its id and default config, and on this host its init throws SkipPlugin with the precise reason, which the
 * plugin set records as a skip. The detection functions are also checked against fake /proc and /sys files,
 * so that both outcomes of each check are covered whatever the host has.
 */
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log/index.js';
import { PluginSet, PluginType, pluginUri, registered, SkipPlugin, type LoadOptions } from '../../src/plugin/index.js';
import { lookupMount } from '../../src/snapshots/btrfs/mountinfo.js';
import { checkAufs, listsAufs } from '../../src/snapshots/aufs/plugin.js';
import { checkDevmapper, defaultDevmapperConfig, deviceMapperMissing, parseSize } from '../../src/snapshots/devmapper/plugin.js';
import { checkZfs } from '../../src/snapshots/zfs/plugin.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let tmp: TempDir;
beforeAll(async () => {
  tmp = await tempDir('strata-skipped-');
});
afterAll(async () => {
  await tmp?.cleanup();
});

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

const registration = (id: string) => {
  const r = registered().find((x) => x.type === PluginType.Snapshot && x.id === id);
  if (!r) throw new Error(`snapshotter ${id} is not registered`);
  return r;
};

/** Loads one registration alone; returns its status and the root it was given. */
async function load(id: string, config: Record<string, unknown> = {}) {
  const root = join(tmp.path, 'root');
  const opts: LoadOptions = {
    root,
    state: join(tmp.path, 'state'),
    address: join(tmp.path, 'state', 's.sock'),
    log: silentLogger,
    configFor: (_uri, defaults) => ({ ...defaults, ...config }),
  };
  const set = await PluginSet.load(opts, [registration(id)]);
  return { status: set.loaded[0]!.status, root: join(root, pluginUri(PluginType.Snapshot, id)) };
}

const skipped = (reason: string) => ({ state: 'skipped', reason: `${reason}: skip plugin` });

const hostHasDm = (await deviceMapperMissing()) === undefined;
const hostHasZfsModule = await exists('/sys/module/zfs');

describe('devmapper plugin', () => {
  it('is registered with containerd-like defaults', () => {
    const defaults = {
      pool_name: '',
      root_path: '',
      base_image_size: '10GB',
      async_remove: false,
      discard_blocks: false,
      fs_type: 'ext4',
      fs_options: '',
    };
    expect(registration('devmapper').config?.()).toEqual(defaults);
    expect(defaultDevmapperConfig()).toEqual(defaults);
  });

  it('is skipped when no pool is configured', async () => {
    expect((await load('devmapper')).status).toEqual(skipped('devmapper not configured (no pool_name)'));
  });

  it.skipIf(hostHasDm)('is skipped when configured but the kernel has no device-mapper (this host)', async () => {
    expect((await load('devmapper', { pool_name: 'containerd-pool' })).status).toEqual(
      skipped('device-mapper is not available in this kernel (no /sys/module/dm_mod, no device-mapper in /proc/misc)'),
    );
  });

  it('finds device-mapper in /sys/module or /proc/misc', async () => {
    const d = join(tmp.path, 'dm');
    await mkdir(join(d, 'sys', 'module', 'dm_mod'), { recursive: true });
    await writeFile(join(d, 'misc-without'), '234 btrfs-control\n237 loop-control\n');
    await writeFile(join(d, 'misc-with'), '234 btrfs-control\n236 device-mapper\n');
    const none = { sysModule: join(d, 'sys', 'module', 'nothing'), procMisc: join(d, 'misc-without') };
    expect(await deviceMapperMissing(none)).toBe(
      `device-mapper is not available in this kernel (no ${none.sysModule}, no device-mapper in ${none.procMisc})`,
    );
    expect(await deviceMapperMissing({ ...none, sysModule: join(d, 'sys', 'module', 'dm_mod') })).toBeUndefined();
    expect(await deviceMapperMissing({ ...none, procMisc: join(d, 'misc-with') })).toBeUndefined();
    // Configured, device-mapper present: the next check is the pool itself (none by that name here).
    const err = await checkDevmapper(
      { ...defaultDevmapperConfig(), pool_name: 'strata-test-no-such-pool', root_path: d },
      { ...none, procMisc: join(d, 'misc-with') },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SkipPlugin);
    expect((err as Error).message).toMatch(/^(devmapper pool strata-test-no-such-pool not found: .*|dmsetup not found .*): skip plugin$/s);
  });

  it('parses base_image_size as containerd does', () => {
    expect(parseSize('10GB')).toBe(10 * 1024 ** 3);
    expect(parseSize('32KiB')).toBe(32 * 1024);
    expect(parseSize('512')).toBe(512);
    expect(() => parseSize('ten')).toThrow(/invalid size/);
  });
});

describe('zfs plugin', () => {
  it('is skipped because its root is not on zfs (this host), saying whether the module is loaded', async () => {
    const { status, root } = await load('zfs');
    const fstype = (await lookupMount(tmp.path)).fstype;
    expect(fstype).not.toBe('zfs');
    const why = hostHasZfsModule ? `it is on ${fstype}` : `it is on ${fstype}; the zfs kernel module is not loaded: no /sys/module/zfs`;
    expect(status).toEqual(skipped(`path ${root} must be a zfs filesystem to be used with the zfs snapshotter (${why})`));
    // Skipping created nothing.
    expect(await exists(root)).toBe(false);
  });

  it('reports the module separately from the filesystem', async () => {
    const moduleDir = join(tmp.path, 'zfs-module');
    await mkdir(moduleDir, { recursive: true });
    const err = await checkZfs(tmp.path, moduleDir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SkipPlugin);
    expect((err as Error).message).not.toMatch(/kernel module/);
    expect((err as Error).message).toMatch(/^path .* must be a zfs filesystem to be used with the zfs snapshotter \(it is on [^;]*\): skip plugin$/);
  });
});

describe('aufs plugin', () => {
  it('is skipped because aufs is not in /proc/filesystems (this host)', async ({ skip }) => {
    if (listsAufs(await readFile('/proc/filesystems', 'utf8'))) skip('this kernel has aufs');
    expect((await load('aufs')).status).toEqual(skipped('aufs is not supported: not listed in /proc/filesystems'));
  });

  it('reads /proc/filesystems entries by name', async () => {
    expect(listsAufs('nodev\tsysfs\n\text4\nnodev\toverlay\n')).toBe(false);
    expect(listsAufs('nodev\tsysfs\n\taufs\n')).toBe(true);
    expect(listsAufs('\tnotaufs\n')).toBe(false);
    const fake = join(tmp.path, 'filesystems');
    await writeFile(fake, 'nodev\tsysfs\n\taufs\n');
    await expect(checkAufs(fake)).rejects.toThrow('aufs snapshotter is not implemented yet: skip plugin');
    await writeFile(fake, 'nodev\tsysfs\n\text4\n');
    await expect(checkAufs(fake)).rejects.toThrow(`aufs is not supported: not listed in ${fake}: skip plugin`);
  });
});
