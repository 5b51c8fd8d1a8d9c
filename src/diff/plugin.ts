/**
 * The walking differ as a plugin (io.containerd.differ.v1.walking). It needs no store: content is handed to
 * each call (namespaced by the caller), so it requires nothing. Its platform is the host's (filled in by the
 * registry, as containerd's walking plugin reports platforms.DefaultSpec()). Its config: the layer limits.
 */
import { basename } from 'node:path';
import { unmountLeftovers } from '../mount/index.js';
import { PluginType, register } from '../plugin/index.js';
import { differDefaults, limitsFromConfig, type DifferConfig } from './limits.js';
import { WalkingDiffer } from './walking.js';

register<WalkingDiffer, DifferConfig>({
  type: PluginType.Differ,
  id: 'walking',
  config: differDefaults,
  // Limits on what one layer may expand to (./limits.ts); a bad value fails the plugin with its key named.
  init: async (ic) => {
    const differ = new WalkingDiffer({ log: ic.log, limits: limitsFromConfig(ic.config as unknown as Record<string, unknown>) });
    // Temporary mounts of a process that died between its mount and its unmount (they would stay forever).
    const undone = await unmountLeftovers((dir, error) => ic.log.warn('cannot undo a temporary mount left by a dead process', { dir: basename(dir), error }));
    if (undone > 0) ic.log.info('undid temporary mounts left by dead processes', { count: undone });
    return differ;
  },
});
