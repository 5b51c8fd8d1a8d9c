/**
 * Content labels written by a pull, compared with the real containerd 1.6: the same image pulled from three
 * repositories of one docker-registry by `ctr image pull` into containerd and by stratad's transfer service
 * must leave the same `containerd.io/distribution.source.<host>` labels (host without its port, the
 * repositories merged and sorted) and the same `containerd.io/uncompressed` labels on every blob; a push reads
 * the label to mount blobs from their source repository (and writes none). Also the
 * content plugin's `root` export in introspection, as containerd's has it.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StrataClient } from '../../src/api/clients/strata.js';
import { ctrAt, startContainerd, stopAllContainerd, type StartedContainerd } from '../helpers/containerd.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, type BuiltImage } from '../helpers/images.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { collectProgress, listContent, pullImage } from '../helpers/transfer.js';

let d: StartedDaemon;
let reg: StartedRegistry;
let containerd: StartedContainerd;
let dir: TempDir;
let image: BuiltImage;

beforeAll(async () => {
  dir = await tempDir();
  [d, reg, containerd] = await Promise.all([startDaemon(), startRegistry(), startContainerd()]);
  image = await buildImage(dir.path, {
    basename: 'labels',
    platforms: [
      {
        layers: [
          { entries: [{ path: 'a', type: 'dir' }, { path: 'a/one', content: '1' }] },
          { compression: 'zstd', entries: [{ path: 'a/two', content: '2' }] },
        ],
      },
    ],
  });
  // Pushed under three repositories; pulled from two of them in an order that is not sorted.
  await reg.pushOciLayout(image.layoutDir, 'team/zeta:v1');
  await reg.pushOciLayout(image.layoutDir, 'alpha:v1');
  await reg.pushOciLayout(image.layoutDir, 'team/alpha:v1');
}, 120_000);

afterAll(async () => {
  await stopAll();
  await stopAllContainerd();
  await stopAllRegistries();
  await dir?.cleanup();
});

/** The containerd.io/* labels of every blob, by digest, except gc references (same in both by other tests). */
async function sourceAndDiffLabels(c: StrataClient): Promise<Record<string, Record<string, string>>> {
  const out: Record<string, Record<string, string>> = {};
  for (const info of await listContent(c)) {
    const kept = Object.fromEntries(
      Object.entries(info.labels).filter(([k]) => k.startsWith('containerd.io/distribution.source.') || k === 'containerd.io/uncompressed'),
    );
    out[info.digest] = kept;
  }
  return out;
}

describe('content labels after a pull, as containerd writes them', () => {
  it('distribution.source (port dropped, repositories merged and sorted) and uncompressed match ctr image pull on containerd', async () => {
    const refs = [`${reg.host}/team/zeta:v1`, `${reg.host}/alpha:v1`, `${reg.host}/team/alpha:v1`];
    for (const ref of refs) {
      const r = await ctrAt(containerd.address, ['image', 'pull', '--plain-http', ref], 'labels');
      expect(r.code, r.stderr + r.stdout).toBe(0);
    }
    const s = d.client('labels');
    for (const ref of refs) await pullImage(s, ref);

    const theirs = await sourceAndDiffLabels(new StrataClient(containerd.address, { namespace: 'labels' }));
    const ours = await sourceAndDiffLabels(s);
    expect(ours).toEqual(theirs);

    // What that is: the key has the host without the port, the value the sorted repository list.
    const m = image.manifests[0]!;
    const key = 'containerd.io/distribution.source.127.0.0.1';
    for (const digest of [image.target.digest, m.descriptor.digest, m.config.descriptor.digest, ...m.layers.map((l) => l.descriptor.digest)]) {
      expect(ours[digest]?.[key], digest).toBe('alpha,team/alpha,team/zeta');
    }
    for (const l of m.layers) expect(ours[l.descriptor.digest]!['containerd.io/uncompressed']).toBe(l.diffID);
  });

  it('a layer found already unpacked still gets its uncompressed label, computed from the blob', async () => {
    const c = d.client('relabel');
    const ref = `${reg.host}/alpha:v1`;
    await pullImage(c, ref);
    const layers = image.manifests[0]!.layers;
    // Drop the labels, then pull again: every snapshot exists, nothing is extracted.
    for (const l of layers) {
      await c.call(c.content, c.content.update, {
        info: { digest: l.descriptor.digest, size: 0, labels: {}, createdAt: undefined, updatedAt: undefined },
        updateMask: ['labels.containerd.io/uncompressed'],
      });
    }
    const before = new Map((await listContent(c)).map((i) => [i.digest, i.labels]));
    for (const l of layers) expect(before.get(l.descriptor.digest)!['containerd.io/uncompressed']).toBeUndefined();
    const progress = await pullImage(c, ref);
    expect(progress.filter((p) => p.kind === 'layer' && p.status === 'unpacked')).toEqual([]);
    const after = new Map((await listContent(c)).map((i) => [i.digest, i.labels]));
    for (const l of layers) expect(after.get(l.descriptor.digest)!['containerd.io/uncompressed']).toBe(l.diffID);
  });

  it('a push to another repository of the registry mounts every blob from the source the label names', async () => {
    const c = d.client('push-mount');
    await pullImage(c, `${reg.host}/team/zeta:v1`);
    const target = `${reg.host}/team/copy:v1`;
    const progress = await collectProgress(
      c.transfer.push(
        { ref: target, image: `${reg.host}/team/zeta:v1`, platforms: [], registry: { plainHttp: false, username: '', secret: '', hostsDir: '', maxConcurrent: 0 } },
        c.metadata(),
      ) as unknown as AsyncIterable<unknown>,
    );
    const m = image.manifests[0]!;
    const blobs = [m.config.descriptor.digest, ...m.layers.map((l) => l.descriptor.digest)];
    for (const dg of blobs) expect(progress.find((p) => p.ref === dg && p.status !== 'uploading')?.status, dg).toBe('mounted');
    // Pushing writes no label (containerd's pusher does not either).
    const labels = new Map((await listContent(c)).map((i) => [i.digest, i.labels]));
    for (const dg of blobs) expect(labels.get(dg)!['containerd.io/distribution.source.127.0.0.1']).toBe('team/zeta');
  });

  it('the content plugin exports its root in introspection, as containerd does', async () => {
    const rootOf = async (c: StrataClient) => {
      const { plugins } = await c.call(c.introspection, c.introspection.plugins, { filters: ['type==io.containerd.content.v1'] });
      return plugins.find((p) => p.id === 'content')?.exports['root'];
    };
    expect(await rootOf(new StrataClient(containerd.address))).toBe(join(containerd.root, 'io.containerd.content.v1.content'));
    expect(await rootOf(d.client())).toBe(join(d.root, 'io.containerd.content.v1.content'));
  });
});
