/**
 * `stratad serve-snapshotter`: one snapshotter backend served alone on a unix socket, as a containerd proxy
 * plugin. No namespaces of its own (containerd namespaces keys before they arrive) and no metadata database
 * beyond the backend's own bookkeeping under --root.
 */
import type * as grpc from '@grpc/grpc-js';
import { PluginSet, PluginType, pluginUri, registered } from '../plugin/index.js';
import { pluginConfig, type Config } from '../config/index.js';
import { failedPrecondition, invalidArgument } from '../core/errdefs.js';
import type { Logger } from '../log/index.js';
import type { Snapshotter } from '../snapshots/types.js';
import { snapshotsService } from '../api/services/snapshots.js';
import { healthService, versionService } from '../api/services/version.js';
import { STRATA_REVISION, STRATA_VERSION } from '../version.js';
import { prepareSocketPath } from './socket.js';
import { serveGrpc } from './daemon.js';
import './builtins.js';

export interface ServeSnapshotterOptions {
  snapshotter: string;
  root: string;
  address: string;
  config: Config;
  log: Logger;
}

export interface ServedSnapshotter {
  backend: Snapshotter;
  stop(): Promise<void>;
}

export async function serveSnapshotter(o: ServeSnapshotterOptions): Promise<ServedSnapshotter> {
  const reg = registered().find((r) => r.type === PluginType.Snapshot && r.id === o.snapshotter);
  if (!reg) {
    const known = registered().filter((r) => r.type === PluginType.Snapshot).map((r) => r.id);
    throw invalidArgument(`unknown snapshotter ${JSON.stringify(o.snapshotter)} (built in: ${known.join(', ')})`);
  }
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
    throw failedPrecondition(`snapshotter ${pluginUri(reg.type, reg.id)} cannot run here: ${why}`);
  }
  const backend = loaded.instance as Snapshotter;
  const server = await serveGrpc({ ...o.config.grpc, address: o.address }, [
    snapshotsService(() => backend, o.log),
    healthService(o.log),
    versionService(STRATA_VERSION, STRATA_REVISION, o.log),
  ]);
  o.log.info('serving', { address: o.address, snapshotter: o.snapshotter, root: o.root });
  let stopping: Promise<void> | undefined;
  return {
    backend,
    stop: () =>
      (stopping ??= (async () => {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, 10_000);
          server.tryShutdown(() => {
            clearTimeout(timer);
            resolve();
          });
        });
        await plugins.close(o.log);
        o.log.info('stopped');
      })()),
  };
}
