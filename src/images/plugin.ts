import { PluginType, register } from '../plugin/index.js';
import type { MetadataStore } from '../metadata/index.js';
import type { Differ } from '../diff/types.js';
import { ImageTransfers, defaultTransferConfig, type TransferConfig } from './transfer.js';

// Pull, push, import, export and unpack, in the daemon. containerd 1.7 names its equivalent
// io.containerd.transfer.v1.local; this one is "images" because it is the images subsystem's.
register<ImageTransfers, TransferConfig>({
  type: PluginType.Transfer,
  id: 'images',
  requires: [PluginType.Metadata, PluginType.Differ],
  config: defaultTransferConfig,
  init: (ic) =>
    new ImageTransfers(
      ic.get<MetadataStore>(PluginType.Metadata, 'sqlite'),
      ic.get<Differ>(PluginType.Differ, 'walking'),
      ic.config,
      ic.log.child({ plugin: 'transfer' }),
    ),
});
