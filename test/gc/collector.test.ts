/**
 * The collector on a real store: an imported and unpacked image (the real import path) kept and explained by
 * why(), then freed to the last byte; dry runs; data without records (collect and prune); records without data;
 * the windows in which data exists before its record (commits and prepares in progress); failures that do not
 * stop a collection.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { unlinkSync } from 'node:fs';
import { mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { ContentWriter } from '../../src/content/types.js';
import { failedPrecondition } from '../../src/core/errdefs.js';
import { chainIDs } from '../../src/images/manifest.js';
import type { LocalContentStore } from '../../src/content/local.js';
import type { Snapshotter } from '../../src/snapshots/types.js';
import { buildImage, type BuiltImage } from '../helpers/images.js';
import { sha256 } from '../helpers/data.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import {
  backendKeyOf,
  backendKeys,
  entries,
  fileBytes,
  filesUnder,
  gate,
  hasBlob,
  inconsistencies,
  intercept,
  openStore,
  paths,
  removedIds,
  SNAPSHOTTER,
  startIngest,
  writeBlob,
  type Store,
  type StoreOptions,
} from './harness.js';

let dir: TempDir;
let s: Store;

async function open(opts: StoreOptions = {}): Promise<Store> {
  s = await openStore(join(dir.path, 'store'), opts);
  return s;
}

beforeEach(async () => {
  dir = await tempDir('strata-gc-collector-');
});

afterEach(async () => {
  await s?.close();
  await dir.cleanup();
});

const ROOT = { 'containerd.io/gc.root': 'true' };

describe('an imported, unpacked image', () => {
  let img: BuiltImage;

  beforeEach(async () => {
    await open();
    img = await buildImage(dir.path, {
      name: 'docker.io/library/gc-test:1',
      nestedIndex: true,
      platforms: [
        {
          layers: [
            { entries: [{ path: 'etc/', type: 'dir' }, { path: 'etc/one', content: 'first layer' }] },
            { entries: [{ path: 'etc/two', content: Buffer.alloc(100_000, 7) }] },
          ],
        },
      ],
    });
    const imported = await s.transfers().import('default', img.archivePath, { unpack: true });
    expect(imported.map((i) => i.name)).toEqual(['docker.io/library/gc-test:1']);
  });

  it('is kept whole, explained by why(), and freed to the last byte once the image is deleted', async () => {
    const m = img.manifests[0]!;
    const chain = chainIDs(m.layers.map((l) => l.diffID));
    // The import ran under a lease it deleted: only the image keeps things now. The archive's own index.json
    // went into the content store too (as containerd's import does) and nothing refers to it.
    expect(s.md.leases.list('default')).toEqual([]);
    const indexJson = await readFile(join(img.layoutDir, 'index.json'));
    const first = await s.collector.collect();
    expect(first.removed).toEqual([{ type: 'content', namespace: 'default', id: sha256(indexJson), size: indexJson.length }]);
    expect(first.errors).toEqual([]);
    expect((await s.collector.collect()).removed).toEqual([]);

    const image = { type: 'image' as const, namespace: 'default', id: 'docker.io/library/gc-test:1' };
    const layer = await s.collector.why({ type: 'content', namespace: 'default', id: m.layers[1]!.descriptor.digest });
    expect(layer).toMatchObject({ reachable: true, root: 'image' });
    expect(layer.path.map((e) => [e.from.id, e.reason, e.to.id])).toEqual([
      [image.id, 'target', img.index!.descriptor.digest],
      [img.index!.descriptor.digest, 'containerd.io/gc.ref.content.m.0', m.descriptor.digest],
      [m.descriptor.digest, 'containerd.io/gc.ref.content.l.1', m.layers[1]!.descriptor.digest],
    ]);
    const bottom = await s.collector.why({ type: 'snapshot', namespace: 'default', snapshotter: SNAPSHOTTER, id: chain[0]! });
    expect(bottom.path.map((e) => e.reason)).toEqual([
      'target',
      'containerd.io/gc.ref.content.m.0',
      'containerd.io/gc.ref.content.config',
      `containerd.io/gc.ref.snapshot.${SNAPSHOTTER}`,
      'parent',
    ]);
    expect(bottom.path[3]!.to).toEqual({ type: 'snapshot', namespace: 'default', snapshotter: SNAPSHOTTER, id: chain[1] });

    const p = paths(s.root);
    const blobBytes = await fileBytes(p.blobs);
    const snapshotBytes = await fileBytes(p.snapshotDirs);
    expect(blobBytes).toBeGreaterThan(0);
    expect(snapshotBytes).toBeGreaterThanOrEqual(100_000);

    // A dry run says what would go, with sizes, and removes nothing.
    await s.images('default').delete(image.id);
    const dry = await s.collector.collect({ dryRun: true });
    expect(dry.dryRun).toBe(true);
    const expected = [
      ...[img.index!.descriptor, m.descriptor, m.config.descriptor, ...m.layers.map((l) => l.descriptor)].map((d) => `content default ${d.digest}`),
      ...chain.map((c) => `snapshot default ${SNAPSHOTTER}/${c}`),
    ].sort();
    expect(removedIds(dry)).toEqual(expected);
    const contentSizes = dry.removed.filter((r) => r.type === 'content').reduce((n, r) => n + r.size, 0);
    expect(contentSizes).toBe(blobBytes);
    const top = dry.removed.find((r) => r.id === chain[1])!;
    expect(top.size).toBeGreaterThanOrEqual(100_000);
    expect(await fileBytes(p.blobs)).toBe(blobBytes);
    expect(await backendKeys(s)).toHaveLength(2);
    expect((await s.collector.why({ type: 'snapshot', namespace: 'default', snapshotter: SNAPSHOTTER, id: chain[1]! })).reachable).toBe(false);

    const real = await s.collector.collect();
    expect(real.dryRun).toBe(false);
    expect(real.errors).toEqual([]);
    expect(removedIds(real)).toEqual(expected);
    // Blobs report the bytes freed as the dry run did; snapshots report 0 ("not known"): a real run does not
    // measure what it is about to remove (docs/gc.md, "Sizes").
    const sizes = (rep: typeof real, type: string) => rep.removed.filter((r) => r.type === type).map((r) => r.size).sort();
    expect(sizes(real, 'content')).toEqual(sizes(dry, 'content'));
    expect(sizes(real, 'snapshot')).toEqual([0, 0]);
    expect(real.pauseMs).toBeGreaterThanOrEqual(0);
    expect(real.elapsedMs).toBeGreaterThanOrEqual(real.pauseMs);
    expect(await filesUnder(p.blobs)).toEqual([]);
    expect(await entries(p.snapshotDirs)).toEqual([]);
    expect(await backendKeys(s)).toEqual([]);
    expect(await fileBytes(p.content)).toBe(0);
  });
});

describe('why', () => {
  it('names the lease that keeps a resource, and reports unknown or unreachable objects as such', async () => {
    await open();
    s.md.leases.create('ns', 'pull-1');
    const d = await writeBlob(s.content('ns', 'pull-1'), 'leased');
    expect(await s.collector.why({ type: 'content', namespace: 'ns', id: d })).toEqual({
      object: { type: 'content', namespace: 'ns', id: d },
      reachable: true,
      root: 'lease pull-1',
      path: [],
    });
    expect(await s.collector.why({ type: 'lease', namespace: 'ns', id: 'pull-1' })).toMatchObject({ reachable: true, root: 'lease not expired' });
    expect(await s.collector.why({ type: 'content', namespace: 'other', id: d })).toMatchObject({ reachable: false, path: [] });
    await startIngest(s.content('ns'), 'loose', 'x');
    expect((await s.collector.why({ type: 'ingest', namespace: 'ns', id: 'loose' })).root).toMatch(/^ingest not expired/);
  });
});

describe('dry run', () => {
  it('reports blobs, ingests and snapshots with their sizes and removes nothing', async () => {
    await open();
    const c = s.content('ns');
    const d = await writeBlob(c, Buffer.alloc(4096, 3));
    s.md.leases.create('ns', 'gone');
    await startIngest(s.content('ns', 'gone'), 'upload', 'twelve bytes');
    const mounts = await s.snapshots('ns').prepare('scratch', '');
    await writeFile(join(mounts[0]!.source, 'data'), Buffer.alloc(8192, 1));
    s.md.leases.delete('ns', 'gone');

    const dry = await s.collector.collect({ dryRun: true });
    expect(dry.removed.sort((a, b) => a.type.localeCompare(b.type))).toEqual([
      { type: 'content', namespace: 'ns', id: d, size: 4096 },
      { type: 'ingest', namespace: 'ns', id: 'upload', size: 12 },
      { type: 'snapshot', namespace: 'ns', snapshotter: SNAPSHOTTER, id: 'scratch', size: expect.any(Number) },
    ]);
    expect(dry.removed[2]!.size).toBeGreaterThanOrEqual(8192);
    expect(hasBlob(s, d)).toBe(true);
    expect((await c.status('upload')).offset).toBe(12);
    expect((await s.snapshots('ns').stat('scratch')).kind).toBe('active');

    const real = await s.collector.collect();
    expect(removedIds(real)).toEqual(removedIds(dry));
    expect(hasBlob(s, d)).toBe(false);
    expect(await s.local.listStatuses()).toEqual([]);
  });
});

describe('data without records', () => {
  /** A blob, an ingest and a backend snapshot that no record knows, written straight to the backends. */
  async function leftovers(): Promise<{ blob: string; ingestRef: string; snapKeys: string[] }> {
    const bytes = Buffer.from('a blob nobody recorded');
    const blob = sha256(bytes);
    const w = await s.local.writer({ ref: 'raw-blob' });
    await w.write(bytes);
    await w.commit(bytes.length, blob);
    const iw = await s.local.writer({ ref: 'ns/999/raw-ingest' });
    await iw.write(Buffer.from('half'));
    await iw.close();
    await s.backend.prepare('ns/998/raw-a', '');
    await s.backend.commit('ns/997/raw-parent', 'ns/998/raw-a');
    await s.backend.prepare('ns/996/raw-child', 'ns/997/raw-parent');
    return { blob, ingestRef: 'ns/999/raw-ingest', snapKeys: ['ns/996/raw-child', 'ns/997/raw-parent'] };
  }

  it('collect() removes what an interrupted collection (or a crash) left, children before parents', async () => {
    await open();
    const keep = await writeBlob(s.content('ns'), 'kept', ROOT);
    const { blob, ingestRef, snapKeys } = await leftovers();
    const r = await s.collector.collect();
    expect(r.errors).toEqual([]);
    expect(removedIds(r)).toEqual([`content - ${blob}`, `ingest - ${ingestRef}`, ...snapKeys.map((k) => `snapshot - ${SNAPSHOTTER}/${k}`)].sort());
    expect(hasBlob(s, blob)).toBe(false);
    expect(hasBlob(s, keep)).toBe(true);
    expect(await s.local.listStatuses()).toEqual([]);
    expect(await backendKeys(s)).toEqual([]);
    expect(await entries(paths(s.root).snapshotDirs)).toEqual([]);
  });

  it('prune reports orphans both ways; it removes data without records and only reports records without data', async () => {
    await open();
    const { blob, ingestRef, snapKeys } = await leftovers();
    // A content row whose blob file vanished, and a snapshot row whose backend snapshot did.
    const lost = await writeBlob(s.content('ns'), 'lost blob', ROOT);
    unlinkSync(s.local.blobPath(lost));
    await s.snapshots('ns').prepare('lost-snap', '', { labels: ROOT });
    await s.backend.remove(backendKeyOf(s, 'ns', 'lost-snap')!);

    const dry = await s.collector.prune({ dryRun: true });
    expect(dry).toEqual({
      blobs: [{ digest: blob, size: 22 }],
      ingests: [{ ref: ingestRef, size: 4 }],
      snapshots: snapKeys.map((key) => ({ snapshotter: SNAPSHOTTER, key })),
      contentWithoutData: [{ type: 'content', namespace: 'ns', id: lost }],
      snapshotsWithoutData: [{ type: 'snapshot', namespace: 'ns', snapshotter: SNAPSHOTTER, id: 'lost-snap' }],
    });
    expect(hasBlob(s, blob)).toBe(true);
    expect(await backendKeys(s)).toEqual([...snapKeys].sort());

    expect(await s.collector.prune()).toEqual(dry);
    expect(hasBlob(s, blob)).toBe(false);
    expect(await s.local.listStatuses()).toEqual([]);
    expect(await backendKeys(s)).toEqual([]);
    // The records without data are still there (reported, not removed).
    const again = await s.collector.prune({ dryRun: true });
    expect(again).toEqual({ ...dry, blobs: [], ingests: [], snapshots: [] });
    expect((await s.snapshots('ns').stat('lost-snap')).kind).toBe('active');
  });
});

