/**
 * Concurrent pulls of one image in one stratad share their work, as containerd's do through its content
 * store's ingest locks: N `strata image pull` processes started at once against one daemon make the
 * registry serve every blob once (counted from a real docker-registry's access log), all succeed with the
 * same image, and leave one copy of each blob, one snapshot chain and no ingest, extraction snapshot or
 * lease behind.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openLocalContentStore } from '../../src/content/local.js';
import { WalkingDiffer } from '../../src/diff/walking.js';
import { SharedWork } from '../../src/images/inflight.js';
import { chainIDs } from '../../src/images/manifest.js';
import { pull } from '../../src/images/pull.js';
import { createResolver } from '../../src/remotes/resolver.js';
import { generateLeaseId, MetadataStore } from '../../src/metadata/index.js';
import { openOverlaySnapshotter } from '../../src/snapshots/overlay/index.js';
import { run } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { servedBlobs } from '../helpers/fleet.js';
import { buildOciLayout, makeLayerTar, sha256, type OciLayout } from '../helpers/oci-layout.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { listContent, listSnapshots, pullImage } from '../helpers/transfer.js';

const N = 8;

let tmp: TempDir;
let reg: StartedRegistry;
let d: StartedDaemon;
let image: OciLayout;
let diffIDs: string[];

const strata = (args: string[], namespace: string) =>
  run(STRATA, ['--address', d.address, '--namespace', namespace, ...args], { timeoutMs: 120_000 });

beforeAll(async () => {
  tmp = await tempDir('strata-shared-pull-');
  // An incompressible layer of several MiB (so the pulls overlap while it downloads) and a small one on top.
  const big = await makeLayerTar({ big: randomBytes(12 << 20) });
  const small = await makeLayerTar({ small: randomBytes(4096) });
  diffIDs = [sha256(big), sha256(small)];
  image = await buildOciLayout(join(tmp.path, 'image'), { layers: [big, small], refName: 'v1' });
  reg = await startRegistry({ accessLog: true });
  await reg.pushOciLayout(image.dir, 'shared/app:v1');
  d = await startDaemon({ logLevel: 'info' });
}, 120_000);

afterAll(async () => {
  await stopAll();
  await stopAllRegistries();
  await tmp?.cleanup();
});

/** Blob GETs the registry answered with the blob, by digest. */
function blobGets(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const b of servedBlobs(reg.logs())) {
    if (b.method !== 'GET' || (b.status !== 200 && b.status !== 206)) continue;
    counts.set(b.digest, (counts.get(b.digest) ?? 0) + 1);
  }
  return counts;
}

describe('concurrent pulls of one image in one daemon', () => {
  it('fetch every blob once, all succeed with the same image, and leave one copy of each blob and one snapshot chain', async () => {
    const ns = 'shared';
    const ref = `${reg.host}/shared/app:v1`;
    const results = await Promise.all(Array.from({ length: N }, () => strata(['image', 'pull', '--plain-http', '--quiet', ref], ns)));
    for (const r of results) expect(r, r.stderr).toMatchObject({ code: 0 });
    const lines = new Set(results.map((r) => r.stdout.trim()));
    expect([...lines]).toEqual([`${ref} ${image.manifest.digest}`]);

    // The registry served each blob once (the manifest is fetched by digest as a blob-like GET on
    // /manifests/, which is not counted here: resolution is per pull, as in containerd).
    const gets = blobGets();
    const wanted = [image.config.digest, ...image.layers.map((l) => l.digest)];
    expect(Object.fromEntries(wanted.map((dg) => [dg, gets.get(dg) ?? 0]))).toEqual(Object.fromEntries(wanted.map((dg) => [dg, 1])));

    // Nothing left behind: each blob once in the store, no ingest, one committed chain, no extraction
    // snapshot, no transfer lease.
    const c = d.client(ns);
    const content = await listContent(c);
    const digests = content.map((i) => i.digest).sort();
    expect(digests).toEqual([image.manifest.digest, ...wanted].sort());
    const ls = await strata(['content', 'ls', '--quiet'], ns);
    expect(ls.code, ls.stderr).toBe(0);
    expect(ls.stdout.trim().split('\n').sort()).toEqual(digests);
    const { statuses } = await c.call(c.content, c.content.listStatuses, { filters: [] });
    expect(statuses).toEqual([]);
    const snaps = await listSnapshots(c);
    const chain = chainIDs(diffIDs);
    expect(snaps.map((s) => ({ name: s.name, parent: s.parent })).sort((a, b) => a.name.localeCompare(b.name))).toEqual(
      [
        { name: chain[0]!, parent: '' },
        { name: chain[1]!, parent: chain[0]! },
      ].sort((a, b) => a.name.localeCompare(b.name)),
    );
    const leases = await strata(['leases', 'ls', '--quiet'], ns);
    expect(leases.code, leases.stderr).toBe(0);
    expect(leases.stdout.trim()).toBe('');
  }, 180_000);

  it('unpack each layer once across concurrent transfer-service pulls in another namespace, from the blobs already on disk', async () => {
    const before = blobGets();
    const c = d.client('shared-2');
    const ref = `${reg.host}/shared/app:v1`;
    const plain = { registry: { plainHttp: true, username: '', secret: '', hostsDir: '', maxConcurrent: 0 } };
    const runs = await Promise.all(Array.from({ length: N }, () => pullImage(c, ref, plain)));
    for (const progress of runs) {
      expect(progress.find((p) => p.status === 'pulled')).toMatchObject({ ref, detail: image.manifest.digest });
    }
    // Every layer extracted by exactly one of the pulls; the others found it committed.
    const unpacked = runs.flat().filter((p) => p.kind === 'layer' && p.status === 'unpacked').map((p) => p.ref);
    expect(unpacked.sort()).toEqual(image.layers.map((l) => l.digest).sort());
    // The bytes were on disk (another namespace's): the registry served no blob again.
    expect(blobGets()).toEqual(before);
    expect((await listSnapshots(c)).map((s) => s.name).sort()).toEqual(chainIDs(diffIDs).sort());
    const { statuses } = await c.call(c.content, c.content.listStatuses, { filters: [] });
    expect(statuses).toEqual([]);
  }, 180_000);
});

