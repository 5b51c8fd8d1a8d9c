/**
 * The btrfs snapshotter as a plugin (io.containerd.snapshotter.v1.btrfs). Skipped, as in containerd, when
 * its root is not on a btrfs filesystem. Config as containerd's: `root_path` moves its directory away from
 * the plugin's own root (e.g. onto a btrfs mount).
 */
import { PluginType, register } from '../../plugin/index.js';
import { openBtrfsSnapshotter, type BtrfsSnapshotter } from './index.js';

export interface BtrfsConfig {
  root_path: string;
}

register<BtrfsSnapshotter, BtrfsConfig>({
  type: PluginType.Snapshot,
  id: 'btrfs',
  config: () => ({ root_path: '' }),
  init: async (ic) => {
    if (typeof ic.config.root_path !== 'string') throw new Error('btrfs: root_path must be a string');
    const root = ic.config.root_path || ic.root;
    ic.meta.exports.root = root;
    const sn = await openBtrfsSnapshotter(root, { log: ic.log });
    ic.onClose(() => sn.close());
    return sn;
  },
});