describe('data created before its record', () => {
  /** A local store whose writers for refs ending in "/slow" wait at `g` once the local commit is done (or failed). */
  const pausingAfterLocalCommit = (g: ReturnType<typeof gate>) => (local: LocalContentStore) =>
    intercept(local, 'writer', async (opts) => {
      const w = await local.writer(opts);
      const paused: ContentWriter = {
        get ref() {
          return w.ref;
        },
        get offset() {
          return w.offset;
        },
        status: () => w.status(),
        write: (chunk) => w.write(chunk),
        truncate: (n) => w.truncate(n),
        digest: () => w.digest(),
        close: () => w.close(),
        commit: async (size, expected, o) => {
          try {
            await w.commit(size, expected, o);
          } finally {
            if (opts.ref.endsWith('/slow')) await g.wait(); // the blob is on disk; its row is not
          }
        },
      };
      return paused;
    }) as LocalContentStore;

  it('a blob renamed into place whose content row is not written yet is not removed', async () => {
    const g = gate();
    await open({ wrapLocal: pausingAfterLocalCommit(g) });
    s.md.leases.create('ns', 'l');
    const c = s.content('ns', 'l');
    const data = Buffer.from('committing slowly');
    const w = await c.writer({ ref: 'slow' });
    await w.write(data);
    const committing = w.commit(data.length, sha256(data));
    await g.entered;
    expect(hasBlob(s, sha256(data))).toBe(true);
    const r = await s.collector.collect();
    expect(r.removed).toEqual([]);
    expect(hasBlob(s, sha256(data))).toBe(true);
    expect((await s.collector.prune({ dryRun: true })).blobs).toEqual([]);
    g.open();
    await committing;
    expect((await c.info(sha256(data))).size).toBe(data.length);
    expect(await inconsistencies(s)).toEqual([]);
  });

  it('a blob already on disk that a commit found is not removed before the commit writes its row', async () => {
    // The blob is an orphan (a crash left it without a record), so the local commit answers "already exists"
    // and keeps no copy of its own: from then until the row is written, the file on disk is the commit's data.
    const g = gate();
    await open({ wrapLocal: pausingAfterLocalCommit(g) });
    const data = Buffer.from('found on disk while committing');
    const digest = sha256(data);
    await mkdir(dirname(s.local.blobPath(digest)), { recursive: true });
    await writeFile(s.local.blobPath(digest), data);
    const anHourAgo = new Date(Date.now() - 3_600_000);
    await utimes(s.local.blobPath(digest), anHourAgo, anHourAgo); // older than any ingest: no commit made it
    s.md.leases.create('ns', 'l');
    const c = s.content('ns', 'l');
    const w = await c.writer({ ref: 'slow' });
    await w.write(data);
    const committing = w.commit(data.length, digest);
    await g.entered;
    // A full pass looks at every blob on disk, orphans included.
    expect((await s.collector.prune()).blobs).toEqual([]);
    expect(hasBlob(s, digest)).toBe(true);
    g.open();
    await committing;
    expect((await c.info(digest)).size).toBe(data.length);
    // Once recorded and then dropped, the blob goes as usual.
    s.md.leases.delete('ns', 'l');
    await c.delete(digest);
    expect(hasBlob(s, digest)).toBe(false);
    expect(await inconsistencies(s)).toEqual([]);
  });

  it('a backend snapshot prepared (or committed) whose record is not written yet is not removed', async () => {
    const prepareGate = gate();
    const commitGate = gate();
    await open({
      wrapBackend: (b) =>
        intercept(
          intercept(b, 'prepare', async (key, parent, o) => {
            const m = await b.prepare(key, parent, o);
            if (key.endsWith('/slow')) await prepareGate.wait();
            return m;
          }),
          'commit',
          async (name, key, o) => {
            await b.commit(name, key, o);
            if (name.endsWith('/slow-committed')) await commitGate.wait();
          },
        ) as Snapshotter,
    });
    s.md.leases.create('ns', 'l');
    const sn = s.snapshots('ns', 'l');
    const preparing = sn.prepare('slow', '');
    await prepareGate.entered;
    expect(await backendKeys(s)).toHaveLength(1);
    expect((await s.collector.collect()).removed).toEqual([]);
    expect((await s.collector.prune({ dryRun: true })).snapshots).toEqual([]);
    prepareGate.open();
    await preparing;
    expect(await backendKeys(s)).toHaveLength(1);

    const committing = sn.commit('slow-committed', 'slow');
    await commitGate.entered;
    // The backend has the new name; the record still names the old key.
    expect((await s.collector.collect()).removed).toEqual([]);
    const orphans = await s.collector.prune({ dryRun: true });
    expect(orphans.snapshots).toEqual([]);
    expect(orphans.snapshotsWithoutData).toEqual([]);
    commitGate.open();
    await committing;
    expect((await sn.stat('slow-committed')).kind).toBe('committed');
    expect(await inconsistencies(s)).toEqual([]);
  });

  it('a prepare whose parent was collected meanwhile fails and leaves nothing behind', async () => {
    const g = gate();
    await open({
      wrapBackend: (b) =>
        intercept(b, 'prepare', async (key, parent, o) => {
          const m = await b.prepare(key, parent, o);
          if (key.endsWith('/child')) await g.wait();
          return m;
        }) as Snapshotter,
    });
    const sn = s.snapshots('ns');
    await sn.prepare('p', '');
    await sn.commit('parent', 'p'); // no lease, no root: collectable
    const preparing = sn.prepare('child', 'parent').catch((err: unknown) => err);
    await g.entered;
    const r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`snapshot ns ${SNAPSHOTTER}/parent`]);
    // The parent's backend snapshot has a child in progress: it stays for now, reported.
    expect(r.errors.map((e) => e.object.id)).toEqual(['parent']);
    g.open();
    expect(String(await preparing)).toMatch(/parent snapshot parent does not exist/);
    expect(await inconsistencies(s)).toEqual([]);
    const again = await s.collector.collect();
    expect(again.errors).toEqual([]);
    expect(await backendKeys(s)).toEqual([]);
  });
});

