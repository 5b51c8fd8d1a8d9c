/**
 * Parallel unpack (containerd 2.2's max_concurrent_unpacks + the snapshotter's rebase capability) in process,
 * over the real namespaced layer, real overlay snapshotters and real overlay mounts, without containerd 2.2's
 * faults: whiteouts of a layer extracted without its parent still hide what lies below (#13030), a remote
 * snapshotter is asked about each layer on its committed parent and what it provides is never fetched
 * (#13264), and a failed unpack leaves nothing for the collector to miss.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readdir } from 'node:fs/promises';
import { ProxySnapshotter } from '../../src/api/clients/snapshotter.js';
import { serveSnapshotter } from '../helpers/serve-snapshotter.js';
import { join } from 'node:path';
import { alreadyExists, unavailable } from '../../src/core/errdefs.js';
import { LABEL_SNAPSHOT_REF } from '../../src/core/labels.js';
import { LABEL_SNAPSHOT_REBASE } from '../../src/snapshots/types.js';
import type { Descriptor } from '../../src/core/descriptor.js';
import type { ContentStore } from '../../src/content/types.js';
import type { Applier } from '../../src/diff/types.js';
import { WalkingDiffer } from '../../src/diff/walking.js';
import { chainIDs } from '../../src/images/manifest.js';
import { unpackLayers, type UnpackResult } from '../../src/images/unpack.js';
import { withTempMount } from '../../src/mount/index.js';
import { hasCapability, SnapshotterCapability, type SnapshotOpts, type Snapshotter } from '../../src/snapshots/types.js';
import { intercept, openStore, paths, type Store } from '../gc/harness.js';
import type { BuiltLayer } from '../helpers/images.js';
import { whiteoutLayers } from '../helpers/whiteout-image.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { kindOf } from '../helpers/errors.js';
import { readTree } from '../helpers/tree.js';

const NS = 'default';
const differ = new WalkingDiffer({});

async function put(content: ContentStore, layer: BuiltLayer): Promise<void> {
  const w = await content.writer({ ref: `put-${layer.descriptor.digest}` });
  await w.write(layer.blob);
  await w.commit(layer.blob.length, layer.descriptor.digest).catch(() => undefined);
  await w.close();
}

/** An applier that records how many layers it applies at once. */
function counting(inner: Applier): Applier & { max: number } {
  let now = 0;
  const out = {
    max: 0,
    apply: async (...args: Parameters<Applier['apply']>) => {
      now++;
      out.max = Math.max(out.max, now);
      try {
        return await inner.apply(...args);
      } finally {
        now--;
      }
    },
  };
  return out;
}

/** The tree of a committed chain as a container sees it (through a view). */
async function treeOf(sn: Snapshotter, chainID: string) {
  const key = `tree-${Math.random().toString(36).slice(2)}`;
  const mounts = await sn.view(key, chainID);
  try {
    return await withTempMount(mounts, (root) => readTree(root));
  } finally {
    await sn.remove(key);
  }
}

/** Closes a store once the namespaced layer's background removals are done. */
async function close(...stores: Store[]): Promise<void> {
  for (const s of stores) {
    await s.sn.settled();
    await s.close();
  }
}

async function unpackInto(
  s: Store,
  lease: string,
  layers: BuiltLayer[],
  opts: { max: number; applier?: Applier; fetched?: number[]; diffIDs?: string[]; withBlobs?: boolean },
): Promise<UnpackResult> {
  s.md.leases.create(NS, lease);
  const content = s.content(NS, lease);
  if (opts.withBlobs ?? true) for (const l of layers) await put(content, l);
  // Without the blobs up front, as a pull: a layer's blob comes in when the unpacker asks for it.
  const puts = new Map<number, Promise<void>>();
  const ready = async (i: number) => {
    if (!puts.has(i)) puts.set(i, put(content, layers[i]!));
    await puts.get(i);
  };
  return unpackLayers(s.snapshots(NS, lease), opts.applier ?? differ, content, layers.map((l) => l.descriptor), opts.diffIDs ?? layers.map((l) => l.diffID), {
    snapshotterName: 'overlayfs',
    maxConcurrentUnpacks: opts.max,
    protect: (chainID) => s.md.leases.addResource(NS, lease, { type: 'snapshots/overlayfs', id: chainID }),
    fetch: (i) => void opts.fetched?.push(i),
    ...(opts.withBlobs === false ? { ready } : {}),
  });
}

