/**
 * The namespaced layer in front of every snapshotter, seen from both sides: clients of stratad, and the backend
 * (a `stratad serve-snapshotter` behind `[proxy_plugins]`, inspected directly on its own socket).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { serveSnapshotter, type ServedBackend } from '../helpers/serve-snapshotter.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { kindOf } from '../helpers/errors.js';
import { ProxySnapshotter } from '../../src/api/clients/snapshotter.js';
import { StrataError } from '../../src/core/errdefs.js';
import type { Info } from '../../src/snapshots/types.js';

let d: StartedDaemon;
let served: ServedBackend;
let dir: TempDir;
/** The backend as the daemon sees it: no namespaces, backend keys. */
let backend: ProxySnapshotter;
const sn = (ns: string) => new ProxySnapshotter(d.address, 'remote', ns);

async function backendInfos(): Promise<Info[]> {
  const out: Info[] = [];
  await backend.walk((i) => void out.push(i));
  return out;
}

beforeAll(async () => {
  dir = await tempDir('strata-ns-snap-');
  await mkdir(join(dir.path, 'root'));
  served = await serveSnapshotter('native', join(dir.path, 'root'), join(dir.path, 'sn.sock'));
  backend = new ProxySnapshotter(served.address, 'remote');
  d = await startDaemon({ config: `[proxy_plugins.remote]\ntype = "snapshot"\naddress = "${served.address}"\n` });
});

afterAll(async () => {
  await backend?.close();
  await stopAll();
  await served?.stop();
  await d?.dir.cleanup();
  await dir?.cleanup();
});

describe('namespaced snapshots', () => {
  it('gives each namespace its own key space and passes the backend only namespaced keys', async () => {
    await sn('ns-a').prepare('k1', '');
    await sn('ns-b').prepare('k1', '');
    expect((await sn('ns-a').stat('k1')).kind).toBe('active');
    await sn('ns-a').commit('c1', 'k1');
    expect((await sn('ns-a').stat('c1')).kind).toBe('committed');
    expect((await sn('ns-b').stat('k1')).kind).toBe('active');
    expect(await kindOf(sn('ns-b').stat('c1'))).toBe('not found');
    const keys = (await backendInfos()).map((i) => i.name);
    expect(keys).toEqual(expect.arrayContaining([expect.stringMatching(/^ns-a\/\d+\/c1$/), expect.stringMatching(/^ns-b\/\d+\/k1$/)]));
    await sn('ns-b').remove('k1');
    await sn('ns-a').remove('c1');
    // Remove drops the records; the backend's data goes afterwards, all of it by the time Cleanup returns.
    await sn('ns-a').cleanup();
    expect(await backendInfos()).toEqual([]);
  });

  it('keeps labels in the daemon and hands the backend only the inherited ones', async () => {
    const labels = {
      'containerd.io/snapshot.ref': 'sha256:layer',
      'containerd.io/snapshot/remote.source': 'registry.example/x',
      'com.example.private': 'stays in the daemon',
    };
    await sn('labels').prepare('k', '', { labels });
    expect((await sn('labels').stat('k')).labels).toEqual(labels);
    const [b] = await backendInfos();
    expect(b!.labels).toEqual({
      'containerd.io/snapshot.ref': 'sha256:layer',
      'containerd.io/snapshot/remote.source': 'registry.example/x',
    });
    // An update of an inherited label reaches the backend too.
    await sn('labels').update({ name: 'k', labels: { 'containerd.io/snapshot/remote.source': 'other' } }, ['labels.containerd.io/snapshot/remote.source']);
    const [b2] = await backendInfos();
    expect(b2!.labels['containerd.io/snapshot/remote.source']).toBe('other');
    expect((await sn('labels').stat('k')).labels['com.example.private']).toBe('stays in the daemon');
    await sn('labels').remove('k');
  });

  it('checks parents and children within the namespace', async () => {
    await sn('tree').prepare('base-a', '');
    await sn('tree').commit('base', 'base-a');
    await sn('tree').prepare('child', 'base');
    expect(await kindOf(sn('tree').remove('base'))).toBe('failed precondition');
    expect(await kindOf(sn('other').prepare('x', 'base'))).toBe('not found');
    expect(await kindOf(sn('tree').prepare('child', 'base'))).toBe('already exists');
    expect(await kindOf(sn('tree').prepare('y', 'child'))).toBe('invalid argument');
    expect(await kindOf(sn('tree').commit('base', 'child'))).toBe('already exists');
    expect(await kindOf(sn('tree').commit('z', 'missing'))).toBe('not found');
    await sn('tree').remove('child');
    await sn('tree').remove('base');
  });

  it('attaches snapshots created under a lease, following a commit to its name', async () => {
    const c = d.client('leased');
    await c.call(c.leases, c.leases.create, { id: 'unpack', labels: {} });
    const leased = new ProxySnapshotter(d.address, 'remote', 'leased');
    // The lease header: a ProxySnapshotter carries only the namespace, so attach through the client's metadata.
    const lc = d.client('leased', 'unpack');
    await lc.call(lc.snapshots, lc.snapshots.prepare, { snapshotter: 'remote', key: 'extract', parent: '', labels: {} });
    let res = await c.call(c.leases, c.leases.listResources, { id: 'unpack' });
    expect(res.resources).toEqual([{ id: 'extract', type: 'snapshots/remote' }]);
    await lc.call(lc.snapshots, lc.snapshots.commit, { parent: '', snapshotter: 'remote', name: 'layer', key: 'extract', labels: {} });
    res = await c.call(c.leases, c.leases.listResources, { id: 'unpack' });
    expect(res.resources).toEqual([{ id: 'layer', type: 'snapshots/remote' }]);
    await leased.remove('layer');
    expect((await c.call(c.leases, c.leases.listResources, { id: 'unpack' })).resources).toEqual([]);
  });

  it('refuses to delete a namespace that still has snapshots', async () => {
    await sn('occupied').prepare('k', '');
    const c = d.client('default');
    const err = await c.call(c.namespaces, c.namespaces.delete, { name: 'occupied' }).catch((e: StrataError) => e);
    expect((err as StrataError).kind).toBe('failed precondition');
    expect((err as StrataError).message).toMatch(/still has snapshots on "remote" snapshotter/);
    await sn('occupied').remove('k');
    await c.call(c.namespaces, c.namespaces.delete, { name: 'occupied' });
  });

  it('publishes snapshot events', async () => {
    const c = d.client('events');
    const stream = c.events.subscribe({ filters: ['namespace==events'] }, c.metadata());
    const topics: string[] = [];
    const got = new Promise<void>((resolve) =>
      stream.on('data', (e: { topic: string }) => {
        topics.push(e.topic);
        if (topics.length === 3) resolve();
      }),
    );
    stream.on('error', () => undefined);
    await new Promise((r) => setTimeout(r, 100));
    await sn('events').prepare('k', '');
    await sn('events').commit('c', 'k');
    await sn('events').remove('c');
    await got;
    stream.cancel();
    expect(topics).toEqual(['/snapshot/prepare', '/snapshot/commit', '/snapshot/remove']);
  });

  it('reports an unknown snapshotter as invalid argument', async () => {
    expect(await kindOf(new ProxySnapshotter(d.address, 'nope', 'default').stat('x'))).toBe('invalid argument');
  });
});