describe('records collected while their operation is in progress', () => {
  it('a commit whose active snapshot was collected meanwhile fails, and its backend snapshot goes next time', async () => {
    const g = gate();
    await open({
      wrapBackend: (b) =>
        intercept(b, 'commit', async (name, key, o) => {
          await b.commit(name, key, o);
          await g.wait();
        }) as Snapshotter,
    });
    const sn = s.snapshots('ns');
    await sn.prepare('unleased', ''); // no lease, no root: collectable
    const committing = sn.commit('done', 'unleased').catch((err: unknown) => err);
    await g.entered;
    const r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`snapshot ns ${SNAPSHOTTER}/unleased`]);
    expect(r.errors).toEqual([]);
    expect(await backendKeys(s)).toHaveLength(1); // in progress: left alone
    g.open();
    expect(String(await committing)).toMatch(/not found/);
    expect(await inconsistencies(s)).toEqual([]);
    const again = await s.collector.collect();
    expect(again.removed).toEqual([{ type: 'snapshot', namespace: '', snapshotter: SNAPSHOTTER, id: expect.stringMatching(/^ns\/\d+\/done$/), size: expect.any(Number) }]);
    expect(await backendKeys(s)).toEqual([]);
  });
});

describe('failures', () => {
  it('a removal that fails is reported and does not stop the others; the next run finishes it', async () => {
    let failing = true;
    await open({
      wrapBackend: (b) =>
        intercept(b, 'remove', async (key) => {
          if (failing && key.endsWith('/bad')) throw failedPrecondition('device busy');
          return b.remove(key);
        }) as Snapshotter,
    });
    const sn = s.snapshots('ns');
    await sn.prepare('bad', '');
    await sn.prepare('good', '');
    const d = await writeBlob(s.content('ns'), 'also garbage');
    const r = await s.collector.collect();
    expect(r.errors).toEqual([{ object: { type: 'snapshot', namespace: 'ns', snapshotter: SNAPSHOTTER, id: 'bad' }, error: expect.stringContaining('device busy') }]);
    // Every white record went, the failed one too (nothing freed for it).
    expect(removedIds(r)).toEqual([`content ns ${d}`, `snapshot ns ${SNAPSHOTTER}/bad`, `snapshot ns ${SNAPSHOTTER}/good`]);
    expect(r.removed.find((o) => o.id === 'bad')!.size).toBe(0);
    expect(await inconsistencies(s)).toEqual([]);
    // The record is gone; the data is a leftover that prune reports and the next collection removes.
    expect((await s.collector.prune({ dryRun: true })).snapshots).toHaveLength(1);
    failing = false;
    const again = await s.collector.collect();
    expect(again.errors).toEqual([]);
    expect(again.removed).toEqual([{ type: 'snapshot', namespace: '', snapshotter: SNAPSHOTTER, id: expect.stringMatching(/^ns\/\d+\/bad$/), size: expect.any(Number) }]);
    expect(await backendKeys(s)).toEqual([]);
  });

  it('records of a snapshotter that is not loaded go, and their data is reported as kept', async () => {
    await open();
    s.md.namespaces.ensure('ns');
    s.md.db
      .prepare("INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, kind, labels, created_at, updated_at) VALUES ('ns', 'ghost', 'k', 'ns/1/k', '', 'active', '{}', 0, 0)")
      .run();
    const r = await s.collector.collect();
    expect(r.errors).toEqual([{ object: { type: 'snapshot', namespace: 'ns', snapshotter: 'ghost', id: 'k' }, error: 'snapshotter ghost is not loaded: its data stays' }]);
    expect(s.md.db.prepare("SELECT 1 FROM snapshots WHERE snapshotter = 'ghost'").get()).toBeUndefined();
  });
});

