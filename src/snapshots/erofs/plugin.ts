/**
 * The EROFS snapshotter as the built-in plugin "io.containerd.snapshotter.v1.erofs" (containerd 2.1's id and
 * config keys `root_path`, `ovl_mount_options`). Skipped, with the precise reason, where mkfs.erofs is missing, the kernel lacks
 * erofs or loop devices, or overlayfs does not work under the plugin's root.
 */
import { PluginType, register, SkipPlugin } from '../../plugin/index.js';
import { checkOverlaySupport } from '../overlay/check.js';
import type { Snapshotter } from '../types.js';
import { erofsUnsupportedReason } from './erofs.js';
import { openErofsSnapshotter } from './index.js';

export interface ErofsPluginConfig {
  /** Another directory for its data (default: its plugin directory), containerd 2.1's `root_path`. */
  root_path: string;
  /** Extra options for every overlay mount of an active snapshot (containerd 2.1's `ovl_mount_options`). */
  ovl_mount_options: string[];
}

register<Snapshotter, ErofsPluginConfig>({
  type: PluginType.Snapshot,
  id: 'erofs',
  requires: [],
  config: () => ({ root_path: '', ovl_mount_options: [] as string[] }),
  init: async (ic) => {
    const opts: unknown = ic.config.ovl_mount_options ?? [];
    if (!Array.isArray(opts) || !opts.every((o): o is string => typeof o === 'string')) {
      throw new Error(`ovl_mount_options must be a list of strings, got ${JSON.stringify(opts)}`);
    }
    const rootPath: unknown = ic.config.root_path ?? '';
    if (typeof rootPath !== 'string') throw new Error(`root_path must be a string, got ${JSON.stringify(rootPath)}`);
    const root = rootPath || ic.root;
    const reason = await erofsUnsupportedReason();
    if (reason) throw new SkipPlugin(reason);
    try {
      await checkOverlaySupport(root);
    } catch (err) {
      throw new SkipPlugin(`overlayfs not supported on ${root}: ${err instanceof Error ? err.message : String(err)}`);
    }
    const sn = await openErofsSnapshotter(root, { ovlMountOptions: opts, log: ic.log });
    ic.onClose(() => sn.close());
    ic.meta.exports.root = root;
    return sn;
  },
});
