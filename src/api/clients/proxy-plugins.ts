/**
 * Proxy plugins from the config: `[proxy_plugins.NAME] type = "snapshot" address = "/run/x.sock"` becomes a
 * snapshotter named NAME, served by the daemon like its own. As containerd 2.x's, the section may also give the
 * plugin's `platform`, `exports` (reported with `address`, which is always the configured one) and
 * `capabilities`: the other process cannot be asked what it implements, so the config says it, introspection
 * reports it, and the daemon relies on it as on a built-in backend's (the snapshotter's `capabilities`).
 */
import { PluginType, type PluginRegistration } from '../../plugin/index.js';
import type { ProxyPluginConfig } from '../../config/index.js';
import { parsePlatform } from '../../images/platforms.js';
import { ProxySnapshotter } from './snapshotter.js';

/** The proxy types Strata serves: containerd's short name and the plugin type it stands for. */
const SNAPSHOT_TYPES = new Set(['snapshot', PluginType.Snapshot]);

export function proxyRegistrations(proxies: Record<string, ProxyPluginConfig>): PluginRegistration<unknown, Record<string, unknown>>[] {
  return Object.entries(proxies).map(([name, p]) => ({
    type: PluginType.Snapshot,
    id: name,
    init: (ic) => {
      if (!SNAPSHOT_TYPES.has(p.type)) throw new Error(`proxy plugin ${name}: type ${JSON.stringify(p.type)} is not supported (only "snapshot")`);
      if (p.platform) {
        let platform;
        try {
          platform = parsePlatform(p.platform);
        } catch (err) {
          throw new Error(`proxy plugin ${name}: platform: ${err instanceof Error ? err.message : String(err)}`);
        }
        ic.meta.platforms.splice(0, ic.meta.platforms.length, platform);
      }
      Object.assign(ic.meta.exports, p.exports ?? {}, { address: p.address });
      const capabilities = [...new Set(p.capabilities ?? [])];
      ic.meta.capabilities.push(...capabilities);
      const sn = new ProxySnapshotter(p.address, name, undefined, capabilities);
      ic.onClose(() => sn.close());
      return sn;
    },
  }));
}
