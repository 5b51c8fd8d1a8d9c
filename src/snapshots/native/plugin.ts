/**
 * The native snapshotter as a plugin (io.containerd.snapshotter.v1.native). Config as containerd's:
 * `root_path` moves its directory away from the plugin's own root.
 */
import { PluginType, register } from '../../plugin/index.js';
import { openNativeSnapshotter } from './index.js';

export interface NativeConfig {
  root_path: string;
}

register<Awaited<ReturnType<typeof openNativeSnapshotter>>, NativeConfig>({
  type: PluginType.Snapshot,
  id: 'native',
  config: () => ({ root_path: '' }),
  init: async (ic) => {
    if (typeof ic.config.root_path !== 'string') throw new Error('native: root_path must be a string');
    const root = ic.config.root_path || ic.root;
    const sn = await openNativeSnapshotter(root, { log: ic.log });
    ic.onClose(() => sn.close());
    return sn;
  },
});
