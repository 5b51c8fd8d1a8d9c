/**
 * The collector running back to back while work goes on: blobs written and ingests resumed under leases,
 * snapshot chains prepared and committed, images pulled from a registry and imported from archives, each in a
 * fresh namespace (so blobs are adopted from namespaces whose records are being collected at that moment). Every
 * operation must succeed and find its data afterwards; once the work is done and its leases and images are
 * deleted, one collection leaves the blob store and the snapshotter empty.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ContentStore } from '../../src/content/types.js';
import { isNotFound } from '../../src/core/errdefs.js';
import type { GCReport } from '../../src/gc/index.js';
import { chainIDs } from '../../src/images/manifest.js';
import type { Snapshotter } from '../../src/snapshots/types.js';
import type { Mount } from '../../src/core/mount.js';
import { buildImage, type BuiltImage } from '../helpers/images.js';
import { sha256 } from '../helpers/data.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { backendKeys, entries, fileBytes, filesUnder, inconsistencies, openStore, paths, SNAPSHOTTER, writeBlob, type Store } from './harness.js';

let dir: TempDir;
let reg: StartedRegistry;
let s: Store;
let pulled: BuiltImage;
let imported: BuiltImage;

beforeAll(async () => {
  dir = await tempDir('strata-gc-concurrency-');
  reg = await startRegistry();
  const layers = (tag: string) => [
    { entries: [{ path: 'etc/', type: 'dir' as const }, { path: `etc/${tag}-base`, content: randomBytes(30_000) }] },
    { entries: [{ path: `etc/${tag}-top`, content: randomBytes(20_000) }] },
    { compression: 'zstd' as const, entries: [{ path: `${tag}-last`, content: `last layer of ${tag}` }] },
  ];
  pulled = await buildImage(dir.path, { basename: 'pulled', platforms: [{ layers: layers('pulled') }] });
  await reg.pushOciLayout(pulled.layoutDir, 'app:1');
  imported = await buildImage(dir.path, { basename: 'imported', name: 'docker.io/library/imported:1', nestedIndex: true, platforms: [{ layers: layers('imported') }] });
  s = await openStore(join(dir.path, 'store'));
});

afterAll(async () => {
  await s?.close();
  await stopAllRegistries();
  await dir.cleanup();
});

async function readAll(c: ContentStore, digest: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of await c.read(digest)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const option = (m: Mount, name: string) => m.options.find((o) => o.startsWith(`${name}=`))?.slice(name.length + 1);
const upperOf = (mounts: Mount[]) => option(mounts[0]!, 'upperdir')!;
const lowersOf = (mounts: Mount[]) => option(mounts[0]!, 'lowerdir')!.split(':');

/** The layer directories of a committed chain, top first (through a view, removed afterwards). */
async function layerDirs(sn: Snapshotter, top: string): Promise<string[]> {
  const key = `verify-${randomBytes(4).toString('hex')}`;
  const mounts = await sn.view(key, top);
  try {
    return mounts[0]!.type === 'overlay' ? lowersOf(mounts) : [mounts[0]!.source];
  } finally {
    await sn.remove(key).catch((err: unknown) => {
      if (!isNotFound(err)) throw err; // collected already: it was not leased
    });
  }
}

