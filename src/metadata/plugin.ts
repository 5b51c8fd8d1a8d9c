import { join } from 'node:path';
import { PluginType, register } from '../plugin/index.js';
import type { LocalContentStore } from '../content/local.js';
import type { Exchange } from '../events/exchange.js';
import type { Snapshotter } from '../snapshots/types.js';
import { labelLimitDefaults, labelLimitsFromConfig, setLabelLimits } from '../core/labels.js';
import { MetadataStore } from './index.js';

register({
  type: PluginType.Metadata,
  id: 'sqlite',
  requires: [PluginType.Content, PluginType.Event, PluginType.Snapshot],
  // The label limits of one object (src/core/labels.ts): every labelled record is this plugin's.
  config: () => ({ content_sharing_policy: 'shared', ...labelLimitDefaults() }),
  init: async (ic) => {
    if (ic.config.content_sharing_policy !== 'shared') {
      throw new Error(`content_sharing_policy ${String(ic.config.content_sharing_policy)} is not supported; use "shared"`);
    }
    // Set before any store is open: the one validator reads them (a bad value fails the plugin, key named).
    setLabelLimits(labelLimitsFromConfig(ic.config as unknown as Record<string, unknown>));
    const local = ic.get<LocalContentStore>(PluginType.Content, 'content');
    const exchange = ic.get<Exchange>(PluginType.Event, 'exchange');
    const md = MetadataStore.open(join(ic.root, 'meta.db'), local, exchange);
    ic.onClose(async () => {
      // Backend removals a Remove queued (they run a moment later, in batches) finish before the database and the
      // backends close: a stop right after a collection otherwise left their data for the next start's collection.
      for (const layer of md.snapshotters.values()) await layer.settled().catch(() => undefined);
      md.close();
    });
    // Every snapshotter that loaded (built in or proxied) gets the namespaced layer in front of it.
    for (const [name, sn] of ic.getAll<Snapshotter>(PluginType.Snapshot)) {
      const layer = md.addSnapshotter(name, sn);
      // Commits a crash interrupted between the backend's commit and the record's.
      const finished = await layer.recoverCommits();
      if (finished > 0) ic.log.info('finished snapshot commits a crash interrupted', { snapshotter: name, count: finished });
    }
    return md;
  },
});
