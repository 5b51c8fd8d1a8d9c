/**
 * Proxy plugins from the config: `[proxy_plugins.NAME] type = "snapshot" address = "/run/x.sock"` becomes a
 * snapshotter named NAME, served by the daemon like its own.
 */
import { PluginType, type PluginRegistration } from '../../plugin/index.js';
import type { ProxyPluginConfig } from '../../config/index.js';
import { ProxySnapshotter } from './snapshotter.js';

export function proxyRegistrations(proxies: Record<string, ProxyPluginConfig>): PluginRegistration<unknown, Record<string, unknown>>[] {
  return Object.entries(proxies).map(([name, p]) => ({
    type: PluginType.Snapshot,
    id: name,
    init: (ic) => {
      if (p.type !== 'snapshot') throw new Error(`proxy plugin ${name}: type ${JSON.stringify(p.type)} is not supported (only "snapshot")`);
      const sn = new ProxySnapshotter(p.address, name);
      ic.meta.exports.address = p.address;
      ic.onClose(() => sn.close());
      return sn;
    },
  }));
}