let dir: TempDir;
let layers: BuiltLayer[];
let chain: string[];
let reference: Awaited<ReturnType<typeof readTree>>;

beforeAll(async () => {
  dir = await tempDir();
  layers = await whiteoutLayers();
  chain = chainIDs(layers.map((l) => l.diffID));
  // The reference: the same image unpacked in order.
  const seq = await openStore(join(dir.path, 'in-order'));
  try {
    const r = await unpackInto(seq, 'l', layers, { max: 1 });
    expect(r).toMatchObject({ chainID: chain[5], extracted: 6, parallel: false });
    reference = await treeOf(seq.snapshots(NS), chain[5]!);
  } finally {
    await close(seq);
  }
}, 120_000);

afterAll(async () => {
  await dir?.cleanup();
});

describe('parallel unpack', () => {
  it('the in-order reference shows each whiteout case as a container expects', () => {
    // So that the comparison below compares something: the cases are really in the reference tree.
    expect(reference['/a/del']).toBeUndefined();
    expect(reference['/deep']?.sha256).toBeDefined();
    expect(reference['/o/old']).toBeUndefined();
    expect(reference['/o/sub']).toBeUndefined();
    expect(reference['/o/new']?.type).toBe('file');
    expect(reference['/w']).toBeUndefined();
    expect(reference['/f']?.type).toBe('dir');
    expect(reference['/f/inner']?.type).toBe('file');
    expect(reference['/d']?.type).toBe('dir');
    expect(reference['/d/x']).toBeUndefined();
    expect(reference['/d/again']?.type).toBe('file');
    expect(reference['/secret']).toBeUndefined();
    expect(reference['/tmp']?.mode).toBe('0o1777');
    expect(reference['/tmp/t2']?.type).toBe('file');
    expect(reference['/link']?.link).toBe('a/keep');
  });

  it('layers extracted without their parents and committed onto them give the same tree as an in-order unpack (#13030)', async () => {
    const s = await openStore(join(dir.path, 'parallel'));
    try {
      expect(hasCapability(s.snapshots(NS), SnapshotterCapability.Rebase)).toBe(true);
      const applier = counting(differ);
      const r = await unpackInto(s, 'l', layers, { max: 4, applier });
      expect(r).toEqual({ chainID: chain[5], extracted: 6, remote: 0, parallel: true });
      expect(applier.max).toBeGreaterThanOrEqual(2);
      // Same tree, contents, modes, owners, xattrs, links as the in-order unpack.
      expect(await treeOf(s.snapshots(NS), chain[5]!)).toEqual(reference);
      // The chain's records are right in both layers: each layer's parent is the one below it.
      const parents = new Map<string, string>();
      await s.snapshots(NS).walk((i) => void parents.set(i.name, i.parent));
      chain.forEach((c, i) => expect(parents.get(c)).toBe(i === 0 ? '' : chain[i - 1]));
      expect(parents.size).toBe(6); // no extraction snapshot left
      await s.sn.settled(); // the views' removals reach the backend in the background
      let backend = 0;
      await s.backend.walk((i) => {
        backend++;
        expect(i.kind).toBe('committed');
      });
      expect(backend).toBe(6);
    } finally {
      await close(s);
    }
  }, 120_000);

  it('each middle layer of the chain also mounts right on its own (rebased parents of every depth)', async () => {
    const seq = await openStore(join(dir.path, 'in-order'));
    const par = await openStore(join(dir.path, 'parallel'));
    try {
      for (const depth of [2, 3, 4]) {
        expect(await treeOf(par.snapshots(NS), chain[depth]!)).toEqual(await treeOf(seq.snapshots(NS), chain[depth]!));
      }
    } finally {
      await close(seq, par);
    }
  }, 120_000);

  it('a snapshotter without rebase, or max_concurrent_unpacks 1, unpacks in order', async () => {
    const s = await openStore(join(dir.path, 'no-rebase'), {
      wrapBackend: (b) => new Proxy(b, { get: (t, p) => (p === 'capabilities' ? [] : (Reflect.get(t, p, t) as unknown)) }),
    });
    try {
      expect(hasCapability(s.snapshots(NS), SnapshotterCapability.Rebase)).toBe(false);
      const applier = counting(differ);
      const r = await unpackInto(s, 'l', layers, { max: 4, applier });
      expect(r).toEqual({ chainID: chain[5], extracted: 6, remote: 0, parallel: false });
      expect(applier.max).toBe(1);
      expect(await treeOf(s.snapshots(NS), chain[5]!)).toEqual(reference);
    } finally {
      await close(s);
    }
  }, 120_000);

  it('a remote snapshotter is asked about each layer on its committed parent; what it provides is never fetched nor extracted (#13264)', async () => {
    // The "registry" the remote snapshotter reads from lazily: its own store with every blob.
    const source = await openStore(join(dir.path, 'remote-source'));
    const sourceContent = source.content(NS);
    for (const l of layers) await put(sourceContent, l);
    const claimed = new Set([chain[0], chain[1], chain[4]]);
    const asked: { chainID: string; parent: string }[] = [];
    const s = await openStore(join(dir.path, 'remote'), {
      // A remote snapshotter with the rebase capability (the case containerd 2.2 broke): asked to prepare a
      // layer it has (containerd.io/snapshot.ref), it commits it onto the parent it was given and answers
      // ALREADY_EXISTS.
      wrapBackend: (b) =>
        intercept(b, 'prepare', async (key: string, parent: string, opts?: SnapshotOpts) => {
          const ref = opts?.labels?.[LABEL_SNAPSHOT_REF];
          if (ref) asked.push({ chainID: ref, parent });
          if (ref && claimed.has(ref)) {
            const i = chain.indexOf(ref);
            const tmp = `remote-tmp-${i}`;
            const m = await b.prepare(tmp, parent);
            await differ.apply(layers[i]!.descriptor, m, sourceContent);
            await b.commit(`remote/${i}`, tmp, { labels: { [LABEL_SNAPSHOT_REF]: ref } });
            throw alreadyExists(`snapshot ${ref}`);
          }
          return b.prepare(key, parent, opts);
        }),
    });
    try {
      expect(hasCapability(s.snapshots(NS), SnapshotterCapability.Rebase)).toBe(true);
      const fetched: number[] = [];
      const r = await unpackInto(s, 'l', layers, { max: 4, fetched, withBlobs: false });
      expect(r).toEqual({ chainID: chain[5], extracted: 3, remote: 3, parallel: false });
      // Every layer was asked about, in order, each on its parent's chainID (never without one).
      expect(asked.map((a) => a.chainID)).toEqual(chain);
      for (const [i, a] of asked.entries()) {
        if (i === 0) expect(a.parent).toBe('');
        else expect(a.parent).not.toBe('');
      }
      // The layers it provided were never fetched (nor read: their blobs are not in this store).
      expect([...new Set(fetched)].sort()).toEqual([2, 3, 5]);
      const content = s.content(NS);
      for (const i of [0, 1, 4]) expect(await kindOf(content.info(layers[i]!.descriptor.digest))).toBe('not found');
      // And the chain is whole: each provided layer recorded on its parent.
      const parents = new Map<string, string>();
      await s.snapshots(NS).walk((i) => void parents.set(i.name, i.parent));
      chain.forEach((c, i) => expect(parents.get(c)).toBe(i === 0 ? '' : chain[i - 1]));
      expect(await treeOf(s.snapshots(NS), chain[5]!)).toEqual(reference);
    } finally {
      await close(s, source);
    }
  }, 120_000);

  it('through a served overlayfs proxy plugin declaring rebase, layers are unpacked in parallel over gRPC; when it provides layers, the handshake holds', async () => {
    await mkdir(join(dir.path, 'served-root'));
    const served = await serveSnapshotter('overlayfs', join(dir.path, 'served-root'), join(dir.path, 'served.sock'));
    const source = await openStore(join(dir.path, 'served-source'));
    const sourceContent = source.content(NS);
    for (const l of layers) await put(sourceContent, l);
    let claiming = false;
    const fetchedByStore: number[][] = [];
    try {
      for (const claims of [false, true]) {
        claiming = claims;
        const s = await openStore(join(dir.path, `served-${claims ? 'claims' : 'plain'}`), {
          wrapBackend: () => {
            // As stratad loads `[proxy_plugins.x] capabilities = ["rebase"]`.
            const proxy = new ProxySnapshotter(served.address, 'served', undefined, [SnapshotterCapability.Rebase]);
            return intercept(proxy as Snapshotter, 'prepare', async (key: string, parent: string, opts?: SnapshotOpts) => {
              const ref = opts?.labels?.[LABEL_SNAPSHOT_REF];
              const i = ref ? chain.indexOf(ref) : -1;
              if (claiming && ref && (i === 0 || i === 2)) {
                const m = await proxy.prepare(`claim-tmp-${i}`, parent);
                await differ.apply(layers[i]!.descriptor, m, sourceContent);
                await proxy.commit(`claim/${i}`, `claim-tmp-${i}`, { labels: { [LABEL_SNAPSHOT_REF]: ref } });
                throw alreadyExists(`snapshot ${ref}`);
              }
              return proxy.prepare(key, parent, opts);
            });
          },
        });
        try {
          const fetched: number[] = [];
          const r = await unpackInto(s, 'l', layers, { max: 4, fetched, withBlobs: false });
          fetchedByStore.push([...new Set(fetched)].sort());
          if (claims) expect(r).toEqual({ chainID: chain[5], extracted: 4, remote: 2, parallel: false });
          else expect(r).toEqual({ chainID: chain[5], extracted: 6, remote: 0, parallel: true });
          expect(await treeOf(s.snapshots(NS), chain[5]!)).toEqual(reference);
          const parents = new Map<string, string>();
          await s.snapshots(NS).walk((i) => void parents.set(i.name, i.parent));
          chain.forEach((c, i) => expect(parents.get(c)).toBe(i === 0 ? '' : chain[i - 1]));
        } finally {
          await close(s);
          await (s.backend as ProxySnapshotter).close?.();
        }
      }
      expect(fetchedByStore).toEqual([[0, 1, 2, 3, 4, 5], [1, 3, 4, 5]]);
    } finally {
      await close(source);
      await served.stop();
    }
  }, 180_000);

  it('a prepare of an upper layer failing while the layers below extract fails the unpack and leaves no extraction snapshot', async () => {
    let unparented = 0;
    const s = await openStore(join(dir.path, 'prepare-fails'), {
      // The third layer prepared without a parent is refused (the prepares above the first run together).
      wrapBackend: (b) =>
        intercept(b, 'prepare', async (key: string, parent: string, opts?: SnapshotOpts) => {
          if (parent === '' && opts?.labels?.[LABEL_SNAPSHOT_REBASE] && ++unparented === 3) throw unavailable('backend refused the prepare');
          return b.prepare(key, parent, opts);
        }),
    });
    try {
      const err = await unpackInto(s, 'refused', layers, { max: 4 }).catch((e: unknown) => e);
      expect(await kindOf(Promise.reject(err))).toBe('unavailable');
      expect(String(err)).toContain('backend refused the prepare');
      // The commits start once every prepare has answered: here none was made, and every extraction snapshot
      // (the first layer's included) was removed after its extraction stopped.
      const left: string[] = [];
      await s.snapshots(NS).walk((i) => void left.push(`${i.kind} ${i.name}`));
      expect(left).toEqual([]);
      expect(unparented).toBeGreaterThanOrEqual(3);
    } finally {
      await close(s);
    }
  }, 120_000);

  it('a layer failing in the middle of a parallel unpack leaves no snapshot once its lease is gone and GC has run', async () => {
    const s = await openStore(join(dir.path, 'failing'));
    try {
      const diffIDs = layers.map((l) => l.diffID);
      diffIDs[3] = `sha256:${'0'.repeat(64)}`; // layer 3 does not match its config
      const err = unpackInto(s, 'doomed', layers, { max: 4, diffIDs });
      expect(await kindOf(err)).toBe('failed precondition');
      // Nothing half-done survives the failure itself: no extraction (active) snapshot is left.
      const kinds: string[] = [];
      await s.snapshots(NS).walk((i) => void kinds.push(i.kind));
      expect(kinds.every((k) => k === 'committed')).toBe(true);
      // What was committed is the lease's only; without the lease the collector takes all of it.
      s.md.leases.delete(NS, 'doomed');
      await s.collector.collect();
      const left: string[] = [];
      await s.snapshots(NS).walk((i) => void left.push(i.name));
      expect(left).toEqual([]);
      // The backend drops its data too (removals are batched in the background).
      const deadline = Date.now() + 10_000;
      let backend: string[] = [];
      do {
        backend = [];
        await s.backend.walk((i) => void backend.push(i.name));
        if (backend.length === 0) break;
        await new Promise((r) => setTimeout(r, 50));
      } while (Date.now() < deadline);
      expect(backend).toEqual([]);
      await s.backend.cleanup();
      expect(await readdir(paths(s.root).snapshotDirs)).toEqual([]);
    } finally {
      await close(s);
    }
  }, 120_000);
});

export type { Descriptor };
