/**
 * strata du against a real stratad: two images pulled from a docker-registry on loopback share a base layer,
 * and the per-image unique and shared bytes must be what the content store and the snapshotter's usage say;
 * orphans made on purpose (a leased blob, an unheld blob, a gc.root snapshot, a container's snapshot, a blob
 * kept by another's gc.ref label, an ingest in progress) must come with the reason that keeps them.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { diskUsage, type DuReport, type ImageUsage, type Orphan } from '../../src/cli/du.js';
import { chainIDs } from '../../src/images/manifest.js';
import { run, type RunResult } from '../helpers/ctr.js';
import { StrataClient as Client } from '../../src/api/clients/strata.js';
import { ctrAt, startContainerd, stopAllContainerd } from '../helpers/containerd.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { sha256 } from '../helpers/data.js';
import { buildImage, type BuiltImage } from '../helpers/images.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { listContent } from '../helpers/transfer.js';

let reg: StartedRegistry;
let d: StartedDaemon;
let dir: TempDir;
let c: StrataClient;
let imgA: BuiltImage;
let imgB: BuiltImage;
let refA: string;
let refB: string;

const strata = (args: string[], address = d.address): Promise<RunResult> => run(process.execPath, [STRATA, '--address', address, ...args], { timeoutMs: 60_000 });

async function ok(args: string[], address?: string): Promise<string> {
  const r = await strata(args, address);
  expect(r.stderr, `strata ${args.join(' ')}`).toBe('');
  expect(r.code, `strata ${args.join(' ')}`).toBe(0);
  return r.stdout;
}

const duJson = async (args: string[] = []): Promise<DuReport> => JSON.parse(await ok([...args, 'du', '--json'])) as DuReport;

/** A layer of `n` incompressible bytes in one file (so sizes tell layers apart). */
const fileLayer = (path: string, n: number) => ({ compression: 'gzip' as const, entries: [{ path, content: randomBytes(n) }] });

beforeAll(async () => {
  dir = await tempDir();
  reg = await startRegistry();
  // The GC scheduler is loaded (the test ends with a collection) but never runs on its own before a deletion.
  d = await startDaemon({ gc: true, config: '[plugins."io.containerd.gc.v1.scheduler"]\nmutation_threshold = 0\nstartup_delay = "0s"\n' });
  c = d.client('default');
  const base = fileLayer('base.bin', 64 * 1024);
  imgA = await buildImage(dir.path, { basename: 'a', platforms: [{ layers: [base, fileLayer('a.bin', 16 * 1024)] }] });
  imgB = await buildImage(dir.path, { basename: 'b', platforms: [{ layers: [base, fileLayer('b.bin', 32 * 1024)] }] });
  await reg.pushOciLayout(imgA.layoutDir, 'du/a:1');
  await reg.pushOciLayout(imgB.layoutDir, 'du/b:1');
  refA = `${reg.host}/du/a:1`;
  refB = `${reg.host}/du/b:1`;
  await ok(['image', 'pull', '-q', '--plain-http', refA]);
  await ok(['image', 'pull', '-q', '--plain-http', refB]);
}, 120_000);

afterAll(async () => {
  c?.close();
  await stopAllContainerd();
  await stopAll();
  await stopAllRegistries();
  await dir?.cleanup();
});

const usage = async (key: string) => (await c.call(c.snapshots, c.snapshots.usage, { snapshotter: 'overlayfs', key })).size;

