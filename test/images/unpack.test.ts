/**
 * The unpacker on its own, in process, over a real overlay snapshotter and a real content store: layers in
 * order by chainID, layers already there skipped, the remote-snapshot protocol, and failures that leave no
 * extraction snapshot behind.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openLocalContentStore } from '../../src/content/local.js';
import type { ContentStore } from '../../src/content/types.js';
import { MetadataStore } from '../../src/metadata/index.js';
import { alreadyExists } from '../../src/core/errdefs.js';
import { WalkingDiffer } from '../../src/diff/walking.js';
import { chainIDs } from '../../src/images/manifest.js';
import { unpackLayers } from '../../src/images/unpack.js';
import { withTempMount } from '../../src/mount/index.js';
import { openOverlaySnapshotter } from '../../src/snapshots/overlay/index.js';
import { type SnapshotOpts, type Snapshotter } from '../../src/snapshots/types.js';
import { LABEL_SNAPSHOT_REF } from '../../src/core/labels.js';
import { buildLayer, type BuiltLayer } from '../helpers/images.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { kindOf } from '../helpers/errors.js';

let dir: TempDir;
let sn: Snapshotter;
let content: ContentStore;
let md: MetadataStore;
const differ = new WalkingDiffer({});

async function put(layer: BuiltLayer): Promise<void> {
  const w = await content.writer({ ref: layer.descriptor.digest });
  await w.write(layer.blob);
  await w.commit(layer.blob.length, layer.descriptor.digest).catch(() => undefined);
  await w.close();
}

beforeAll(async () => {
  dir = await tempDir();
  sn = await openOverlaySnapshotter(join(dir.path, 'overlay'));
  md = MetadataStore.open(join(dir.path, 'meta.db'), await openLocalContentStore(join(dir.path, 'content')));
  content = md.content.bind({ namespace: 'default' });
});

afterAll(async () => {
  await sn.close();
  md.close();
  await dir.cleanup();
});

const keys = async (s: Snapshotter) => {
  const out: string[] = [];
  await s.walk((i) => void out.push(i.name));
  return out.sort();
};

describe('unpackLayers', () => {
  it('commits one snapshot per layer under its chainID, and skips what is there on a second run', async () => {
    const layers = [
      await buildLayer({ entries: [{ path: 'a', content: 'A' }] }),
      await buildLayer({ compression: 'zstd', entries: [{ path: 'b', content: 'B' }] }),
    ];
    for (const l of layers) await put(l);
    const diffIDs = layers.map((l) => l.diffID);
    const events: string[] = [];
    const r = await unpackLayers(sn, differ, content, layers.map((l) => l.descriptor), diffIDs, {
      snapshotterName: 'overlayfs',
      onProgress: (_l, status) => events.push(status),
    });
    const chain = chainIDs(diffIDs);
    expect(r).toEqual({ chainID: chain[1], extracted: 2, remote: 0, parallel: false });
    expect(events).toEqual(['unpacking', 'unpacked', 'unpacking', 'unpacked']);
    expect(await keys(sn)).toEqual([...chain].sort());

    const again: string[] = [];
    const r2 = await unpackLayers(sn, differ, content, layers.map((l) => l.descriptor), diffIDs, {
      snapshotterName: 'overlayfs',
      onProgress: (_l, status) => again.push(status),
    });
    expect(r2).toEqual({ chainID: chain[1], extracted: 0, remote: 0, parallel: false });
    expect(again).toEqual(['exists', 'exists']);
  });

  it('a diffID that does not match the config fails, and no extraction snapshot is left', async () => {
    const layer = await buildLayer({ entries: [{ path: 'c', content: 'C' }] });
    await put(layer);
    const wrong = `sha256:${'0'.repeat(64)}`;
    const before = await keys(sn);
    const err = unpackLayers(sn, differ, content, [layer.descriptor], [wrong], { snapshotterName: 'overlayfs' });
    expect(await kindOf(err)).toBe('failed precondition');
    expect(await keys(sn)).toEqual(before);
  });

  it('the remote-snapshot protocol: ALREADY_EXISTS on the labelled prepare means the layer is there (no blob read)', async () => {
    // A lazy-pull snapshotter emulated over the real overlay one: when asked to prepare with
    // containerd.io/snapshot.ref, it makes the committed snapshot itself and answers ALREADY_EXISTS.
    const layer = await buildLayer({ entries: [{ path: 'remote', content: 'lazy' }] });
    const chainID = chainIDs([layer.diffID])[0]!;
    const prepares: string[] = [];
    const remote: Snapshotter = Object.create(sn, {
      prepare: {
        value: async (key: string, parent: string, opts?: SnapshotOpts) => {
          prepares.push(key);
          const ref = opts?.labels?.[LABEL_SNAPSHOT_REF];
          if (ref) {
            const tmp = `remote-${ref}`;
            const mounts = await sn.prepare(tmp, parent);
            await withTempMount(mounts, async (root) => {
              const { writeFile } = await import('node:fs/promises');
              await writeFile(join(root, 'remote'), 'lazy');
            });
            await sn.commit(ref, tmp);
            throw alreadyExists(`snapshot ${ref}`);
          }
          return sn.prepare(key, parent, opts);
        },
      },
    });
    // The blob is NOT in the content store: reading it would fail.
    const r = await unpackLayers(remote, differ, content, [layer.descriptor], [layer.diffID], { snapshotterName: 'overlayfs' });
    expect(r).toEqual({ chainID, extracted: 0, remote: 1, parallel: false });
    expect(prepares).toHaveLength(1);
    expect(prepares[0]).toMatch(new RegExp(`^extract-\\S+ ${chainID}$`));
    const view = await sn.view('check-remote', chainID);
    try {
      await withTempMount(view, async (root) => expect(await readFile(join(root, 'remote'), 'utf8')).toBe('lazy'));
    } finally {
      await sn.remove('check-remote');
    }
  });

  it('waits for each layer blob (pipelined pulls) before extracting it', async () => {
    const layers = [await buildLayer({ entries: [{ path: 'p1', content: '1' }] }), await buildLayer({ entries: [{ path: 'p2', content: '2' }] })];
    const order: string[] = [];
    const r = await unpackLayers(sn, differ, content, layers.map((l) => l.descriptor), layers.map((l) => l.diffID), {
      snapshotterName: 'overlayfs',
      ready: async (i) => {
        order.push(`ready ${i}`);
        await put(layers[i]!);
      },
      onProgress: (l, status) => order.push(`${status} ${layers.findIndex((x) => x.descriptor.digest === l.digest)}`),
    });
    expect(r.extracted).toBe(2);
    expect(order).toEqual(['ready 0', 'unpacking 0', 'unpacked 0', 'ready 1', 'unpacking 1', 'unpacked 1']);
  });
});