describe('collecting while work goes on', () => {
  it('removes nothing in use, and everything once the work is done', async () => {
    // ---- the collector, back to back ----
    const reports: GCReport[] = [];
    let started = 0;
    let finished = 0;
    let stop = false;
    const waiters: { target: number; resolve: () => void }[] = [];
    const loop = (async () => {
      while (!stop) {
        started++;
        reports.push(await s.collector.collect());
        finished++;
        for (const w of waiters.splice(0)) {
          if (finished >= w.target) w.resolve();
          else waiters.push(w);
        }
        await new Promise((r) => setImmediate(r));
      }
    })();
    /** Resolves once a collection that started after this call has finished. */
    const nextCollection = () => new Promise<void>((resolve) => waiters.push({ target: started + 1, resolve }));

    // ---- blobs, resumed ingests and snapshot chains under leases ----
    const kept: { ns: string; name: string; blobs: { digest: string; data: Buffer }[]; top: string; files: [string, string] }[] = [];
    const worker = async (w: number, iterations: number) => {
      const ns = `work-${w}`;
      for (let i = 0; i < iterations; i++) {
        const lease = `lease-${w}-${i}`;
        s.md.leases.create(ns, lease);
        const c = s.content(ns, lease);
        const sn = s.snapshots(ns, lease);
        const blobs: { digest: string; data: Buffer }[] = [];
        for (let j = 0; j < 3; j++) {
          const data = randomBytes(8192 + j);
          blobs.push({ digest: await writeBlob(c, data), data });
        }
        const big = randomBytes(60_000);
        const ref = `upload-${i}`;
        let wr = await c.writer({ ref, total: big.length });
        await wr.write(big.subarray(0, 25_000));
        await wr.close();

        const m1 = await sn.prepare(`a-${i}`, '');
        await writeFile(join(m1[0]!.source, 'base-file'), `base ${w} ${i}`);
        await nextCollection();
        await sn.commit(`base-${i}`, `a-${i}`);
        const m2 = await sn.prepare(`b-${i}`, `base-${i}`);
        await writeFile(join(upperOf(m2), 'top-file'), `top ${w} ${i}`);
        // The half-written upload survives collections and resumes where it stopped.
        wr = await c.writer({ ref, total: big.length });
        expect(wr.offset).toBe(25_000);
        await wr.write(big.subarray(25_000));
        await wr.commit(big.length, sha256(big));
        await sn.commit(`top-${i}`, `b-${i}`);
        await nextCollection();

        for (const b of blobs) expect(await readAll(c, b.digest)).toEqual(b.data);
        expect(await readAll(c, sha256(big))).toEqual(big);
        const [topDir, baseDir] = await layerDirs(sn, `top-${i}`);
        expect(await readFile(join(topDir!, 'top-file'), 'utf8')).toBe(`top ${w} ${i}`);
        expect(await readFile(join(baseDir!, 'base-file'), 'utf8')).toBe(`base ${w} ${i}`);

        if (i % 2 === 0) {
          // Kept past its lease by an image: blob 0 references blob 1 and the chain's top.
          const labels = { 'containerd.io/gc.ref.content.0': blobs[1]!.digest, [`containerd.io/gc.ref.snapshot.${SNAPSHOTTER}`]: `top-${i}` };
          await c.update({ digest: blobs[0]!.digest, labels }, Object.keys(labels).map((k) => `labels.${k}`));
          await s.images(ns).create({ name: `img-${i}`, target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: blobs[0]!.digest, size: blobs[0]!.data.length } });
          kept.push({ ns, name: `img-${i}`, blobs: blobs.slice(0, 2), top: `top-${i}`, files: [`top ${w} ${i}`, `base ${w} ${i}`] });
        }
        s.md.leases.delete(ns, lease);
      }
    };

    // ---- images: pulled from the registry and imported, each time into a new namespace ----
    const checkImage = async (ns: string, img: BuiltImage) => {
      const c = s.content(ns);
      for (const [digest, bytes] of img.blobs) {
        if (digest === sha256(await readFile(join(img.layoutDir, 'index.json')))) continue;
        expect(await readAll(c, digest)).toEqual(bytes);
      }
      const chain = chainIDs(img.manifests[0]!.layers.map((l) => l.diffID));
      const dirs = await layerDirs(s.snapshots(ns), chain.at(-1)!);
      expect(dirs).toHaveLength(chain.length);
    };
    const puller = async (n: number) => {
      for (let i = 0; i < n; i++) {
        const ns = `pull-${i}`;
        const r = await s.transfers().pull(ns, `${reg.host}/app:1`, { unpack: true, registry: { plainHttp: true } });
        expect(r.unpacked?.chainID).toBe(chainIDs(pulled.manifests[0]!.layers.map((l) => l.diffID)).at(-1));
        await nextCollection();
        await checkImage(ns, pulled);
        await s.images(ns).delete(r.image.name);
      }
    };
    const importer = async (n: number) => {
      for (let i = 0; i < n; i++) {
        const ns = `import-${i}`;
        const images = await s.transfers().import(ns, imported.archivePath, { unpack: true });
        expect(images.map((im) => im.name)).toEqual(['docker.io/library/imported:1']);
        await nextCollection();
        await checkImage(ns, imported);
        await s.images(ns).delete('docker.io/library/imported:1');
      }
    };

    try {
      await Promise.all([worker(0, 6), worker(1, 6), worker(2, 6), puller(5), importer(5)]);

      // What images keep is still there, with its data.
      for (const k of kept) {
        const c = s.content(k.ns);
        for (const b of k.blobs) expect(await readAll(c, b.digest)).toEqual(b.data);
        const [topDir, baseDir] = await layerDirs(s.snapshots(k.ns), k.top);
        expect(await readFile(join(topDir!, 'top-file'), 'utf8')).toBe(k.files[0]);
        expect(await readFile(join(baseDir!, 'base-file'), 'utf8')).toBe(k.files[1]);
      }
    } finally {
      stop = true;
      await loop;
    }
    expect(reports.flatMap((r) => r.errors)).toEqual([]);
    // The collections did run during the work and did remove things (the leases and images dropped meanwhile).
    expect(reports.filter((r) => r.removed.length > 0).length).toBeGreaterThan(0);
    expect(await inconsistencies(s)).toEqual([]);

    // ---- the work is done: drop the last holds, collect once ----
    for (const k of kept) await s.images(k.ns).delete(k.name);
    for (const ns of s.md.namespaces.list().map((n) => n.name)) expect(s.md.leases.list(ns)).toEqual([]);
    const p = paths(s.root);
    const before = (await fileBytes(p.blobs)) + (await fileBytes(p.snapshotDirs)) + (await fileBytes(p.ingest));
    expect(before).toBeGreaterThan(0);
    const last = await s.collector.collect();
    expect(last.errors).toEqual([]);
    expect(last.removed.reduce((n, r) => n + r.size, 0)).toBeGreaterThan(0);
    expect((await fileBytes(p.blobs)) + (await fileBytes(p.snapshotDirs)) + (await fileBytes(p.ingest))).toBe(0);
    expect(await filesUnder(p.blobs)).toEqual([]);
    expect(await entries(p.ingest)).toEqual([]);
    expect(await entries(p.snapshotDirs)).toEqual([]);
    expect(await entries(join(p.overlay, 'l'))).toEqual([]);
    expect(await backendKeys(s)).toEqual([]);
    expect(s.md.db.prepare('SELECT count(*) AS n FROM content').get()).toEqual({ n: 0 });
    expect(s.md.db.prepare('SELECT count(*) AS n FROM snapshots').get()).toEqual({ n: 0 });
    expect(s.md.db.prepare('SELECT count(*) AS n FROM ingests').get()).toEqual({ n: 0 });
  }, 120_000);
});
