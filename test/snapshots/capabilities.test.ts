/**
 * Snapshotter capabilities, as containerd 2.x reports them: in each snapshotter's introspection entry (through
 * the gRPC answer, the unmodified `ctr plugins ls -d` and `strata plugins ls -d`), declared for proxy plugins by
 * their config (`capabilities`, `exports`, `platform`) and relied on through the daemon's own layers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { serveSnapshotter, type ServedBackend } from '../helpers/serve-snapshotter.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { ctr, run } from '../helpers/ctr.js';
import { STRATA } from '../helpers/paths.js';
import type { StrataClient } from '../../src/api/clients/strata.js';
import type { Plugin } from '../../src/api/gen/containerd/services/introspection/v1/introspection.js';
import { proxyRegistrations } from '../../src/api/clients/proxy-plugins.js';
import { PluginSet, PluginType } from '../../src/plugin/index.js';
import { silentLogger } from '../../src/log/index.js';
import { MetadataStore } from '../../src/metadata/index.js';
import { openLocalContentStore } from '../../src/content/local.js';
import { SnapshotterCapability, hasCapability, type Snapshotter } from '../../src/snapshots/types.js';

let d: StartedDaemon;
let c: StrataClient;
let served: ServedBackend;
let dir: TempDir;

const REMOTE_ROOT = '/var/lib/remote-snapshotter';

beforeAll(async () => {
  dir = await tempDir('strata-caps-');
  await mkdir(join(dir.path, 'root'));
  served = await serveSnapshotter('native', join(dir.path, 'root'), join(dir.path, 'sn.sock'));
  d = await startDaemon({
    config: [
      '[proxy_plugins.remote]',
      'type = "snapshot"',
      `address = "${served.address}"`,
      'platform = "linux/arm64"',
      'capabilities = ["rebase", "remap-ids", "rebase"]',
      '[proxy_plugins.remote.exports]',
      `root = "${REMOTE_ROOT}"`,
      'address = "/somewhere/else.sock"',
      '[proxy_plugins.plain]',
      'type = "io.containerd.snapshotter.v1"',
      `address = "${served.address}"`,
      '',
    ].join('\n'),
  });
  c = d.client('default');
});

afterAll(async () => {
  c?.close();
  await stopAll();
  await served?.stop();
  await d?.dir.cleanup();
  await dir?.cleanup();
});

async function snapshotters(): Promise<Map<string, Plugin>> {
  const { plugins } = await c.call(c.introspection, c.introspection.plugins, { filters: ['type==io.containerd.snapshotter.v1'] });
  return new Map(plugins.map((p) => [p.id, p]));
}

describe('introspection', () => {
  it('reports the capabilities, exports and platform a proxy plugin declares, as containerd 2.x does', async () => {
    const remote = (await snapshotters()).get('remote');
    expect(remote?.initErr).toBeUndefined();
    // Each named once, in the order given.
    expect(remote!.capabilities).toEqual(['rebase', 'remap-ids']);
    // The configured exports, with `address` always the plugin's own address.
    expect(remote!.exports).toEqual({ root: REMOTE_ROOT, address: served.address });
    expect(remote!.platforms).toEqual([{ os: 'linux', architecture: 'arm64', variant: '' }]);
  });

  it('reports no capabilities for a proxy plugin that declares none, and takes the plugin type as its type', async () => {
    const plain = (await snapshotters()).get('plain');
    expect(plain?.initErr).toBeUndefined();
    expect(plain!.capabilities).toEqual([]);
    expect(plain!.exports).toEqual({ address: served.address });
    expect(plain!.platforms).toHaveLength(1);
  });

  it('reports for the built-in snapshotters only capabilities of containerd 2.x names they implement', async () => {
    const all = await snapshotters();
    const known: string[] = Object.values(SnapshotterCapability);
    for (const id of ['overlayfs', 'native']) {
      const p = all.get(id);
      expect(p?.initErr, id).toBeUndefined();
      for (const cap of p!.capabilities) expect(known, `${id} reports ${cap}`).toContain(cap);
    }
  });

  it('shows the capabilities in the unmodified `ctr plugins ls -d`, and `strata plugins ls -d` prints the same block', async () => {
    const fromCtr = await ctr(d.address, ['plugins', 'ls', '-d', 'id==remote']);
    expect(fromCtr.code, fromCtr.stderr).toBe(0);
    expect(fromCtr.stdout).toMatch(/^Capabilities:\s+rebase,remap-ids$/m);
    expect(fromCtr.stdout).toMatch(/^Platforms:\s+linux\/arm64$/m);
    expect(fromCtr.stdout).toMatch(new RegExp(`^\\s+root\\s+${REMOTE_ROOT}$`, 'm'));
    expect(fromCtr.stdout).toMatch(new RegExp(`^\\s+address\\s+${served.address}$`, 'm'));
    const fromStrata = await run(process.execPath, [STRATA, '-a', d.address, 'plugins', 'ls', '-d', 'id==remote']);
    expect(fromStrata.code, fromStrata.stderr).toBe(0);
    // Line for line the same (ctr lists the exports in Go's random map order, strata sorted).
    const lines = (out: string) => out.split('\n').sort();
    expect(lines(fromStrata.stdout)).toEqual(lines(fromCtr.stdout));
    // A plugin without capabilities has no Capabilities line, in both.
    const plain = await ctr(d.address, ['plugins', 'ls', '-d', 'id==plain']);
    expect(plain.stdout).toContain('ID:');
    expect(plain.stdout).not.toContain('Capabilities:');
  });
});

describe('honouring declared capabilities', () => {
  it('treats a proxy snapshotter declaring a capability as having it, through the namespaced layer too', async () => {
    const tmp = await tempDir('strata-caps-load-');
    const set = await PluginSet.load(
      {
        root: join(tmp.path, 'root'),
        state: join(tmp.path, 'state'),
        address: join(tmp.path, 'unused.sock'),
        log: silentLogger,
        configFor: (_uri, defaults) => defaults,
        extra: proxyRegistrations({
          remote: { type: 'snapshot', address: served.address, capabilities: [SnapshotterCapability.Rebase] },
          plain: { type: 'snapshot', address: served.address },
        }),
      },
      [],
    );
    const local = await openLocalContentStore(join(tmp.path, 'content'));
    const md = MetadataStore.open(join(tmp.path, 'meta.db'), local);
    try {
      const remote = set.get<Snapshotter>(PluginType.Snapshot, 'remote');
      const plain = set.get<Snapshotter>(PluginType.Snapshot, 'plain');
      expect(hasCapability(remote, SnapshotterCapability.Rebase)).toBe(true);
      expect(hasCapability(remote, SnapshotterCapability.RemapIds)).toBe(false);
      expect(hasCapability(plain, SnapshotterCapability.Rebase)).toBe(false);
      // The loaded entry reports what the instance has.
      expect(set.loaded.find((p) => p.registration.id === 'remote')!.meta.capabilities).toEqual(['rebase']);
      // What the daemon's workflows hold is the namespaced layer bound to a namespace: it has the backend's.
      const bound = md.addSnapshotter('remote', remote).bind({ namespace: 'caps' });
      expect(hasCapability(bound, SnapshotterCapability.Rebase)).toBe(true);
      expect(hasCapability(md.addSnapshotter('plain', plain).bind({ namespace: 'caps' }), SnapshotterCapability.Rebase)).toBe(false);
      // And it is the real proxied backend behind it.
      await bound.prepare('k', '');
      expect((await bound.stat('k')).kind).toBe('active');
      await bound.remove('k');
      await md.snapshotters.get('remote')!.settled();
    } finally {
      await set.close(silentLogger);
      md.close();
      await tmp.cleanup();
    }
  });

  it('fails the plugin, naming it, when its platform cannot be parsed', async () => {
    const tmp = await tempDir('strata-caps-bad-');
    try {
      const set = await PluginSet.load(
        {
          root: join(tmp.path, 'root'),
          state: join(tmp.path, 'state'),
          address: join(tmp.path, 'unused.sock'),
          log: silentLogger,
          configFor: (_uri, defaults) => defaults,
          extra: proxyRegistrations({ odd: { type: 'snapshot', address: served.address, platform: 'linux/*' } }),
        },
        [],
      );
      const entry = set.loaded.find((p) => p.registration.id === 'odd')!;
      expect(entry.status.state).toBe('error');
      expect(entry.status.state === 'error' && entry.status.error.message).toMatch(/^proxy plugin odd: platform: .*wildcards/);
      await set.close(silentLogger);
    } finally {
      await tmp.cleanup();
    }
  });
});
