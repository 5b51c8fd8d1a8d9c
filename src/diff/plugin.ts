/**
 * The walking differ as a plugin (io.containerd.differ.v1.walking). It needs no store: content is handed to
 * each call (namespaced by the caller), so it requires nothing. Its platform is the host's (filled in by the
 * registry, as containerd's walking plugin reports platforms.DefaultSpec()).
 */
import { PluginType, register } from '../plugin/index.js';
import { WalkingDiffer } from './walking.js';

register<WalkingDiffer, Record<string, unknown>>({
  type: PluginType.Differ,
  id: 'walking',
  init: (ic) => new WalkingDiffer({ log: ic.log }),
});
