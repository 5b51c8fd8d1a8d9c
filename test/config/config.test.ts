/**
 * stratad's configuration without a daemon: built-in defaults, a TOML file over them, flags over the file,
 * the validation errors a user sees, per-plugin sections, and `renderConfig` output that reads back the same.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import {
  DEFAULT_ADDRESS,
  DEFAULT_ROOT,
  DEFAULT_STATE,
  defaultConfig,
  loadConfig,
  merge,
  pluginConfig,
  renderConfig,
  type Config,
} from '../../src/config/index.js';
import { StrataError } from '../../src/core/errdefs.js';
import { stopAll } from '../helpers/daemon.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const SQLITE = 'io.containerd.metadata.v1.sqlite';

let tmp: TempDir;
let n = 0;

/** Writes a config file in the temp dir and returns its path. */
function file(text: string): string {
  const p = join(tmp.path, `config-${n++}.toml`);
  writeFileSync(p, text);
  return p;
}

function loadError(fn: () => unknown): StrataError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected the config to be rejected').toBeInstanceOf(StrataError);
  return err as StrataError;
}

beforeAll(async () => {
  tmp = await tempDir('strata-config-');
});
afterAll(async () => {
  await stopAll();
  await tmp?.cleanup();
});

describe('defaults', () => {
  it('uses /var/lib/strata, /run/strata and /run/strata/strata.sock', () => {
    expect(DEFAULT_ROOT).toBe('/var/lib/strata');
    expect(DEFAULT_STATE).toBe('/run/strata');
    expect(DEFAULT_ADDRESS).toBe('/run/strata/strata.sock');
    const c = loadConfig(undefined);
    expect(c.version).toBe(2);
    expect(c.root).toBe('/var/lib/strata');
    expect(c.state).toBe('/run/strata');
    expect(c.grpc.address).toBe('/run/strata/strata.sock');
    expect(c.grpc.max_recv_message_size).toBe(16 * 1024 * 1024);
    expect(c.grpc.max_send_message_size).toBe(16 * 1024 * 1024);
    expect(c.debug.level).toBe('info');
    expect(c.disabled_plugins).toEqual([]);
    expect(c.plugins).toEqual({});
    expect(c).toEqual(defaultConfig());
  });

  it('hands out a fresh object each time', () => {
    const a = loadConfig(undefined, { root: '/elsewhere', address: '/elsewhere.sock' });
    expect(a.root).toBe('/elsewhere');
    const b = loadConfig(undefined);
    expect(b.root).toBe(DEFAULT_ROOT);
    expect(b.grpc.address).toBe(DEFAULT_ADDRESS);
    expect(defaultConfig().grpc.address).toBe(DEFAULT_ADDRESS);
  });
});