describe('strata du', () => {
  it('reports each image\'s content and snapshots, the base layer shared and the rest unique, in the bytes the content store and snapshot usage give', async () => {
    expect(imgA.manifests[0]!.layers[0]!.descriptor.digest).toBe(imgB.manifests[0]!.layers[0]!.descriptor.digest);
    const sizes = new Map((await listContent(c)).map((i) => [i.digest, i.size]));
    const r = await duJson();
    expect(r.namespace).toBe('default');
    const expectImage = async (ref: string, img: BuiltImage): Promise<ImageUsage> => {
      const m = img.manifests[0]!;
      const got = r.images.find((i) => i.name === ref)!;
      expect(got, ref).toBeDefined();
      expect(got.digest).toBe(img.target.digest);
      const digests = [m.descriptor.digest, m.config.descriptor.digest, ...m.layers.map((l) => l.descriptor.digest)];
      const base = m.layers[0]!.descriptor.digest;
      const blobSize = (x: string) => {
        expect(sizes.has(x), x).toBe(true);
        return sizes.get(x)!;
      };
      expect(got.content.count).toBe(digests.length);
      expect(got.content.size).toBe(digests.reduce((a, x) => a + blobSize(x), 0));
      expect(got.content.shared).toBe(blobSize(base));
      expect(got.content.unique).toBe(digests.filter((x) => x !== base).reduce((a, x) => a + blobSize(x), 0));
      const [chain0, chain1] = chainIDs(m.layers.map((l) => l.diffID));
      const [u0, u1] = [await usage(chain0!), await usage(chain1!)];
      expect(u0).toBeGreaterThan(64 * 1024);
      expect(got.snapshots).toEqual({ count: 2, size: u0 + u1, unique: u1, shared: u0 });
      expect(got.size).toBe(got.content.size + got.snapshots.size);
      expect(got.unique).toBe(got.content.unique + got.snapshots.unique);
      expect(got.shared).toBe(got.content.shared + got.snapshots.shared);
      return got;
    };
    const a = await expectImage(refA, imgA);
    const b = await expectImage(refB, imgB);
    // Every byte once: the shared part counted a single time.
    expect(r.imagesTotal.size).toBe(a.unique + b.unique + a.shared);
    expect(r.imagesTotal.shared).toBe(a.shared);
    // overlayfs: three snapshots (the shared base, one top per image), their usage summed.
    const overlay = r.snapshotters.find((s) => s.name === 'overlayfs')!;
    expect(overlay.count).toBe(3);
    expect(overlay.size).toBe(a.snapshots.size + b.snapshots.unique);
    expect(r.content.count).toBe(sizes.size);
    expect(r.orphans).toEqual([]);
    expect(r.reclaimable).toBe(0);
  });

  it('lists orphans with what keeps each: a lease, a gc.root label, a container, a gc.ref from a kept blob, an ingest; and nothing for an unheld blob', async () => {
    // A collection first: the pulls deleted their leases, which makes one due, and it must not come later.
    await ok(['gc']);
    // A blob under a lease, and one under nothing.
    await c.call(c.leases, c.leases.create, { id: 'du-lease', labels: {} });
    const leased = randomBytes(3000);
    const lc = d.client('default', 'du-lease');
    await lc.writeBlob([leased], { ref: 'du-leased', expected: sha256(leased), total: leased.length });
    lc.close();
    const loose = randomBytes(2000);
    await c.writeBlob([loose], { ref: 'du-loose', expected: sha256(loose), total: loose.length });
    // A blob with gc.root that names another blob with a gc.ref label.
    const child = randomBytes(1500);
    await c.writeBlob([child], { ref: 'du-child', expected: sha256(child), total: child.length });
    const parent = randomBytes(1000);
    await c.writeBlob([parent], {
      ref: 'du-parent',
      expected: sha256(parent),
      total: parent.length,
      labels: { 'containerd.io/gc.root': 'true', 'containerd.io/gc.ref.content.child': sha256(child) },
    });
    // A snapshot strata snapshot prepare made (it labels it gc.root), and a container's snapshot on image A.
    const top = chainIDs(imgA.manifests[0]!.layers.map((l) => l.diffID)).at(-1)!;
    await ok(['snapshot', 'prepare', 'du-scratch', top]);
    await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: 'overlayfs', key: 'du-ctr-rootfs', parent: top, labels: {} });
    await c.call(c.containers, c.containers.create, {
      container: {
        id: 'du-ctr',
        labels: {},
        image: refA,
        runtime: { name: 'io.containerd.runc.v2', options: undefined },
        spec: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Spec', value: Buffer.from('{}') },
        snapshotter: 'overlayfs',
        snapshotKey: 'du-ctr-rootfs',
        createdAt: undefined,
        updatedAt: undefined,
        extensions: {},
      },
    });
    // An ingest left half-written (a writer that stopped: committed never).
    const partial = randomBytes(4096);
    const ingest = c.content.write(c.metadata());
    ingest.on('error', () => undefined);
    const it2 = ingest[Symbol.asyncIterator]();
    const base = { ref: 'du-partial', total: 8192, expected: '', labels: {}, offset: 0 };
    ingest.write({ ...base, action: 0, data: Buffer.alloc(0) });
    await it2.next();
    ingest.write({ ...base, action: 1, data: partial });
    await it2.next();
    ingest.cancel();
    const deadline = Date.now() + 10_000;
    while (!(await c.call(c.content, c.content.listStatuses, { filters: [] })).statuses.some((s) => s.ref === 'du-partial' && s.offset === partial.length)) {
      if (Date.now() > deadline) throw new Error('ingest not visible');
      await new Promise((res) => setTimeout(res, 50));
    }

    const r = await duJson();
    const byId = new Map(r.orphans.map((o) => [`${o.type} ${o.id}`, o]));
    const orphan = (key: string): Orphan => {
      const o = byId.get(key);
      expect(o, `${key} in ${JSON.stringify(r.orphans, null, 1)}`).toBeDefined();
      return o!;
    };
    const held = orphan(`content ${sha256(leased)}`);
    expect(held.size).toBe(3000);
    expect(held.keptBy).toEqual({ root: 'lease du-lease', path: [], summary: 'lease du-lease' });
    expect(held.alsoIn).toEqual([]);
    const free = orphan(`content ${sha256(loose)}`);
    expect(free).toEqual({ type: 'content', id: sha256(loose), size: 2000, keptBy: null, alsoIn: [] });
    expect(orphan(`content ${sha256(parent)}`).keptBy).toEqual({ root: 'label containerd.io/gc.root', path: [], summary: 'label containerd.io/gc.root' });
    const ref = orphan(`content ${sha256(child)}`).keptBy!;
    expect(ref.root).toBe('label containerd.io/gc.root');
    expect(ref.path).toEqual([{ from: `content ${sha256(parent)}`, to: `content ${sha256(child)}`, reason: 'containerd.io/gc.ref.content.child' }]);
    expect(ref.summary).toBe(`containerd.io/gc.ref.content.child of content ${sha256(parent).slice(0, 19)} (label containerd.io/gc.root)`);
    const scratch = orphan('snapshot overlayfs/du-scratch');
    expect(scratch.keptBy?.root).toBe('label containerd.io/gc.root');
    expect(scratch.size).toBe(await usage('du-scratch'));
    const rootfs = orphan('snapshot overlayfs/du-ctr-rootfs');
    expect(rootfs.keptBy).toEqual({
      root: 'container',
      path: [{ from: 'container du-ctr', to: 'snapshot overlayfs/du-ctr-rootfs', reason: 'snapshot' }],
      summary: 'snapshot of container du-ctr',
    });
    const part = orphan('ingest du-partial');
    expect(part.size).toBe(partial.length);
    expect(part.keptBy?.root).toMatch(/^ingest not expired \(expires \d{4}-/);
    // Nothing else is an orphan: the images' objects stay theirs (a container on image A adds no image bytes).
    expect(r.orphans).toHaveLength(7);
    expect(r.reclaimable).toBe(2000);

    // The table says the same for people.
    const text = await ok(['du']);
    const line = (needle: string) => text.split('\n').find((l) => l.includes(needle)) ?? '';
    expect(line(sha256(leased))).toMatch(/^content\s+sha256:\S+\s+3kB\s+lease du-lease$/);
    expect(line(sha256(loose))).toMatch(/\s+2kB\s+- \(nothing: the next gc removes it\)$/);
    expect(line('du-ctr-rootfs')).toMatch(/snapshot of container du-ctr$/);
    expect(line(refA)).toMatch(new RegExp(`^${refA.replace(/[.]/g, '\\.')}\\s+\\S+\\s+\\S+\\s+\\S+\\s+\\S+\\s+\\S+$`));
    expect(text).toContain('reclaimable by gc now: 1, 2kB');
    // -b: the same in bytes.
    expect((await ok(['du', '-b'])).split('\n').find((l) => l.includes(sha256(loose)))).toMatch(/\s2000\s/);

    // A collection removes exactly what du called reclaimable; what it said was kept stays.
    const dry = JSON.parse(await ok(['gc', '--dry-run', '--json'])) as { removed: { type: string; id: string; size: number }[] };
    expect(dry.removed.map((o) => [o.type, o.id, o.size])).toEqual([['content', sha256(loose), 2000]]);
    await ok(['gc']);
    const after = await duJson();
    expect(after.orphans.map((o) => `${o.type} ${o.id}`).sort()).toEqual([...byId.keys()].filter((k) => k !== `content ${sha256(loose)}`).sort());
    expect(after.reclaimable).toBe(0);
  });

  it('reads only the namespace given with -n', async () => {
    const oc = d.client('du-other');
    await oc.call(oc.leases, oc.leases.create, { id: 'other-lease', labels: {} });
    const blob = randomBytes(1234);
    const lc = d.client('du-other', 'other-lease');
    await lc.writeBlob([blob], { ref: 'other-blob', expected: sha256(blob), total: blob.length });
    lc.close();
    oc.close();
    const r = await duJson(['-n', 'du-other']);
    expect(r.namespace).toBe('du-other');
    expect(r.images).toEqual([]);
    expect(r.content).toEqual({ count: 1, size: 1234 });
    const kept = { root: 'lease other-lease', path: [], summary: 'lease other-lease' };
    expect(r.orphans).toEqual([{ type: 'content', id: sha256(blob), size: 1234, keptBy: kept, alsoIn: [] }]);
    expect(r.snapshotters.find((s) => s.name === 'overlayfs')).toEqual({ name: 'overlayfs', count: 0, size: 0, inodes: 0 });
    // And default's report has none of it.
    expect((await duJson()).orphans.some((o) => o.id === sha256(blob))).toBe(false);

    // The same blob recorded in default too, under nothing: default's record would go, the file would stay.
    await c.writeBlob([blob], { ref: 'other-blob-in-default', expected: sha256(blob), total: blob.length });
    expect((await c.call(c.content, c.content.info, { digest: sha256(blob) })).info?.size).toBe(1234);
    const def = await duJson();
    expect(def.orphans.find((o) => o.id === sha256(blob))).toEqual({ type: 'content', id: sha256(blob), size: 1234, keptBy: null, alsoIn: ['du-other'] });
    expect(def.reclaimable).toBe(0);
    expect((await ok(['du'])).split('\n').find((l) => l.includes(sha256(blob)))).toMatch(/- \(the next gc drops this namespace's record; the data stays: namespace du-other also records it\)$/);
    expect((await duJson(['-n', 'du-other'])).orphans).toEqual([{ type: 'content', id: sha256(blob), size: 1234, keptBy: kept, alsoIn: ['default'] }]);
  });
});

describe('strata du against containerd', () => {
  it('reads a real containerd through the same API calls: images pulled by ctr, their shared base layer, a leased blob', async () => {
    const ctd = await startContainerd();
    for (const ref of [refA, refB]) {
      const r = await ctrAt(ctd.address, ['image', 'pull', '--plain-http', ref]);
      expect(r.code, r.stderr).toBe(0);
    }
    const cc = new Client(ctd.address, { namespace: 'default' });
    await cc.call(cc.leases, cc.leases.create, { id: 'du-lease', labels: {} });
    const blob = randomBytes(777);
    const lc = new Client(ctd.address, { namespace: 'default', lease: 'du-lease' });
    await lc.writeBlob([blob], { ref: 'du-ctd', expected: sha256(blob), total: blob.length });
    lc.close();
    try {
      const r = JSON.parse(await ok(['du', '--json'], ctd.address)) as DuReport;
      const base = imgA.manifests[0]!.layers[0]!.descriptor.digest;
      const sizes = new Map((await listContent(cc)).map((i) => [i.digest, i.size]));
      const chain0 = chainIDs([imgA.manifests[0]!.layers[0]!.diffID])[0]!;
      const u0 = (await cc.call(cc.snapshots, cc.snapshots.usage, { snapshotter: 'overlayfs', key: chain0 })).size;
      for (const ref of [refA, refB]) {
        const got = r.images.find((i) => i.name === ref)!;
        expect(got.content.count).toBe(4);
        expect(got.content.shared).toBe(sizes.get(base));
        expect(got.snapshots.count).toBe(2);
        expect(got.snapshots.shared).toBe(u0);
      }
      expect(r.snapshotters.map((s) => s.name)).toEqual(expect.arrayContaining(['overlayfs', 'native']));
      expect(r.snapshotters.find((s) => s.name === 'overlayfs')!.count).toBe(3);
      expect(r.orphans).toContainEqual({ type: 'content', id: sha256(blob), size: 777, keptBy: { root: 'lease du-lease', path: [], summary: 'lease du-lease' }, alsoIn: [] });
    } finally {
      cc.close();
      await ctd.stop();
    }
  }, 120_000);
});

describe('strata du\'s report', () => {
  it('names the whole chain when an orphan is kept through others: a parent of a parent of a container\'s snapshot, a blob behind an expired lease is not kept', () => {
    const snap = (key: string, parent: string, size: number) => ({ snapshotter: 'overlayfs', key, parent, kind: 'committed', labels: {}, size, inodes: 1 });
    const r = diskUsage({
      namespace: 'ns',
      now: Date.parse('2030-01-01T00:00:00Z'),
      images: [],
      content: [{ digest: `sha256:${'a'.repeat(64)}`, size: 10, labels: {} }],
      ingests: [],
      snapshotters: ['overlayfs'],
      snapshots: [snap('base', '', 100), snap('mid', 'base', 20), snap('top', 'mid', 3)],
      containers: [{ id: 'c1', snapshotter: 'overlayfs', snapshotKey: 'top', labels: {} }],
      leases: [{ id: 'old', labels: { 'containerd.io/gc.expire': '2029-01-01T00:00:00Z' }, resources: [{ type: 'content', id: `sha256:${'a'.repeat(64)}` }] }],
    });
    const base = r.orphans.find((o) => o.id === 'overlayfs/base')!;
    expect(base.keptBy).toEqual({
      root: 'container',
      path: [
        { from: 'container c1', to: 'snapshot overlayfs/top', reason: 'snapshot' },
        { from: 'snapshot overlayfs/top', to: 'snapshot overlayfs/mid', reason: 'parent' },
        { from: 'snapshot overlayfs/mid', to: 'snapshot overlayfs/base', reason: 'parent' },
      ],
      summary: 'parent of snapshot overlayfs/mid, kept by container c1',
    });
    expect(r.orphans.find((o) => o.type === 'content')).toEqual({ type: 'content', id: `sha256:${'a'.repeat(64)}`, size: 10, keptBy: null, alsoIn: [] });
    expect(r.snapshotters).toEqual([{ name: 'overlayfs', count: 3, size: 123, inodes: 3 }]);
    expect(r.reclaimable).toBe(10);
  });
});
