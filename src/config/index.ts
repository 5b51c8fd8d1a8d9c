/**
 * stratad's configuration: TOML in containerd's version-2 layout, so an existing containerd config reads
 * naturally. Precedence: built-in defaults < the config file < command-line flags.
 */
import { readFileSync } from 'node:fs';
import { parse, stringify } from 'smol-toml';
import { invalidArgument } from '../core/errdefs.js';
import { isLoopback, parseListenAddress } from '../core/address.js';

export interface GrpcConfig {
  address: string;
  uid: number;
  gid: number;
  max_recv_message_size: number;
  max_send_message_size: number;
  /**
   * Streams (calls) one client connection may have open at once: HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS,
   * which the server announces and clients honour by waiting. 0: no limit (2^32 - 1).
   */
  max_concurrent_streams: number;
}

/** `[proxy_plugins.NAME]`: containerd's keys (platform since 1.7, exports since 2.0 #9253, capabilities #10337). */
export interface ProxyPluginConfig {
  /** "snapshot" (or its plugin type, "io.containerd.snapshotter.v1"). */
  type: string;
  address: string;
  /** The plugin's platform in introspection, "os/arch[/variant]" (default: the host's). */
  platform?: string;
  /** Extra exports reported in introspection (e.g. root = the other process's data directory); `address` is always the configured one. */
  exports?: Record<string, string>;
  /** Capabilities the other process implements (e.g. "rebase"): reported in introspection and relied on as a built-in backend's. */
  capabilities?: string[];
}

export interface Config {
  version: number;
  root: string;
  state: string;
  disabled_plugins: string[];
  required_plugins: string[];
  grpc: GrpcConfig;
  /** address: a unix socket path or loopback host:port for the debug endpoint ("" = none). */
  debug: { level: string; address: string };
  /** The Prometheus endpoint (containerd's [metrics]): address host:port ("" = none), grpc_histogram. */
  metrics: { address: string; grpc_histogram: boolean };
  plugins: Record<string, Record<string, unknown>>;
  proxy_plugins: Record<string, ProxyPluginConfig>;
}

export const DEFAULT_ROOT = '/var/lib/strata';
export const DEFAULT_STATE = '/run/strata';
export const DEFAULT_ADDRESS = '/run/strata/strata.sock';

export function defaultConfig(): Config {
  return {
    version: 2,
    root: DEFAULT_ROOT,
    state: DEFAULT_STATE,
    disabled_plugins: [],
    required_plugins: [],
    grpc: {
      address: DEFAULT_ADDRESS,
      uid: 0,
      gid: 0,
      // containerd's defaults: 16 MiB each way.
      max_recv_message_size: 16 << 20,
      max_send_message_size: 16 << 20,
      // Not a containerd key (containerd leaves grpc-go's default: no limit). Far above what one client uses:
      // containerd's Go client multiplexes everything on one connection, 64 concurrent callers open 64 streams.
      max_concurrent_streams: 1000,
    },
    debug: { level: 'info', address: '' },
    metrics: { address: '', grpc_histogram: false },
    plugins: {},
    proxy_plugins: {},
  };
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);

/** Deep merge where `over` wins; arrays are replaced, not concatenated. */
export function merge<T>(base: T, over: unknown): T {
  if (!isObject(base) || !isObject(over)) return (over === undefined ? base : over) as T;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = k in out ? merge(out[k], v) : v;
  return out as T;
}

export interface Overrides {
  root?: string;
  state?: string;
  address?: string;
  logLevel?: string;
}

/** Reads and validates a config file (if given) over the defaults, then applies flag overrides. */
export function loadConfig(path: string | undefined, overrides: Overrides = {}): Config {
  let cfg = defaultConfig();
  if (path) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw invalidArgument(`cannot read config ${path}: ${(err as Error).message}`);
    }
    let parsed: Record<string, unknown>;
    try {
      parsed = parse(text) as Record<string, unknown>;
    } catch (err) {
      throw invalidArgument(`config ${path} is not valid TOML: ${(err as Error).message}`);
    }
    const version = parsed.version ?? 1;
    if (version !== 2 && version !== 3) {
      throw invalidArgument(`config ${path}: version ${JSON.stringify(version)} is not supported, use version = 2 (a number; containerd 2.x's 3 reads the same)`);
    }
    cfg = merge(cfg, parsed);
    applyAliases(cfg);
  }
  if (overrides.root) cfg.root = overrides.root;
  if (overrides.state) cfg.state = overrides.state;
  if (overrides.address) cfg.grpc.address = overrides.address;
  if (overrides.logLevel) cfg.debug.level = overrides.logLevel;
  validate(cfg);
  return cfg;
}

