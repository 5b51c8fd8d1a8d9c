import { PluginType, register } from '../plugin/index.js';
import { openLocalContentStore } from './local.js';

register({
  type: PluginType.Content,
  id: 'content',
  init: (ic) => {
    // As containerd's content plugin: clients that share the blobs (Spegel) read the root from introspection.
    ic.meta.exports.root = ic.root;
    return openLocalContentStore(ic.root);
  },
});