describe('loading a file', () => {
  it('overrides the defaults with what the file sets and keeps the rest', () => {
    const c = loadConfig(
      file(`version = 2
root = "/srv/strata/root"
state = "/srv/strata/state"
disabled_plugins = ["io.containerd.grpc.v1.leases"]

[grpc]
address = "/srv/strata/sock"
max_recv_message_size = 1024

[debug]
level = "warn"
`),
    );
    expect(c.root).toBe('/srv/strata/root');
    expect(c.state).toBe('/srv/strata/state');
    expect(c.grpc.address).toBe('/srv/strata/sock');
    expect(c.grpc.max_recv_message_size).toBe(1024);
    // Unset keys of a set table keep their defaults.
    expect(c.grpc.max_send_message_size).toBe(16 << 20);
    expect(c.grpc.uid).toBe(0);
    expect(c.debug.level).toBe('warn');
    expect(c.disabled_plugins).toEqual(['io.containerd.grpc.v1.leases']);
  });

  it('takes [grpc] max_concurrent_streams (default 1000, 0 for none) and refuses values HTTP/2 cannot carry, naming the key', () => {
    expect(loadConfig(undefined).grpc.max_concurrent_streams).toBe(1000);
    const at = (v: string) => loadConfig(file(`version = 2\n[grpc]\nmax_concurrent_streams = ${v}\n`));
    expect(at('64').grpc.max_concurrent_streams).toBe(64);
    expect(at('0').grpc.max_concurrent_streams).toBe(0);
    expect(() => at('-1')).toThrow('config: grpc.max_concurrent_streams must be 0 (no limit) to 4294967295');
    expect(() => at('4294967296')).toThrow('config: grpc.max_concurrent_streams must be 0 (no limit) to 4294967295');
    expect(() => at('"many"')).toThrow('config: grpc.max_concurrent_streams must be a whole number');
    expect(() => loadConfig(file('version = 2\n[grpc]\nmax_recv_message_size = 0\n'))).toThrow('config: grpc.max_recv_message_size must be 1 or more');
  });

  it('lets flags override the file', () => {
    const path = file(`version = 2
root = "/file/root"
state = "/file/state"
[grpc]
address = "/file/sock"
[debug]
level = "warn"
`);
    const c = loadConfig(path, { root: '/flag/root', state: '/flag/state', address: '/flag/sock', logLevel: 'debug' });
    expect(c.root).toBe('/flag/root');
    expect(c.state).toBe('/flag/state');
    expect(c.grpc.address).toBe('/flag/sock');
    expect(c.debug.level).toBe('debug');
    // Only the flags given override.
    const d = loadConfig(path, { address: '/flag/sock' });
    expect(d.root).toBe('/file/root');
    expect(d.state).toBe('/file/state');
    expect(d.grpc.address).toBe('/flag/sock');
    expect(d.debug.level).toBe('warn');
  });

  it('rejects version 1 and files without a version, saying to use version 2', () => {
    for (const text of ['version = 1\nroot = "/a"\n', 'root = "/a"\n', '']) {
      const path = file(text);
      const err = loadError(() => loadConfig(path));
      expect(err.kind).toBe('invalid argument');
      expect(err.detail).toContain(path);
      expect(err.detail).toMatch(/version 1 is not supported/);
      expect(err.detail).toContain('version = 2');
    }
    const v4 = file('version = 4\n');
    expect(loadError(() => loadConfig(v4)).detail).toMatch(/version 4 is not supported, use version = 2/);
  });

  it("reads containerd 2.x's version = 3 as version 2 (its changes are in the CRI plugin, which Strata has not)", () => {
    const c = loadConfig(file('version = 3\nroot = "/v3/root"\n[plugins."io.containerd.gc.v1.scheduler"]\npause_threshold = 0.1\n'));
    expect(c.root).toBe('/v3/root');
    expect(pluginConfig(c, 'io.containerd.gc.v1.scheduler', { pause_threshold: 0.02 })).toEqual({ pause_threshold: 0.1 });
  });

  it('rejects invalid TOML with the file name and "not valid TOML"', () => {
    for (const text of ['version = 2\nroot = \n', 'version = 2\n[grpc\naddress = "/x"\n', 'version = 2\nroot = "/a"\nroot = "/b"\n']) {
      const path = file(text);
      const err = loadError(() => loadConfig(path));
      expect(err.kind).toBe('invalid argument');
      expect(err.detail).toContain(`config ${path} is not valid TOML`);
    }
  });

  it('rejects a missing file with a clear message', () => {
    const path = join(tmp.path, 'does-not-exist.toml');
    const err = loadError(() => loadConfig(path));
    expect(err.kind).toBe('invalid argument');
    expect(err.detail).toContain(`cannot read config ${path}`);
  });

  it('rejects a relative root or state, from the file or from a flag', () => {
    let err = loadError(() => loadConfig(file('version = 2\nroot = "var/lib/strata"\n')));
    expect(err.kind).toBe('invalid argument');
    expect(err.detail).toBe('root must be an absolute path: var/lib/strata');
    err = loadError(() => loadConfig(undefined, { root: 'relative' }));
    expect(err.detail).toBe('root must be an absolute path: relative');
    err = loadError(() => loadConfig(undefined, { state: './state' }));
    expect(err.detail).toBe('state must be an absolute path: ./state');
  });

  it('rejects a version given as a string', () => {
    const err = loadError(() => loadConfig(file('version = "2"\n')));
    expect(err.kind).toBe('invalid argument');
    expect(err.detail).toMatch(/is not supported, use version = 2/);
  });

  it('rejects a root that is not a string with invalid argument', () => {
    const err = loadError(() => loadConfig(file('version = 2\nroot = 5\n')));
    expect(err.kind).toBe('invalid argument');
    expect(err.detail).toMatch(/root/);
  });

  it('rejects disabled_plugins that is not an array of strings', () => {
    const err = loadError(() => loadConfig(file('version = 2\ndisabled_plugins = "io.containerd.grpc.v1.leases"\n')));
    expect(err.kind).toBe('invalid argument');
    expect(err.detail).toMatch(/disabled_plugins/);
  });

  it('rejects root == state and a proxy plugin without an address', () => {
    expect(loadError(() => loadConfig(undefined, { root: '/same', state: '/same' })).detail).toMatch(/root and state must be different/);
    const err = loadError(() => loadConfig(file('version = 2\n[proxy_plugins.foo]\ntype = "snapshot"\n')));
    expect(err.detail).toBe('proxy_plugins.foo needs both type and address');
    const ok = loadConfig(file('version = 2\n[proxy_plugins.foo]\ntype = "snapshot"\naddress = "/run/foo.sock"\n'));
    expect(ok.proxy_plugins).toEqual({ foo: { type: 'snapshot', address: '/run/foo.sock' } });
  });

  it("reads a proxy plugin's containerd 2.x keys (capabilities, exports, platform) and rejects them mistyped", () => {
    const c = loadConfig(
      file(`version = 2
[proxy_plugins.soci]
type = "snapshot"
address = "/run/soci.sock"
platform = "linux/amd64"
capabilities = ["remap-ids"]
[proxy_plugins.soci.exports]
root = "/var/lib/soci"
`),
    );
    expect(c.proxy_plugins.soci).toEqual({
      type: 'snapshot',
      address: '/run/soci.sock',
      platform: 'linux/amd64',
      capabilities: ['remap-ids'],
      exports: { root: '/var/lib/soci' },
    });
    const base = 'version = 2\n[proxy_plugins.x]\ntype = "snapshot"\naddress = "/run/x.sock"\n';
    expect(loadError(() => loadConfig(file(`${base}capabilities = "rebase"\n`))).detail).toBe('config: proxy_plugins.x.capabilities must be a list of non-empty strings');
    expect(loadError(() => loadConfig(file(`${base}capabilities = [""]\n`))).detail).toBe('config: proxy_plugins.x.capabilities must be a list of non-empty strings');
    expect(loadError(() => loadConfig(file(`${base}exports = { root = 1 }\n`))).detail).toBe('config: proxy_plugins.x.exports must be a table of strings');
    expect(loadError(() => loadConfig(file(`${base}platform = 64\n`))).detail).toBe('config: proxy_plugins.x.platform must be a string');
  });
});