/**
 * containerd 2.x's names for what Strata names otherwise, where containerd 1.6 has no name for it
 * (docs/configuration.md, "containerd 2.x names"): a plugin section, or an entry of disabled_plugins or
 * required_plugins, under the 2.x name counts as Strata's; where both are given, Strata's own keys win.
 */
export const PLUGIN_ALIASES: Readonly<Record<string, string>> = {
  // containerd 2.x's (and 1.7's) transfer service; Strata's is the images subsystem's, with the same keys
  // (max_concurrent_downloads, config_path) and unpack_config.
  'io.containerd.transfer.v1.local': 'io.containerd.transfer.v1.images',
};

function applyAliases(cfg: Config): void {
  const plugins: unknown = cfg.plugins;
  if (isObject(plugins)) {
    for (const [alias, uri] of Object.entries(PLUGIN_ALIASES)) {
      const section = plugins[alias];
      if (section === undefined || !isObject(section)) continue; // a non-table is reported by checkTypes
      const own = plugins[uri];
      plugins[uri] = isObject(own) ? merge(section, own) : section;
      delete plugins[alias];
    }
  }
  const rename = (list: unknown) => (Array.isArray(list) ? [...new Set(list.map((u) => (typeof u === 'string' ? (PLUGIN_ALIASES[u] ?? u) : u)))] : list);
  cfg.disabled_plugins = rename(cfg.disabled_plugins) as string[];
  cfg.required_plugins = rename(cfg.required_plugins) as string[];
}

/** HTTP/2's largest SETTINGS_MAX_CONCURRENT_STREAMS (a 32-bit value). */
const MAX_STREAMS = 2 ** 32 - 1;

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];

/** Checks the type of every known key, so a mistyped file fails with a message instead of misbehaving. */
function checkTypes(cfg: Config): void {
  const want = (path: string, value: unknown, type: 'string' | 'number' | 'boolean' | 'string[]' | 'table') => {
    const ok =
      type === 'boolean'
        ? typeof value === 'boolean'
        : type === 'string[]'
        ? Array.isArray(value) && value.every((v) => typeof v === 'string')
        : type === 'table'
          ? isObject(value)
          : type === 'number'
            ? typeof value === 'number' && Number.isInteger(value)
            : typeof value === type;
    if (!ok) throw invalidArgument(`config: ${path} must be ${type === 'string[]' ? 'a list of strings' : type === 'table' ? 'a table' : `a ${type === 'number' ? 'whole number' : type}`}`);
  };
  want('root', cfg.root, 'string');
  want('state', cfg.state, 'string');
  want('disabled_plugins', cfg.disabled_plugins, 'string[]');
  want('required_plugins', cfg.required_plugins, 'string[]');
  want('grpc', cfg.grpc, 'table');
  want('grpc.address', cfg.grpc.address, 'string');
  want('grpc.uid', cfg.grpc.uid, 'number');
  want('grpc.gid', cfg.grpc.gid, 'number');
  want('grpc.max_recv_message_size', cfg.grpc.max_recv_message_size, 'number');
  want('grpc.max_send_message_size', cfg.grpc.max_send_message_size, 'number');
  want('grpc.max_concurrent_streams', cfg.grpc.max_concurrent_streams, 'number');
  want('debug', cfg.debug, 'table');
  want('debug.level', cfg.debug.level, 'string');
  want('debug.address', cfg.debug.address, 'string');
  want('metrics', cfg.metrics, 'table');
  want('metrics.address', cfg.metrics.address, 'string');
  want('metrics.grpc_histogram', cfg.metrics.grpc_histogram, 'boolean');
  want('plugins', cfg.plugins, 'table');
  for (const [uri, section] of Object.entries(cfg.plugins)) want(`plugins."${uri}"`, section, 'table');
  want('proxy_plugins', cfg.proxy_plugins, 'table');
  if (!LOG_LEVELS.includes(cfg.debug.level)) {
    throw invalidArgument(`config: debug.level "${cfg.debug.level}" is not one of ${LOG_LEVELS.join(', ')}`);
  }
}

