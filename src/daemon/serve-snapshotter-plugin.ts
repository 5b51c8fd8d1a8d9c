/**
 * `stratad serve-snapshotter --snapshotter ID`: one built-in snapshotter backend served alone on a unix
 * socket, as a containerd proxy plugin. It loads the backend's plugin (its config from the config file, its
 * directory at --root) and hands the instance to serveSnapshotter() (serve-snapshotter.ts), the same code
 * another package serves its own snapshotter with. No metadata database beyond the backend's own bookkeeping
 * under --root.
 */
import { PluginSet, PluginType, pluginUri, registered } from '../plugin/index.js';
import { pluginConfig, type Config } from '../config/index.js';
import { failedPrecondition, invalidArgument } from '../core/errdefs.js';
import type { Logger } from '../log/index.js';
import type { Snapshotter } from '../snapshots/types.js';
import { serveSnapshotter, type ServedSnapshotter } from './serve-snapshotter.js';
import { prepareSocketPath } from './socket.js';
import './builtins.js';

export interface ServePluginSnapshotterOptions {
  /** The plugin id of a built-in snapshotter (overlayfs, native, btrfs...). */
  snapshotter: string;
  root: string;
  address: string;
  config: Config;
  log: Logger;
}

export async function servePluginSnapshotter(o: ServePluginSnapshotterOptions): Promise<ServedSnapshotter> {
  const reg = registered().find((r) => r.type === PluginType.Snapshot && r.id === o.snapshotter);
  if (!reg) {
    const known = registered().filter((r) => r.type === PluginType.Snapshot).map((r) => r.id);
    throw invalidArgument(`unknown snapshotter ${JSON.stringify(o.snapshotter)} (built in: ${known.join(', ')})`);
  }
  // Refuse a live socket before the backend touches its root (another server may be using both).
  await prepareSocketPath(o.address);
  const plugins = await PluginSet.load(
    {
      root: o.root,
      state: o.root,
      address: o.address,
      log: o.log,
      configFor: (uri, defaults) => pluginConfig(o.config, uri, defaults),
      pluginRoot: () => o.root,
    },
    [reg],
  );
  const loaded = plugins.loaded[0]!;
  if (loaded.status.state !== 'ok') {
    const why = loaded.status.state === 'skipped' ? loaded.status.reason : loaded.status.error.message;
    await plugins.close(o.log);
    throw failedPrecondition(`snapshotter ${pluginUri(reg.type, reg.id)} cannot run here: ${why}`);
  }
  const backend = loaded.instance as Snapshotter;
  try {
    const served = await serveSnapshotter(backend, {
      address: o.address,
      log: o.log,
      grpc: o.config.grpc,
      close: () => plugins.close(o.log),
    });
    o.log.info('serving snapshotter', { snapshotter: o.snapshotter, root: o.root });
    return served;
  } catch (err) {
    await plugins.close(o.log);
    throw err;
  }
}