describe('plugin sections', () => {
  it('reach pluginConfig merged over the plugin defaults', () => {
    const c = loadConfig(
      file(`version = 2
[plugins."${SQLITE}"]
content_sharing_policy = "isolated"
extra = 5
[plugins."${SQLITE}".nested]
b = "file"
`),
    );
    expect(Object.keys(c.plugins)).toEqual([SQLITE]);
    const defaults = { content_sharing_policy: 'shared', keep: true, nested: { a: 'default', b: 'default' } };
    expect(pluginConfig(c, SQLITE, defaults)).toEqual({
      content_sharing_policy: 'isolated',
      keep: true,
      extra: 5,
      nested: { a: 'default', b: 'file' },
    });
    // The defaults object itself is not modified.
    expect(defaults).toEqual({ content_sharing_policy: 'shared', keep: true, nested: { a: 'default', b: 'default' } });
    // A plugin without a section gets its defaults.
    expect(pluginConfig(c, 'io.containerd.content.v1.content', { x: 1 })).toEqual({ x: 1 });
  });

  it("read containerd 2.x's io.containerd.transfer.v1.local as the transfer plugin, Strata's own keys winning", () => {
    const c = loadConfig(
      file(`version = 3
disabled_plugins = ["io.containerd.transfer.v1.local"]
required_plugins = ["io.containerd.transfer.v1.local", "io.containerd.transfer.v1.images"]
[plugins."io.containerd.transfer.v1.local"]
max_concurrent_downloads = 5
config_path = "/etc/containerd/certs.d"
unpack_config = [{ platform = "linux/amd64", snapshotter = "native" }]
[plugins."io.containerd.transfer.v1.images"]
config_path = "/etc/strata/certs.d"
`),
    );
    expect(Object.keys(c.plugins)).toEqual(['io.containerd.transfer.v1.images']);
    expect(pluginConfig(c, 'io.containerd.transfer.v1.images', { max_concurrent_downloads: 3, snapshotter: '' })).toEqual({
      max_concurrent_downloads: 5,
      snapshotter: '',
      config_path: '/etc/strata/certs.d',
      unpack_config: [{ platform: 'linux/amd64', snapshotter: 'native' }],
    });
    expect(c.disabled_plugins).toEqual(['io.containerd.transfer.v1.images']);
    expect(c.required_plugins).toEqual(['io.containerd.transfer.v1.images']);
    // Only the alias given: it is the section.
    const only = loadConfig(file('version = 2\n[plugins."io.containerd.transfer.v1.local"]\nmax_concurrent_downloads = 7\n'));
    expect(only.plugins).toEqual({ 'io.containerd.transfer.v1.images': { max_concurrent_downloads: 7 } });
  });

  it('merge replaces arrays and scalars, and deep-merges tables', () => {
    expect(merge({ a: [1, 2], b: { c: 1, d: 2 }, e: 'x' }, { a: [3], b: { d: 3 }, f: true })).toEqual({
      a: [3],
      b: { c: 1, d: 3 },
      e: 'x',
      f: true,
    });
    expect(merge({ a: 1 }, undefined)).toEqual({ a: 1 });
  });
});