function validate(cfg: Config): void {
  checkTypes(cfg);
  if (!cfg.root.startsWith('/')) throw invalidArgument(`root must be an absolute path: ${cfg.root}`);
  if (!cfg.state.startsWith('/')) throw invalidArgument(`state must be an absolute path: ${cfg.state}`);
  if (cfg.root === cfg.state) throw invalidArgument('root and state must be different directories');
  if (!cfg.grpc.address) throw invalidArgument('grpc.address must be set');
  for (const key of ['max_recv_message_size', 'max_send_message_size'] as const) {
    if (cfg.grpc[key] < 1) throw invalidArgument(`config: grpc.${key} must be 1 or more`);
  }
  if (cfg.grpc.max_concurrent_streams < 0 || cfg.grpc.max_concurrent_streams > MAX_STREAMS) {
    throw invalidArgument(`config: grpc.max_concurrent_streams must be 0 (no limit) to ${MAX_STREAMS}`);
  }
  const address = (key: string, value: string, allowUnix: boolean) => {
    try {
      return parseListenAddress(key, value, allowUnix);
    } catch (err) {
      throw invalidArgument((err as Error).message);
    }
  };
  if (cfg.metrics.address) address('metrics.address', cfg.metrics.address, false);
  if (cfg.debug.address) {
    const at = address('debug.address', cfg.debug.address, true);
    // A heap snapshot holds whatever is in memory (registry credentials): never served beyond this host.
    if ('host' in at && !isLoopback(at.host)) {
      throw invalidArgument(`debug.address must be a unix socket or a loopback address (127.0.0.1, ::1, localhost): ${cfg.debug.address}`);
    }
  }
  for (const [name, p] of Object.entries(cfg.proxy_plugins)) {
    if (!isObject(p)) throw invalidArgument(`config: proxy_plugins.${name} must be a table`);
    if (!p.type || !p.address) throw invalidArgument(`proxy_plugins.${name} needs both type and address`);
    const at = `proxy_plugins.${name}`;
    if (typeof p.type !== 'string' || typeof p.address !== 'string') throw invalidArgument(`config: ${at}.type and ${at}.address must be strings`);
    if (p.platform !== undefined && typeof p.platform !== 'string') throw invalidArgument(`config: ${at}.platform must be a string`);
    if (p.capabilities !== undefined && !(Array.isArray(p.capabilities) && p.capabilities.every((c) => typeof c === 'string' && c !== ''))) {
      throw invalidArgument(`config: ${at}.capabilities must be a list of non-empty strings`);
    }
    if (p.exports !== undefined && !(isObject(p.exports) && Object.values(p.exports).every((v) => typeof v === 'string'))) {
      throw invalidArgument(`config: ${at}.exports must be a table of strings`);
    }
  }
}

/** The config for one plugin: its defaults with the file's [plugins."<uri>"] section over them. */
export function pluginConfig(cfg: Config, uri: string, defaults: Record<string, unknown>): Record<string, unknown> {
  return merge(defaults, cfg.plugins[uri] ?? {});
}

/** TOML text of a config, with every plugin's effective section filled in. */
export function renderConfig(cfg: Config, pluginDefaults: Map<string, Record<string, unknown>>): string {
  const plugins: Record<string, Record<string, unknown>> = {};
  for (const [uri, defaults] of pluginDefaults) plugins[uri] = pluginConfig(cfg, uri, defaults);
  for (const [uri, section] of Object.entries(cfg.plugins)) plugins[uri] ??= section;
  return stringify({ ...cfg, plugins });
}
