/**
 * The daemon: loads the plugins in dependency order, serves every gRPC plugin on the configured unix socket,
 * and stops gracefully (in-flight unary calls finish, streams are cut after a grace period, plugins close).
 */
import * as grpc from '@grpc/grpc-js';
import { mkdirSync } from 'node:fs';
import { PluginSet, PluginType, pluginUri, registered } from '../plugin/index.js';
import { pluginConfig, type Config } from '../config/index.js';
import type { Logger } from '../log/index.js';
import { observeCalls, type GrpcService } from '../api/call.js';
import { prepareSocketPath, secureSocket } from './socket.js';
import { Observability, type Sources } from '../metrics/index.js';
import { parseListenAddress, type ListenAddress } from '../core/address.js';
import type { LocalContentStore } from '../content/local.js';
import type { MetadataStore } from '../metadata/index.js';
import type { Snapshotter } from '../snapshots/types.js';
import type { GCScheduler } from '../gc/types.js';
import type { TaskManager } from '../runtime/tasks.js';
import type { ImageTransfers } from '../images/transfer.js';
import { proxyRegistrations } from '../api/clients/proxy-plugins.js';
import './builtins.js';
import { GrpcServer } from '../api/server.js';
import { serveGrpc } from './serve-grpc.js';

export { serveGrpc };

/** How long stop() lets in-flight calls finish before cutting them. */
const SHUTDOWN_GRACE_MS = 10_000;

export class Daemon {
  private server: GrpcServer | undefined;
  private stopping: Promise<void> | undefined;
  /** Metrics, the debug endpoint and the SIGUSR1 dump. */
  readonly observability: Observability;

  private constructor(
    readonly config: Config,
    readonly plugins: PluginSet,
    private readonly log: Logger,
  ) {
    this.observability = new Observability({ log, metrics: config.metrics, ...(debugAddress(config) ? { debug: debugAddress(config)! } : {}) });
  }

  static async start(config: Config, log: Logger): Promise<Daemon> {
    mkdirSync(config.root, { recursive: true, mode: 0o711 });
    mkdirSync(config.state, { recursive: true, mode: 0o711 });
    await prepareSocketPath(config.grpc.address);

    const plugins = await PluginSet.load({
      root: config.root,
      state: config.state,
      address: config.grpc.address,
      log,
      configFor: (uri, defaults) => pluginConfig(config, uri, defaults),
      disabled: config.disabled_plugins,
      extra: proxyRegistrations(config.proxy_plugins),
    });
    for (const required of config.required_plugins) {
      const p = plugins.loaded.find((l) => pluginUri(l.registration.type, l.registration.id) === required);
      if (!p || p.status.state !== 'ok') {
        await plugins.close(log);
        throw new Error(`required plugin ${required} is not running`);
      }
    }

    const d = new Daemon(config, plugins, log);
    try {
      await d.observe();
    } catch (err) {
      await plugins.close(log);
      throw err;
    }
    try {
      await d.serve();
    } catch (err) {
      await d.stop();
      throw err;
    }
    return d;
  }

  /** Starts the metrics and debug endpoints and watches every call (for the metrics and the SIGUSR1 dump). */
  private async observe(): Promise<void> {
    const debug = debugAddress(this.config);
    if (debug && 'path' in debug) {
      await prepareSocketPath(debug.path);
    }
    const optional = <T>(type: PluginType, id: string): T | undefined => this.plugins.getAll<T>(type).get(id);
    const md = optional<MetadataStore>(PluginType.Metadata, 'sqlite');
    const sources: Sources = { snapshotters: this.plugins.getAll<Snapshotter>(PluginType.Snapshot) };
    const content = optional<LocalContentStore>(PluginType.Content, 'content');
    const gc = optional<GCScheduler>(PluginType.GC, 'scheduler');
    const tasks = optional<TaskManager>(PluginType.Runtime, 'task');
    const pulls = optional<ImageTransfers>(PluginType.Transfer, 'images');
    if (content) sources.content = content;
    if (gc) sources.gc = gc;
    if (tasks) sources.tasks = tasks;
    if (md) sources.namespaces = md.namespaces;
    if (pulls) sources.pulls = pulls;
    for (const svc of this.plugins.getAll<GrpcService>(PluginType.GRPC).values()) {
      this.observability.registerService(svc.definition as unknown as Parameters<Observability['registerService']>[0]);
    }
    await this.observability.start(sources);
    if (debug && 'path' in debug) secureSocket(debug.path, process.getuid?.() ?? 0, process.getgid?.() ?? 0);
    observeCalls(this.observability.calls);
  }

  private async serve(): Promise<void> {
    const services = this.plugins.getAll<GrpcService>(PluginType.GRPC);
    for (const id of services.keys()) this.log.debug('serving', { service: id });
    this.server = await serveGrpc(this.config.grpc, [...services.values()]);
    this.log.info('serving', { address: this.config.grpc.address, plugins: this.plugins.loaded.length });
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const server = this.server;
      // Subscriptions and watches never end on their own: end them first so the server can drain.
      for (const svc of this.plugins.getAll<GrpcService>(PluginType.GRPC).values()) svc.drain?.();
      if (server) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            this.log.warn('shutdown grace period over; cutting open calls');
            server.forceShutdown();
            resolve();
          }, SHUTDOWN_GRACE_MS);
          server.tryShutdown(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
      observeCalls(undefined);
      await this.observability.close();
      await this.plugins.close(this.log);
      this.log.info('stopped');
    })();
    return this.stopping;
  }
}

/** [debug] address parsed; undefined when there is no debug endpoint. Validated by the config already. */
function debugAddress(config: Config): ListenAddress | undefined {
  return config.debug.address ? parseListenAddress('debug.address', config.debug.address, true) : undefined;
}

/** Each registration's default config section, for `stratad config default`. */
export function pluginDefaults(): Map<string, Record<string, unknown>> {
  const out = new Map<string, Record<string, unknown>>();
  for (const r of registered()) {
    const c = r.config?.();
    if (c && Object.keys(c).length > 0) out.set(pluginUri(r.type, r.id), c);
  }
  return out;
}
