/**
 * Parallel unpack in a real stratad: `strata image pull` from a docker-registry on loopback with containerd
 * 2.2's `max_concurrent_unpacks` under its 2.x section name, against a daemon that unpacks in order; and the
 * key's validation.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProxySnapshotter } from '../../src/api/clients/snapshotter.js';
import { chainIDs } from '../../src/images/manifest.js';
import { withTempMount } from '../../src/mount/index.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, type BuiltImage } from '../helpers/images.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { run } from '../helpers/ctr.js';
import { STRATA } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { readTree } from '../helpers/tree.js';
import { whiteoutLayerSpecs } from '../helpers/whiteout-image.js';

const NS = 'punpack';
let t: TempDir;
let registry: StartedRegistry;
let image: BuiltImage;
let ref: string;

const section = (value: string) => `[plugins."io.containerd.transfer.v1.local"]\nmax_concurrent_unpacks = ${value}\n`;

beforeAll(async () => {
  t = await tempDir('strata-punpack-daemon-');
  registry = await startRegistry({ accessLog: true });
  image = await buildImage(t.path, { name: 'punpack/whiteouts:1', platforms: [{ layers: await whiteoutLayerSpecs() }] });
  await registry.pushOciLayout(image.layoutDir, 'punpack/whiteouts:1');
  ref = `${registry.host}/punpack/whiteouts:1`;
}, 120_000);

afterAll(async () => {
  await stopAll();
  await stopAllRegistries();
  await t?.cleanup();
});

/** Pulls the image into a daemon, returns the top layer's tree and the records' parents. */
async function pullAndRead(d: StartedDaemon) {
  const r = await run(process.execPath, [STRATA, '-a', d.address, '-n', NS, 'image', 'pull', '--plain-http', ref]);
  expect(r.code, r.stderr).toBe(0);
  const chain = chainIDs(image.manifests[0]!.layers.map((l) => l.diffID));
  const sn = new ProxySnapshotter(d.address, 'overlayfs', NS);
  try {
    const parents = new Map<string, string>();
    await sn.walk((i) => void parents.set(i.name, i.parent));
    const mounts = await sn.view('tree', chain[chain.length - 1]!);
    try {
      return { chain, parents, tree: await withTempMount(mounts, (root) => readTree(root)) };
    } finally {
      await sn.remove('tree');
    }
  } finally {
    await sn.close();
  }
}

describe('parallel unpack in stratad', () => {
  it('a pull with max_concurrent_unpacks = 4 gives the same snapshots and tree as one that unpacks in order', async () => {
    const inOrder = await pullAndRead(await startDaemon({ config: section('1') }));
    const parallel = await pullAndRead(await startDaemon({ config: section('4') }));
    expect(parallel.tree).toEqual(inOrder.tree);
    expect(parallel.tree['/o/old']).toBeUndefined(); // the comparison compares whiteouts that took effect
    expect(parallel.tree['/o/new']?.type).toBe('file');
    for (const p of [inOrder, parallel]) {
      p.chain.forEach((c, i) => expect(p.parents.get(c)).toBe(i === 0 ? '' : p.chain[i - 1]));
      expect(p.parents.size).toBe(p.chain.length); // no extraction snapshot left
    }
  }, 180_000);

  it('refuses a max_concurrent_unpacks that is not a whole number: the transfer plugin reports an error', async () => {
    const d = await startDaemon({ config: section('"many"') });
    const r = await run(process.execPath, [STRATA, '-a', d.address, 'plugins', 'ls']);
    expect(r.code, r.stderr).toBe(0);
    const line = r.stdout.split('\n').find((l) => l.includes('io.containerd.transfer.v1') && /\bimages\b/.test(l));
    expect(line).toMatch(/error/);
  }, 60_000);
});
