/**
 * The devmapper snapshotter's plugin (io.containerd.snapshotter.v1.devmapper), configured with containerd's
 * keys. Like containerd's, it needs a configured thin pool (`pool_name`; `root_path` defaults to the plugin's
 * root) and device-mapper in the kernel; without them it is skipped with the reason.
 */
import { execFile } from 'node:child_process';
import { access, readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { PluginType, register, SkipPlugin } from '../../plugin/index.js';
import { openDevmapperSnapshotter, type DevmapperSnapshotter, type FsType } from './index.js';

const run = promisify(execFile);

export interface DevmapperConfig {
  /** The thin-pool device, without /dev/mapper/. */
  pool_name: string;
  /** Where the metadata lives; default the plugin's root. */
  root_path: string;
  /** Size of the base device every snapshot starts from, as containerd writes it ("10GB": binary units). */
  base_image_size: string;
  /** Remove drops the record and leaves the device to Cleanup (containerd's async_remove). */
  async_remove: boolean;
  /** blkdiscard a device before deleting it. */
  discard_blocks: boolean;
  /** The filesystem of new devices: ext4 (default) or xfs. */
  fs_type: string;
  /** mkfs options (ext4: its -E extended options; default containerd's). */
  fs_options: string;
}

export const defaultDevmapperConfig = (): DevmapperConfig => ({
  pool_name: '',
  root_path: '',
  base_image_size: '10GB',
  async_remove: false,
  discard_blocks: false,
  fs_type: 'ext4',
  fs_options: '',
});

/** Parses a size the way containerd's devmapper config does (docker's RAMInBytes: 1KB = 1024). */
export function parseSize(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp])?i?b?\s*$/i.exec(s);
  if (!m) throw new Error(`invalid size ${JSON.stringify(s)}`);
  const exp = m[2] ? 'kmgtp'.indexOf(m[2].toLowerCase()) + 1 : 0;
  return Math.floor(Number(m[1]) * 1024 ** exp);
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** Where the kernel shows device-mapper; parameters for tests. */
export interface DmPaths {
  sysModule: string;
  procMisc: string;
}

/** Why device-mapper cannot be used here, or undefined when the kernel has it. */
export async function deviceMapperMissing(paths: DmPaths = { sysModule: '/sys/module/dm_mod', procMisc: '/proc/misc' }): Promise<string | undefined> {
  if (await exists(paths.sysModule)) return undefined;
  const misc = await readFile(paths.procMisc, 'utf8').catch(() => '');
  if (misc.split('\n').some((l) => l.trim().split(/\s+/)[1] === 'device-mapper')) return undefined;
  return `device-mapper is not available in this kernel (no ${paths.sysModule}, no device-mapper in ${paths.procMisc})`;
}

/** The checks of init(), in order; throws SkipPlugin with the first reason that applies. */
export async function checkDevmapper(config: DevmapperConfig, dm?: DmPaths): Promise<void> {
  if (typeof config.pool_name !== 'string' || config.pool_name === '') throw new SkipPlugin('devmapper not configured (no pool_name)');
  parseSize(String(config.base_image_size));
  const fsType = config.fs_type || 'ext4';
  if (fsType !== 'ext4' && fsType !== 'xfs') throw new Error(`devmapper: unsupported filesystem type ${JSON.stringify(fsType)}`);
  const missing = await deviceMapperMissing(dm);
  if (missing) throw new SkipPlugin(missing);
  try {
    await run('dmsetup', ['status', config.pool_name]);
  } catch (err) {
    const e = err as { code?: unknown; stderr?: string; message: string };
    if (e.code === 'ENOENT') throw new SkipPlugin('dmsetup not found (the devmapper snapshotter needs it)');
    const detail = (e.stderr || e.message).trim().split('\n').filter(Boolean).join('; ');
    throw new SkipPlugin(`devmapper pool ${config.pool_name} not found: ${detail}`);
  }
}

register<DevmapperSnapshotter, DevmapperConfig>({
  type: PluginType.Snapshot,
  id: 'devmapper',
  config: defaultDevmapperConfig,
  init: async (ic) => {
    const config = { ...ic.config, root_path: ic.config.root_path || ic.root };
    ic.meta.exports.root = config.root_path;
    await checkDevmapper(config);
    const sn = await openDevmapperSnapshotter({
      rootPath: config.root_path,
      poolName: config.pool_name,
      baseImageSize: parseSize(String(config.base_image_size)),
      asyncRemove: config.async_remove === true,
      discardBlocks: config.discard_blocks === true,
      fsType: (config.fs_type || 'ext4') as FsType,
      fsOptions: config.fs_options || '',
      log: ic.log,
    });
    ic.onClose(() => sn.close());
    return sn;
  },
});
