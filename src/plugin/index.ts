/**
 * The plugin registry, modelled on containerd's: each subsystem registers a typed plugin with the plugin
 * types it requires; the daemon initialises them in dependency order and records each one's outcome
 * (ok / skipped with a reason / error), which introspection reports and `ctr plugins ls` shows.
 *
 * A plugin that cannot run on this host throws SkipPlugin(reason): its status carries "<reason>: skip plugin",
 * the wording containerd's clients recognise.
 */
import { join } from 'node:path';
import type { Logger } from '../log/index.js';

export const PluginType = {
  Content: 'io.containerd.content.v1',
  Metadata: 'io.containerd.metadata.v1',
  Snapshot: 'io.containerd.snapshotter.v1',
  Differ: 'io.containerd.differ.v1',
  GC: 'io.containerd.gc.v1',
  GRPC: 'io.containerd.grpc.v1',
  Event: 'io.containerd.event.v1',
  Lease: 'io.containerd.lease.v1',
  Service: 'io.containerd.service.v1',
  Internal: 'io.containerd.internal.v1',
  Runtime: 'io.containerd.runtime.v2',
  Transfer: 'io.containerd.transfer.v1',
} as const;
export type PluginType = (typeof PluginType)[keyof typeof PluginType];

/** Marks a plugin that does not apply to this host. */
export class SkipPlugin extends Error {
  constructor(reason: string) {
    super(`${reason}: skip plugin`);
    this.name = 'SkipPlugin';
  }
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

/** What a plugin's init() sees. */
export interface InitContext<C> {
  /** This plugin's own directory under the daemon root: <root>/<type>.<id>. */
  readonly root: string;
  /** This plugin's own directory under the state dir. */
  readonly state: string;
  /** The daemon root and state, for plugins that share files with others. */
  readonly daemonRoot: string;
  readonly daemonState: string;
  /** The gRPC address the daemon serves on. */
  readonly address: string;
  readonly config: C;
  readonly log: Logger;
  /** Set by init() and reported by introspection. */
  readonly meta: { exports: Record<string, string>; capabilities: string[]; platforms: Platform[] };
  /** The instance of an initialised plugin; throws if it is missing or failed. */
  get<T>(type: PluginType, id?: string): T;
  /** Every successfully initialised instance of a type, by id. */
  getAll<T>(type: PluginType): Map<string, T>;
  /** Called in reverse order when the daemon stops. */
  onClose(fn: () => Promise<void> | void): void;
  /** Every plugin handled so far, with its status (live: later plugins appear as they load). */
  plugins(): readonly LoadedPlugin[];
}

export interface PluginRegistration<T = unknown, C = Record<string, unknown>> {
  type: PluginType;
  id: string;
  /** Types that must be initialised first ('*' = every other type). */
  requires?: (PluginType | '*')[];
  /** The default config, printed by `stratad config default` under [plugins."<type>.<id>"]. */
  config?: () => C;
  init(ic: InitContext<C>): Promise<T> | T;
}

export type PluginStatus =
  | { state: 'ok' }
  | { state: 'skipped'; reason: string }
  | { state: 'error'; error: Error };

export interface LoadedPlugin {
  registration: PluginRegistration<unknown, any>;
  status: PluginStatus;
  instance?: unknown;
  meta: { exports: Record<string, string>; capabilities: string[]; platforms: Platform[] };
}

export const pluginUri = (type: string, id: string) => `${type}.${id}`;

const registrations: PluginRegistration<unknown, any>[] = [];

/** Registers a plugin. Called at module load by each subsystem's plugin file. */
export function register<T, C>(r: PluginRegistration<T, C>): void {
  if (registrations.some((x) => x.type === r.type && x.id === r.id)) {
    throw new Error(`plugin ${pluginUri(r.type, r.id)} registered twice`);
  }
  registrations.push(r as PluginRegistration<unknown, any>);
}

export function registered(): readonly PluginRegistration<unknown, any>[] {
  return registrations;
}

/**
 * Orders registrations so that every plugin comes after all plugins of the types it requires; among
 * independent plugins, registration order is kept. A cycle is a programming error.
 */
export function sortByDependencies<R extends Pick<PluginRegistration, 'type' | 'id' | 'requires'>>(regs: readonly R[]): R[] {
  const out: R[] = [];
  const placed = new Set<R>();
  const visiting = new Set<R>();
  const visit = (r: R) => {
    if (placed.has(r)) return;
    if (visiting.has(r)) throw new Error(`plugin dependency cycle at ${pluginUri(r.type, r.id)}`);
    visiting.add(r);
    for (const req of r.requires ?? []) {
      for (const dep of regs) {
        if (dep === r) continue;
        if (req === '*' ? !(dep.requires ?? []).includes('*') : dep.type === req) visit(dep);
      }
    }
    visiting.delete(r);
    placed.add(r);
    out.push(r);
  };
  for (const r of regs) visit(r);
  return out;
}

export interface LoadOptions {
  root: string;
  state: string;
  address: string;
  log: Logger;
  /** Config sections by plugin URI, already merged over each plugin's defaults. */
  configFor(uri: string, defaults: Record<string, unknown>): Record<string, unknown>;
  /** Plugin URIs not to load at all. */
  disabled?: string[];
  /** Extra registrations (e.g. proxy plugins from config), initialised with the built-in ones. */
  extra?: PluginRegistration<unknown, any>[];
  /** A plugin's own directory; default <root>/<type>.<id> (serve-snapshotter points it at --root). */
  pluginRoot?(uri: string): string;
}

const hostPlatform = (): Platform => ({
  os: process.platform === 'win32' ? 'windows' : process.platform,
  architecture: ({ x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x' } as Record<string, string>)[process.arch] ?? process.arch,
});

/**
 * A snapshotter's capabilities are what its instance says it implements (`capabilities`, src/snapshots/types.ts):
 * introspection reports them after any its init() declared (a proxy plugin's from its config), once each.
 */
function reportCapabilities(meta: LoadedPlugin['meta'], instance: unknown): void {
  const caps = (instance as { capabilities?: unknown } | undefined)?.capabilities;
  if (!Array.isArray(caps)) return;
  for (const c of caps) if (typeof c === 'string' && !meta.capabilities.includes(c)) meta.capabilities.push(c);
}

/** The set of plugins a daemon has initialised, in order, with their outcomes. */
export class PluginSet {
  readonly loaded: LoadedPlugin[] = [];
  private readonly closers: (() => Promise<void> | void)[] = [];

  static async load(opts: LoadOptions, regs: readonly PluginRegistration<unknown, any>[] = registrations): Promise<PluginSet> {
    const set = new PluginSet();
    const disabled = new Set(opts.disabled ?? []);
    const all = [...regs, ...(opts.extra ?? [])].filter((r) => !disabled.has(pluginUri(r.type, r.id)));
    for (const reg of sortByDependencies(all)) await set.init(reg, opts);
    return set;
  }

  private async init(reg: PluginRegistration<unknown, any>, opts: LoadOptions): Promise<void> {
    const uri = pluginUri(reg.type, reg.id);
    const log = opts.log.child({ plugin: uri });
    const meta = { exports: {} as Record<string, string>, capabilities: [] as string[], platforms: [hostPlatform()] };
    const ic: InitContext<Record<string, unknown>> = {
      root: opts.pluginRoot?.(uri) ?? join(opts.root, uri),
      state: join(opts.state, uri),
      daemonRoot: opts.root,
      daemonState: opts.state,
      address: opts.address,
      config: opts.configFor(uri, reg.config?.() ?? {}),
      log,
      meta,
      get: <T>(type: PluginType, id?: string) => this.get<T>(type, id),
      getAll: <T>(type: PluginType) => this.getAll<T>(type),
      onClose: (fn) => this.closers.push(fn),
      plugins: () => this.loaded,
    };
    const entry: LoadedPlugin = { registration: reg, status: { state: 'ok' }, meta };
    log.debug('loading plugin');
    try {
      entry.instance = await reg.init(ic);
      if (reg.type === PluginType.Snapshot) reportCapabilities(meta, entry.instance);
    } catch (err) {
      if (err instanceof SkipPlugin) {
        entry.status = { state: 'skipped', reason: err.message };
        log.info('skip loading plugin', { reason: err.message });
      } else {
        const e = err instanceof Error ? err : new Error(String(err));
        entry.status = { state: 'error', error: e };
        log.warn('failed to load plugin', { error: e.message });
      }
    }
    this.loaded.push(entry);
  }

  get<T>(type: PluginType, id?: string): T {
    const found = this.loaded.filter((p) => p.registration.type === type && (id === undefined || p.registration.id === id));
    const ok = found.find((p) => p.status.state === 'ok');
    if (ok) return ok.instance as T;
    const what = id ? pluginUri(type, id) : type;
    const failed = found[0];
    if (failed?.status.state === 'error') throw new Error(`plugin ${what} failed: ${failed.status.error.message}`);
    if (failed?.status.state === 'skipped') throw new Error(`plugin ${what} skipped: ${failed.status.reason}`);
    throw new Error(`plugin ${what} not loaded`);
  }

  getAll<T>(type: PluginType): Map<string, T> {
    const out = new Map<string, T>();
    for (const p of this.loaded) {
      if (p.registration.type === type && p.status.state === 'ok') out.set(p.registration.id, p.instance as T);
    }
    return out;
  }

  async close(log: Logger): Promise<void> {
    for (const fn of this.closers.splice(0).reverse()) {
      try {
        await fn();
      } catch (err) {
        log.warn('error closing plugin', { error: err });
      }
    }
  }
}
