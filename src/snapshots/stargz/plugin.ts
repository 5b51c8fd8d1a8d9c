/**
 * The stargz lazy-pull snapshotter as the built-in plugin "io.containerd.snapshotter.v1.stargz" (servable alone
 * with `stratad serve-snapshotter --snapshotter stargz`). Skipped with the reason where overlayfs or FUSE cannot
 * work. Its lazyfs process reads the registry with this plugin's settings (docs/lazy-pull.md):
 *
 *   [plugins."io.containerd.snapshotter.v1.stargz"]
 *     mount_options = []             # as overlayfs's
 *     hosts_dir = ""                 # hosts.toml tree (containerd's certs.d layout); "" = none
 *     docker_config = ""             # credentials file; "" = $DOCKER_CONFIG/config.json or ~/.docker/config.json
 *     plain_http = false             # http:// for every registry (loopback registries use http anyway)
 *     prefetch = true                # the prefetch landmark's span first, right after the mount
 *     background_fetch = true        # then the rest of the layer, two chunks at a time
 *     background_fetch_delay_ms = 5000
 *     lazyfs_idle_exit_ms = 60000    # the lazyfs exits after this long with nothing mounted and no snapshotter
 *     fetch_timeout_ms = 60000       # limit of one Range read; then the whole blob is downloaded (else EIO)
 *     lazyfs_start = "open"          # "open": started with the plugin (ready for the first pull); "on-demand"
 */
import { PluginType, register, SkipPlugin } from '../../plugin/index.js';
import type { Snapshotter } from '../types.js';
import { checkIdmapSupport, checkOverlaySupport } from '../overlay/index.js';
import { fuseUnavailableReason } from '../../fuse/index.js';
import { openStargzSnapshotter } from './index.js';

export interface StargzPluginConfig {
  mount_options: string[];
  hosts_dir: string;
  docker_config: string;
  plain_http: boolean;
  prefetch: boolean;
  background_fetch: boolean;
  background_fetch_delay_ms: number;
  lazyfs_idle_exit_ms: number;
  lazyfs_start: 'open' | 'on-demand';
  fetch_timeout_ms: number;
}


register<Snapshotter, StargzPluginConfig>({
  type: PluginType.Snapshot,
  id: 'stargz',
  requires: [],
  config: () => ({
    mount_options: [] as string[],
    hosts_dir: '',
    docker_config: '',
    plain_http: false,
    prefetch: true,
    background_fetch: true,
    background_fetch_delay_ms: 5000,
    lazyfs_idle_exit_ms: 60_000,
    lazyfs_start: 'open' as const,
    fetch_timeout_ms: 60_000,
  }),
  init: async (ic) => {
    const c = ic.config;
    const mountOptions: unknown = c.mount_options ?? [];
    if (!Array.isArray(mountOptions) || !mountOptions.every((o): o is string => typeof o === 'string')) {
      throw new Error(`mount_options must be a list of strings, got ${JSON.stringify(mountOptions)}`);
    }
    for (const k of ['hosts_dir', 'docker_config'] as const) {
      if (c[k] !== undefined && typeof c[k] !== 'string') throw new Error(`${k} must be a string`);
    }
    for (const k of ['plain_http', 'prefetch', 'background_fetch'] as const) {
      if (c[k] !== undefined && typeof c[k] !== 'boolean') throw new Error(`${k} must be true or false`);
    }
    const num = (k: 'background_fetch_delay_ms' | 'lazyfs_idle_exit_ms' | 'fetch_timeout_ms', dflt: number): number => {
      const v: unknown = c[k] ?? dflt;
      const n = typeof v === 'bigint' ? Number(v) : v;
      if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new Error(`${k} must be a whole number of milliseconds`);
      return n;
    };
    const start: unknown = c.lazyfs_start ?? 'open';
    if (start !== 'open' && start !== 'on-demand') throw new Error(`lazyfs_start must be "open" or "on-demand", got ${JSON.stringify(start)}`);
    const noFuse = fuseUnavailableReason();
    if (noFuse) throw new SkipPlugin(`stargz: FUSE cannot serve here: ${noFuse}`);
    try {
      await checkOverlaySupport(ic.root);
    } catch (err) {
      throw new SkipPlugin(`overlayfs not supported on ${ic.root}: ${err instanceof Error ? err.message : String(err)}`);
    }
    const noIdmap = await checkIdmapSupport(ic.root).catch((err: unknown) => (err instanceof Error ? err.message : String(err)));
    const sn = await openStargzSnapshotter(ic.root, {
      mountOptions,
      remapIds: noIdmap === undefined,
      log: ic.log,
      registry: {
        ...(c.hosts_dir ? { hostsDir: c.hosts_dir } : {}),
        ...(c.docker_config ? { dockerConfig: c.docker_config } : {}),
        ...(c.plain_http ? { plainHttp: true } : {}),
      },
      policy: {
        prefetch: c.prefetch ?? true,
        background: c.background_fetch ?? true,
        backgroundDelayMs: num('background_fetch_delay_ms', 5000),
      },
      lazyfs: { idleExitMs: num('lazyfs_idle_exit_ms', 60_000) || 60_000, fetchTimeoutMs: num('fetch_timeout_ms', 60_000) || 60_000 },
      lazyfsStart: start,
    });
    ic.onClose(() => sn.close());
    ic.meta.exports.root = ic.root;
    return sn;
  },
});
