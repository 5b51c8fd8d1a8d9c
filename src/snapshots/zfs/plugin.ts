/**
 * The zfs snapshotter's plugin (io.containerd.snapshotter.v1.zfs). As containerd's, it runs only when its root
 * is on a zfs filesystem (the snapshots become datasets under that filesystem's dataset); otherwise it is
 * skipped, saying also whether the zfs kernel module is loaded at all. Config: `root_path` moves its directory
 * away from the plugin's own root (onto a zfs mount), as the btrfs plugin's does.
 */
import { PluginType, register } from '../../plugin/index.js';
import { checkZfsRoot, openZfsSnapshotter, type ZfsSnapshotter } from './index.js';

export interface ZfsConfig {
  root_path: string;
}

/** Throws SkipPlugin with the reason zfs cannot serve root; resolves when it can. */
export async function checkZfs(root: string, sysModule = '/sys/module/zfs'): Promise<void> {
  await checkZfsRoot(root, sysModule);
}

register<ZfsSnapshotter, ZfsConfig>({
  type: PluginType.Snapshot,
  id: 'zfs',
  config: () => ({ root_path: '' }),
  init: async (ic) => {
    if (typeof ic.config.root_path !== 'string') throw new Error('zfs: root_path must be a string');
    const root = ic.config.root_path || ic.root;
    ic.meta.exports.root = root;
    const sn = await openZfsSnapshotter(root, { log: ic.log });
    ic.onClose(() => sn.close());
    return sn;
  },
});
