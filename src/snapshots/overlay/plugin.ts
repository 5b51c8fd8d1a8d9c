/**
 * The overlayfs snapshotter as the built-in plugin "io.containerd.snapshotter.v1.overlayfs". A host where
 * overlayfs cannot work under the plugin's root skips the plugin with the reason, as containerd does.
 */
import { PluginType, register, SkipPlugin } from '../../plugin/index.js';
import type { Snapshotter } from '../types.js';
import { checkIdmapSupport, checkOverlaySupport, openOverlaySnapshotter } from './index.js';

export interface OverlayPluginConfig {
  /** Extra options for every overlay mount (e.g. "volatile"). */
  mount_options: string[];
}

register<Snapshotter, OverlayPluginConfig>({
  type: PluginType.Snapshot,
  id: 'overlayfs',
  requires: [],
  config: () => ({ mount_options: [] as string[] }),
  init: async (ic) => {
    const mountOptions: unknown = ic.config.mount_options ?? [];
    if (!Array.isArray(mountOptions) || !mountOptions.every((o): o is string => typeof o === 'string')) {
      throw new Error(`mount_options must be a list of strings, got ${JSON.stringify(mountOptions)}`);
    }
    try {
      await checkOverlaySupport(ic.root);
    } catch (err) {
      throw new SkipPlugin(`overlayfs not supported on ${ic.root}: ${err instanceof Error ? err.message : String(err)}`);
    }
    // Probed once: overlays over idmapped lowers (the `remap-ids` capability).
    const noIdmap = await checkIdmapSupport(ic.root).catch((err: unknown) => (err instanceof Error ? err.message : String(err)));
    if (noIdmap) ic.log.info('overlayfs: no idmapped mounts here, remap-ids not reported', { reason: noIdmap });
    const sn = await openOverlaySnapshotter(ic.root, { mountOptions, log: ic.log, remapIds: noIdmap === undefined });
    ic.onClose(() => sn.close());
    ic.meta.exports.root = ic.root;
    return sn;
  },
});
