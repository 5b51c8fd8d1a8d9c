import { PluginType, register } from '../plugin/index.js';
import { openLocalContentStore } from './local.js';

register({
  type: PluginType.Content,
  id: 'content',
  init: (ic) => openLocalContentStore(ic.root),
});