describe('shared work in process', () => {
  it("keeps every blob and snapshot a pull used in that pull's own lease, whichever pull did the work", async () => {
    const local = await openLocalContentStore(join(tmp.path, 'inproc', 'content'));
    const md = MetadataStore.open(join(tmp.path, 'inproc', 'meta.db'), local);
    const overlay = await openOverlaySnapshotter(join(tmp.path, 'inproc', 'overlay'));
    md.addSnapshotter('overlayfs', overlay);
    try {
      const shared = new SharedWork();
      const differ = new WalkingDiffer({});
      const namespace = 'leases';
      const before = blobGets();
      const leases = Array.from({ length: 4 }, () => md.leases.create(namespace, generateLeaseId()).id);
      const results = await Promise.all(
        leases.map((lease) => {
          const ctx = { namespace, lease };
          return pull(createResolver({ plainHttp: true }), `${reg.host}/shared/app:v1`, { content: md.content.bind(ctx), images: md.images.bind(ctx) }, {
            shared,
            unpack: {
              snapshotter: md.snapshotters.get('overlayfs')!.bind(ctx),
              snapshotterName: 'overlayfs',
              applier: differ,
              protect: (chainID) => md.leases.addResource(namespace, lease, { type: 'snapshots/overlayfs', id: chainID }),
              exclusive: (chainID, fn) => shared.unpack(chainID, fn),
            },
          });
        }),
      );
      const chain = chainIDs(diffIDs);
      for (const r of results) expect(r.unpacked?.chainID).toBe(chain[1]);
      expect(results.reduce((n, r) => n + (r.unpacked?.extracted ?? 0), 0)).toBe(2);
      // One download per blob for this store too.
      const after = blobGets();
      for (const dg of [image.config.digest, ...image.layers.map((l) => l.digest)]) expect((after.get(dg) ?? 0) - (before.get(dg) ?? 0)).toBe(1);
      for (const lease of leases) {
        const held = md.leases.listResources(namespace, lease).map((r) => `${r.type} ${r.id}`);
        expect(held).toEqual(
          expect.arrayContaining([
            ...[image.manifest, image.config, ...image.layers].map((b) => `content ${b.digest}`),
            ...chain.map((c) => `snapshots/overlayfs ${c}`),
          ]),
        );
      }
      expect(shared.size).toEqual({ downloads: 0, unpacks: 0 });
      for (const lease of leases) md.leases.delete(namespace, lease);
    } finally {
      md.close();
      await overlay.close();
    }
  }, 120_000);

  it('lets the waiters of a failed download try themselves, one at a time, each with its own outcome', async () => {
    const shared = new SharedWork();
    let running = 0;
    let most = 0;
    let calls = 0;
    const attempt = (outcome: 'fail' | 'ok') => async () => {
      calls++;
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setTimeout(r, 20));
      running--;
      if (outcome === 'fail') throw Object.assign(new Error('registry unavailable'), { code: 'unavailable' });
      return 'done';
    };
    const waits: number[] = [];
    const results = await Promise.allSettled([
      shared.download('sha256:x', attempt('fail')),
      shared.download('sha256:x', attempt('fail'), () => waits.push(1)),
      shared.download('sha256:x', attempt('ok'), () => waits.push(2)),
      shared.download('sha256:x', attempt('ok'), () => waits.push(3)),
    ]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'fulfilled', 'fulfilled']);
    expect(waits.sort()).toEqual([1, 2, 3]);
    expect(calls).toBe(4);
    // Never two attempts of one digest at once while it was failing (the last waiter ran after a success,
    // alongside nothing).
    expect(most).toBe(1);
    expect(shared.size).toEqual({ downloads: 0, unpacks: 0 });
  });

  it('runs one unpack of a chain at a time, and the next one in after a failure still runs', async () => {
    const shared = new SharedWork();
    const order: string[] = [];
    const step = (name: string, fail = false) => async () => {
      order.push(`${name} start`);
      await new Promise((r) => setTimeout(r, 10));
      order.push(`${name} end`);
      if (fail) throw new Error(`${name} failed`);
      return name;
    };
    const results = await Promise.allSettled([
      shared.unpack('overlayfs\0ns\0sha256:c', step('a', true)),
      shared.unpack('overlayfs\0ns\0sha256:c', step('b')),
      shared.unpack('overlayfs\0ns\0sha256:other', step('c')),
    ]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled', 'fulfilled']);
    expect(order.indexOf('b start')).toBeGreaterThan(order.indexOf('a end'));
    expect(order.indexOf('c start')).toBeLessThan(order.indexOf('a end'));
    expect(shared.size).toEqual({ downloads: 0, unpacks: 0 });
  });
});
