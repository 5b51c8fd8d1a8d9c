/**
 * The daemon's observability: the Prometheus endpoint on [metrics] address (/v1/metrics, as containerd), the
 * debug endpoint on [debug] address, and the state dump SIGUSR1 writes to the log (containerd's goroutine dump:
 * here every gRPC call in flight and every task).
 *
 * The daemon creates one Observability before serving, installs `calls` as src/api/call.ts's observer (always:
 * the dump needs the calls in flight even when no endpoint is configured) and hands over the plugin instances
 * the store metrics read.
 */
import { createServer, type Server } from 'node:http';
import type { Logger } from '../log/index.js';
import { CONTENT_TYPE, Registry } from './exposition.js';
import { GrpcMetrics, type CallSnapshot, type MethodDefinition } from './grpc.js';
import { ProcessCollector } from './process.js';
import { StoreMetrics, type Sources } from './stores.js';
import { DebugServer } from './debug.js';
import { boundAddress, closeServer, listen } from './listen.js';
import { parseListenAddress, type ListenAddress } from '../core/address.js';

export { GrpcMetrics } from './grpc.js';
export type { Sources } from './stores.js';

/** The path containerd serves its metrics on. */
export const METRICS_PATH = '/v1/metrics';

export interface StateDump {
  calls: CallSnapshot[];
  tasks: { namespace: string; id: string; pid: number; status: string }[];
}

export interface ObservabilityOptions {
  log: Logger;
  /** [metrics]: address "" = no endpoint. */
  metrics: { address: string; grpc_histogram: boolean };
  /** [debug] address, already checked (loopback) and, for a unix socket, its path prepared; undefined = none. */
  debug?: ListenAddress;
}

export class Observability {
  readonly calls: GrpcMetrics;
  private sources: Sources = {};
  private stores: StoreMetrics | undefined;
  private process: ProcessCollector | undefined;
  private metricsServer: Server | undefined;
  private debugServer: DebugServer | undefined;
  private scrape: Promise<Buffer> | undefined;
  private readonly registry: Registry;
  private readonly onUsr1 = () => this.dump();

  constructor(private readonly opts: ObservabilityOptions) {
    this.calls = new GrpcMetrics(opts.metrics.grpc_histogram);
    this.registry = new Registry((collector, err) =>
      opts.log.warn('metrics collector failed', { collector, error: err instanceof Error ? err.message : String(err) }),
    );
  }

  /** Declares a served service's methods (exported at zero before their first call). */
  registerService(definition: Record<string, MethodDefinition>): void {
    this.calls.register(definition);
  }

  /** Starts the endpoints and the SIGUSR1 handler. `sources` are the plugin instances the metrics read. */
  async start(sources: Sources): Promise<void> {
    this.sources = sources;
    process.on('SIGUSR1', this.onUsr1);
    try {
      if (this.opts.metrics.address) await this.startMetrics(parseListenAddress('metrics.address', this.opts.metrics.address, false));
      if (this.opts.debug) {
        this.debugServer = await DebugServer.start(this.opts.debug, this.opts.log.child({ component: 'debug' }), () => this.state());
        this.opts.log.info('debug endpoint serving', { address: 'path' in this.opts.debug ? this.opts.debug.path : `${this.opts.debug.host}:${this.opts.debug.port}` });
      }
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  private async startMetrics(at: ListenAddress): Promise<void> {
    const stores = new StoreMetrics(this.sources);
    this.stores = stores;
    this.process = new ProcessCollector();
    const proc = this.process;
    this.registry
      .add('grpc', (w) => this.calls.write(w))
      .add('process', (w) => proc.write(w))
      .add('content', (w) => stores.writeContent(w))
      .add('snapshots', (w) => stores.writeSnapshots(w))
      .add('gc', (w) => stores.writeGC(w))
      .add('pulls', (w) => stores.writePulls(w))
      .add('tasks', (w) => stores.writeTasks(w));
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (path !== METRICS_PATH) {
        res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { 'Content-Type': 'text/plain' }).end('only GET\n');
        return;
      }
      this.render().then(
        (text) => res.writeHead(200, { 'Content-Type': CONTENT_TYPE }).end(req.method === 'HEAD' ? undefined : text),
        (err) => res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${err instanceof Error ? err.message : String(err)}\n`),
      );
    });
    this.metricsServer = server;
    await listen(server, at);
    this.opts.log.info('metrics serving', { address: boundAddress(server), path: METRICS_PATH });
  }

  /** One scrape's text; scrapes that arrive while one is being computed share it. */
  render(): Promise<Buffer> {
    this.scrape ??= this.registry.render().finally(() => (this.scrape = undefined));
    return this.scrape;
  }

  /** Calls in flight and tasks: what SIGUSR1 logs and GET /debug/state answers. */
  state(): StateDump {
    const tasks: StateDump['tasks'] = [];
    const { tasks: source, namespaces } = this.sources;
    if (source && namespaces) {
      for (const ns of namespaces.list()) {
        for (const t of source.list({ namespace: ns.name })) tasks.push({ namespace: ns.name, id: t.containerId, pid: t.pid, status: t.status });
      }
    }
    return { calls: this.calls.inflightCalls(), tasks };
  }

  /** Writes the state to the log (SIGUSR1): one record, so that it can be read back whole. */
  dump(): void {
    try {
      const s = this.state();
      this.opts.log.info('state dump (SIGUSR1)', { calls: s.calls, tasks: s.tasks });
    } catch (err) {
      this.opts.log.warn('state dump failed', { error: err instanceof Error ? err.message : String(err) });
    }
  }

  async close(): Promise<void> {
    process.off('SIGUSR1', this.onUsr1);
    if (this.metricsServer) await closeServer(this.metricsServer);
    this.metricsServer = undefined;
    await this.debugServer?.close();
    this.debugServer = undefined;
    this.stores?.close();
    this.process?.close();
  }
}