describe('renderConfig', () => {
  const stripPlugins = ({ plugins: _p, ...rest }: Config) => rest;

  it('renders TOML that parses back to the same values, with plugin defaults filled in', () => {
    const c = loadConfig(
      file(`version = 2
root = "/r"
state = "/s"
required_plugins = ["io.containerd.grpc.v1.content"]
[grpc]
address = "/s/strata.sock"
[plugins."${SQLITE}"]
extra = "from-file"
[plugins."io.strata.custom.v1.thing"]
n = 1
`),
    );
    const defaults = new Map<string, Record<string, unknown>>([
      [SQLITE, { content_sharing_policy: 'shared' }],
      ['io.containerd.gc.v1.scheduler', { pause_threshold: 0.02, deletion_threshold: 0 }],
    ]);
    const text = renderConfig(c, defaults);
    const back = parse(text) as unknown as Config;
    expect(stripPlugins(back)).toEqual(stripPlugins(c));
    expect(back.plugins).toEqual({
      [SQLITE]: { content_sharing_policy: 'shared', extra: 'from-file' },
      'io.containerd.gc.v1.scheduler': { pause_threshold: 0.02, deletion_threshold: 0 },
      'io.strata.custom.v1.thing': { n: 1 },
    });
    // And it loads as a config file again, to the same effective values.
    const reloaded = loadConfig(file(text));
    expect(stripPlugins(reloaded)).toEqual(stripPlugins(c));
    expect(pluginConfig(reloaded, SQLITE, {})).toEqual({ content_sharing_policy: 'shared', extra: 'from-file' });
  });

  it('renders the defaults with version = 2', () => {
    const text = renderConfig(defaultConfig(), new Map());
    expect(text).toMatch(/^version = 2$/m);
    const back = parse(text) as unknown as Config;
    expect(back).toEqual(defaultConfig());
  });
});
