/**
 * The daemon: loads the plugins in dependency order, serves every gRPC plugin on the configured unix socket,
 * and stops gracefully (in-flight unary calls finish, streams are cut after a grace period, plugins close).
 */
import * as grpc from '@grpc/grpc-js';
import { mkdirSync } from 'node:fs';
import { PluginSet, PluginType, pluginUri, registered } from '../plugin/index.js';
import { pluginConfig, type Config } from '../config/index.js';
import type { Logger } from '../log/index.js';
import type { GrpcService } from '../api/call.js';
import { prepareSocketPath, secureSocket } from './socket.js';
import { proxyRegistrations } from '../api/clients/proxy-plugins.js';
import './builtins.js';
import { GrpcServer } from '../api/server.js';

/** How long stop() lets in-flight calls finish before cutting them. */
const SHUTDOWN_GRACE_MS = 10_000;

export class Daemon {
  private server: GrpcServer | undefined;
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly config: Config,
    readonly plugins: PluginSet,
    private readonly log: Logger,
  ) {}

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
    await d.serve();
    return d;
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
      await this.plugins.close(this.log);
      this.log.info('stopped');
    })();
    return this.stopping;
  }
}

/** Serves services on a unix socket (the socket path must have been prepared with prepareSocketPath). */
export async function serveGrpc(
  cfg: Pick<Config['grpc'], 'address' | 'uid' | 'gid' | 'max_recv_message_size' | 'max_send_message_size'>,
  services: GrpcService[],
): Promise<GrpcServer> {
  const server = new GrpcServer({
    maxReceiveMessageLength: cfg.max_recv_message_size,
    maxSendMessageLength: cfg.max_send_message_size,
  });
  for (const svc of services) server.addService(svc.definition as never, svc.implementation as never);
  await server.listen(cfg.address);
  secureSocket(cfg.address, cfg.uid, cfg.gid);
  return server;
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