describe('removing data after the sweep', () => {
  it('after a collection that left nothing, only the swept blobs are looked at (the blob store is not listed); a full pass still finds leftovers', async () => {
    let listed = 0;
    await open({
      wrapLocal: (local) =>
        intercept(local, 'list', async () => {
          listed++;
          return local.list();
        }) as LocalContentStore,
    });
    // The first collection of a process walks everything.
    await s.collector.collect();
    expect(listed).toBe(1);
    s.md.leases.create('ns', 'l');
    const kept = await writeBlob(s.content('ns'), 'kept by nothing but the lease');
    s.md.leases.addResource('ns', 'l', { type: 'content', id: kept });
    const gone = await writeBlob(s.content('ns'), 'garbage');
    const r = await s.collector.collect();
    expect(listed).toBe(1);
    expect(removedIds(r)).toEqual([`content ns ${gone}`]);
    expect(hasBlob(s, gone)).toBe(false);
    expect(hasBlob(s, kept)).toBe(true);
    s.md.leases.delete('ns', 'l');
    const r2 = await s.collector.collect();
    expect(listed).toBe(1);
    expect(removedIds(r2)).toEqual([`content ns ${kept}`]);
    expect(hasBlob(s, kept)).toBe(false);
    // A dry run always walks the store.
    await s.collector.collect({ dryRun: true });
    expect(listed).toBe(2);
  });

  it('removes the snapshots of one depth together, and a parent only after all its children', async () => {
    const inFlight = new Set<string>();
    let most = 0;
    const order: string[] = [];
    await open({
      wrapBackend: (b) =>
        intercept(b, 'remove', async (key) => {
          inFlight.add(key);
          most = Math.max(most, inFlight.size);
          await new Promise((resolve) => setTimeout(resolve, 20));
          try {
            return await b.remove(key);
          } finally {
            inFlight.delete(key);
            order.push(key.split('/').pop()!);
          }
        }) as Snapshotter,
    });
    const sn = s.snapshots('ns');
    await sn.prepare('root-a', '');
    await sn.commit('root', 'root-a');
    for (let i = 0; i < 4; i++) {
      await sn.prepare(`mid-${i}-a`, 'root');
      await sn.commit(`mid-${i}`, `mid-${i}-a`);
      await sn.prepare(`leaf-${i}`, `mid-${i}`);
    }
    const r = await s.collector.collect();
    expect(r.errors).toEqual([]);
    expect(removedIds(r)).toHaveLength(9);
    expect(await backendKeys(s)).toEqual([]);
    expect(most).toBeGreaterThan(1);
    // Every leaf before any middle snapshot, every middle one before the root.
    expect(order.slice(0, 4).every((k) => k.startsWith('leaf-'))).toBe(true);
    expect(order.slice(4, 8).every((k) => k.startsWith('mid-'))).toBe(true);
    expect(order[8]).toBe('root');
  });
});
