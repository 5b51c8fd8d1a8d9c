/**
 * The collector's reference model, one kind of reference at a time, on a real store (SQLite file, local content
 * store, overlay snapshotter): what keeps an object, and that the object's data leaves the disk once nothing does.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LABEL_GC_EXPIRE, LABEL_GC_FLAT } from '../../src/core/labels.js';
import { MetadataCollector } from '../../src/gc/index.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { kindOf } from '../helpers/errors.js';
import { backendKeyOf, backendKeys, hasBlob, openStore, removedIds, SNAPSHOTTER, startIngest, writeBlob, type Store } from './harness.js';

let dir: TempDir;
let s: Store;

beforeEach(async () => {
  dir = await tempDir('strata-gc-refs-');
  s = await openStore(dir.path);
});

afterEach(async () => {
  await s.close();
  await dir.cleanup();
});

const ROOT = { 'containerd.io/gc.root': 'true' };
const hour = 60 * 60 * 1000;
const contentRow = (ns: string, digest: string) => s.md.db.prepare('SELECT 1 FROM content WHERE namespace = ? AND digest = ?').get(ns, digest) !== undefined;

describe('roots', () => {
  it('an image keeps its target; removing the image frees the blob on disk', async () => {
    const c = s.content('ns');
    const d = await writeBlob(c, '{"manifest":1}');
    await s.images('ns').create({ name: 'img', target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: d, size: 14 } });
    let r = await s.collector.collect();
    expect(r.removed).toEqual([]);
    expect(hasBlob(s, d)).toBe(true);
    await s.images('ns').delete('img');
    r = await s.collector.collect();
    expect(r.removed).toEqual([{ type: 'content', namespace: 'ns', id: d, size: 14 }]);
    expect(r.errors).toEqual([]);
    expect(hasBlob(s, d)).toBe(false);
    expect(await kindOf(c.info(d))).toBe('not found');
  });

  it('a lease keeps an ingest and a half-unpacked chain until it is deleted', async () => {
    s.md.leases.create('ns', 'unpack');
    const c = s.content('ns', 'unpack');
    const sn = s.snapshots('ns', 'unpack');
    await startIngest(c, 'layer-download', 'partial bytes');
    await sn.prepare('extract-1', '');
    await sn.commit('layer-1', 'extract-1');
    const mounts = await sn.prepare('extract-2', 'layer-1');
    expect(mounts).toHaveLength(1);
    const keys = await backendKeys(s);
    expect(keys).toHaveLength(2);

    let r = await s.collector.collect();
    expect(r.removed).toEqual([]);
    expect((await c.status('layer-download')).offset).toBe(13);
    expect((await sn.stat('extract-2')).parent).toBe('layer-1');

    s.md.leases.delete('ns', 'unpack');
    r = await s.collector.collect();
    expect(r.errors).toEqual([]);
    expect(removedIds(r)).toEqual(['ingest ns layer-download', `snapshot ns ${SNAPSHOTTER}/extract-2`, `snapshot ns ${SNAPSHOTTER}/layer-1`]);
    expect(r.removed.find((o) => o.type === 'ingest')!.size).toBe(13);
    expect(await kindOf(c.status('layer-download'))).toBe('not found');
    expect(await s.local.listStatuses()).toEqual([]);
    expect(await backendKeys(s)).toEqual([]);
  });

  it('a lease whose gc.expire has passed is deleted with the objects only it kept', async () => {
    s.md.leases.create('ns', 'old', { [LABEL_GC_EXPIRE]: new Date(Date.now() - hour).toISOString() });
    s.md.leases.create('ns', 'young', { [LABEL_GC_EXPIRE]: new Date(Date.now() + hour).toISOString() });
    const old = await writeBlob(s.content('ns', 'old'), 'held by an expired lease');
    const young = await writeBlob(s.content('ns', 'young'), 'held by a live lease');
    const r = await s.collector.collect();
    expect(r.expiredLeases).toEqual([{ type: 'lease', namespace: 'ns', id: 'old' }]);
    expect(removedIds(r)).toEqual([`content ns ${old}`, 'lease ns old']);
    expect(s.md.leases.list('ns').map((l) => l.id)).toEqual(['young']);
    expect(hasBlob(s, old)).toBe(false);
    expect(hasBlob(s, young)).toBe(true);

    // The collector's clock decides: two hours later the other lease has expired too.
    const later = new MetadataCollector(s.md, { now: () => Date.now() + 2 * hour });
    const r2 = await later.collect();
    expect(r2.expiredLeases.map((l) => l.id)).toEqual(['young']);
    expect(hasBlob(s, young)).toBe(false);
  });

  it('containerd.io/gc.root keeps content and snapshots (and what they reference); dropping it frees them', async () => {
    const c = s.content('ns');
    const child = await writeBlob(c, 'child of a root blob');
    const root = await writeBlob(c, 'root blob', { ...ROOT, 'containerd.io/gc.ref.content.x': child });
    const sn = s.snapshots('ns');
    await sn.prepare('rooted', '', { labels: ROOT });
    let r = await s.collector.collect();
    expect(r.removed).toEqual([]);
    expect((await s.collector.why({ type: 'content', namespace: 'ns', id: child })).root).toBe('label containerd.io/gc.root');

    await c.update({ digest: root, labels: {} }, ['labels.containerd.io/gc.root']);
    await sn.update({ name: 'rooted', labels: {} }, ['labels.containerd.io/gc.root']);
    r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`content ns ${child}`, `content ns ${root}`, `snapshot ns ${SNAPSHOTTER}/rooted`].sort());
    expect(hasBlob(s, root) || hasBlob(s, child)).toBe(false);
    expect(await backendKeys(s)).toEqual([]);
  });

  it('a future containerd.io/gc.expire keeps content and snapshots; a past one does not', async () => {
    const c = s.content('ns');
    const soon = await writeBlob(c, 'expires later', { [LABEL_GC_EXPIRE]: new Date(Date.now() + hour).toISOString() });
    const past = await writeBlob(c, 'expired', { [LABEL_GC_EXPIRE]: new Date(Date.now() - hour).toISOString() });
    await s.snapshots('ns').prepare('temp', '', { labels: { [LABEL_GC_EXPIRE]: new Date(Date.now() + hour).toISOString() } });
    const r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`content ns ${past}`]);
    expect(hasBlob(s, soon)).toBe(true);
    const later = await new MetadataCollector(s.md, { now: () => Date.now() + 2 * hour }).collect();
    expect(removedIds(later)).toEqual([`content ns ${soon}`, `snapshot ns ${SNAPSHOTTER}/temp`].sort());
  });

  it('an unleased ingest is kept until it expires, then its row and data go', async () => {
    const c = s.content('ns');
    await startIngest(c, 'fresh', 'some bytes');
    expect((await s.collector.collect()).removed).toEqual([]);
    expect((await c.status('fresh')).offset).toBe(10);
    // Unleased ingests expire a day after they start.
    const r = await new MetadataCollector(s.md, { now: () => Date.now() + 25 * hour }).collect();
    expect(r.removed).toEqual([{ type: 'ingest', namespace: 'ns', id: 'fresh', size: 10 }]);
    expect(await kindOf(c.status('fresh'))).toBe('not found');
    expect(await s.local.listStatuses()).toEqual([]);
  });
});

describe('edges', () => {
  it('a snapshot chain is kept by its child, and goes when the child does', async () => {
    const sn = s.snapshots('ns');
    await sn.prepare('a', '');
    await sn.commit('base', 'a');
    await sn.prepare('b', 'base');
    await sn.commit('mid', 'b');
    await sn.prepare('top', 'mid', { labels: ROOT });
    expect((await s.collector.collect()).removed).toEqual([]);
    const why = await s.collector.why({ type: 'snapshot', namespace: 'ns', snapshotter: SNAPSHOTTER, id: 'base' });
    expect(why.reachable).toBe(true);
    expect(why.root).toBe('label containerd.io/gc.root');
    expect(why.path.map((e) => `${e.from.id} -${e.reason}-> ${e.to.id}`)).toEqual(['top -parent-> mid', 'mid -parent-> base']);

    await sn.update({ name: 'top', labels: {} }, ['labels.containerd.io/gc.root']);
    const r = await s.collector.collect();
    expect(r.errors).toEqual([]);
    expect(removedIds(r)).toEqual(['base', 'mid', 'top'].map((k) => `snapshot ns ${SNAPSHOTTER}/${k}`));
    expect(await backendKeys(s)).toEqual([]);
  });

  it('gc.ref.content[.*] and gc.ref.snapshot.<snapshotter>[.*] labels keep their targets; unknown snapshotters are dead edges', async () => {
    const c = s.content('ns');
    const sn = s.snapshots('ns');
    const plain = await writeBlob(c, 'plain ref');
    const dotted = await writeBlob(c, 'dotted ref');
    const slashed = await writeBlob(c, 'slashed ref');
    const lookalike = await writeBlob(c, 'not a ref: gc.ref.contentX');
    await sn.prepare('s1', '');
    await sn.prepare('s2', '');
    await sn.prepare('s3', '');
    await writeBlob(c, 'the root', {
      ...ROOT,
      'containerd.io/gc.ref.content': plain,
      'containerd.io/gc.ref.content.l.0': dotted,
      'containerd.io/gc.ref.content/x': slashed,
      'containerd.io/gc.ref.contentX': lookalike,
      [`containerd.io/gc.ref.snapshot.${SNAPSHOTTER}`]: 's1',
      [`containerd.io/gc.ref.snapshot.${SNAPSHOTTER}.extra.part`]: 's2',
      'containerd.io/gc.ref.snapshot.btrfs': 's3',
    });
    const r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`content ns ${lookalike}`, `snapshot ns ${SNAPSHOTTER}/s3`].sort());
    const why = await s.collector.why({ type: 'snapshot', namespace: 'ns', snapshotter: SNAPSHOTTER, id: 's2' });
    expect(why.path.map((e) => e.reason)).toEqual([`containerd.io/gc.ref.snapshot.${SNAPSHOTTER}.extra.part`]);
  });

  it('a snapshot label references content (a committed layer keeping its blob)', async () => {
    const c = s.content('ns');
    const blob = await writeBlob(c, 'layer blob');
    await s.snapshots('ns').prepare('layer', '', { labels: { ...ROOT, 'containerd.io/gc.ref.content.l': blob } });
    expect((await s.collector.collect()).removed).toEqual([]);
    expect(hasBlob(s, blob)).toBe(true);
  });

  it('back references: gc.bref.content, gc.bref.snapshot.<snapshotter> and gc.bref.image keep the labelled object', async () => {
    const c = s.content('ns');
    const sn = s.snapshots('ns');
    const holder = await writeBlob(c, 'holder', ROOT);
    const byContent = await writeBlob(c, 'kept by content', { 'containerd.io/gc.bref.content': holder });
    await sn.prepare('holder-snap', '', { labels: ROOT });
    const bySnapshot = await writeBlob(c, 'kept by snapshot', { [`containerd.io/gc.bref.snapshot.${SNAPSHOTTER}.x`]: 'holder-snap' });
    await sn.prepare('kept-snap', '', { labels: { 'containerd.io/gc.bref.content/any': holder } });
    const target = await writeBlob(c, 'image target');
    await s.images('ns').create({ name: 'app', target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: target, size: 12 } });
    const byImage = await writeBlob(c, 'kept by image', { 'containerd.io/gc.bref.image': 'app' });
    const unheld = await writeBlob(c, 'back reference to nothing', { 'containerd.io/gc.bref.content': `sha256:${'0'.repeat(64)}` });

    let r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`content ns ${unheld}`]);
    const why = await s.collector.why({ type: 'content', namespace: 'ns', id: bySnapshot });
    expect(why.path).toEqual([
      {
        from: { type: 'snapshot', namespace: 'ns', snapshotter: SNAPSHOTTER, id: 'holder-snap' },
        to: { type: 'content', namespace: 'ns', id: bySnapshot },
        reason: `containerd.io/gc.bref.snapshot.${SNAPSHOTTER}.x`,
      },
    ]);
    expect((await s.collector.why({ type: 'content', namespace: 'ns', id: byImage })).path.map((e) => `${e.from.type} ${e.from.id}`)).toEqual(['image app']);

    await c.update({ digest: holder, labels: {} }, ['labels.containerd.io/gc.root']);
    await sn.update({ name: 'holder-snap', labels: {} }, ['labels.containerd.io/gc.root']);
    await s.images('ns').delete('app');
    r = await s.collector.collect();
    expect(removedIds(r)).toEqual(
      [
        `content ns ${holder}`,
        `content ns ${byContent}`,
        `content ns ${bySnapshot}`,
        `content ns ${target}`,
        `content ns ${byImage}`,
        `snapshot ns ${SNAPSHOTTER}/holder-snap`,
        `snapshot ns ${SNAPSHOTTER}/kept-snap`,
      ].sort(),
    );
  });

  it('a gc.flat lease keeps its resources (and snapshot parents) without following their labels', async () => {
    s.md.leases.create('ns', 'flat', { [LABEL_GC_FLAT]: 'true' });
    const c = s.content('ns', 'flat');
    const sn = s.snapshots('ns', 'flat');
    const plain = s.content('ns');
    const labelTarget = await writeBlob(plain, 'referenced by a flat-leased blob');
    const snapLabelTarget = await writeBlob(plain, 'referenced by a flat-leased snapshot');
    const held = await writeBlob(c, 'flat-leased blob', { 'containerd.io/gc.ref.content.x': labelTarget });
    await s.snapshots('ns').prepare('p', '');
    await s.snapshots('ns').commit('parent', 'p');
    await sn.prepare('child', 'parent', { labels: { 'containerd.io/gc.ref.content': snapLabelTarget } });

    const r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`content ns ${labelTarget}`, `content ns ${snapLabelTarget}`].sort());
    expect(hasBlob(s, held)).toBe(true);
    const why = await s.collector.why({ type: 'snapshot', namespace: 'ns', snapshotter: SNAPSHOTTER, id: 'parent' });
    expect(why.root).toBe('lease flat (flat)');
    expect(why.path.map((e) => `${e.from.id} -${e.reason}-> ${e.to.id}`)).toEqual(['child -parent-> parent']);

    // The same lease without gc.flat follows the labels.
    s.md.leases.create('ns', 'deep');
    const deepTarget = await writeBlob(plain, 'referenced by a deep-leased blob');
    await writeBlob(s.content('ns', 'deep'), 'deep-leased blob', { 'containerd.io/gc.ref.content.x': deepTarget });
    expect((await s.collector.collect()).removed).toEqual([]);
  });

  it('an object reached flat first and fully later is walked fully', async () => {
    // Content X is in a flat lease and also referenced by a rooted blob: X's own label must be followed.
    s.md.leases.create('ns', 'flat', { [LABEL_GC_FLAT]: 'true' });
    const plain = s.content('ns');
    const deep = await writeBlob(plain, 'deep');
    const x = await writeBlob(s.content('ns', 'flat'), 'x', { 'containerd.io/gc.ref.content': deep });
    await writeBlob(plain, 'root', { ...ROOT, 'containerd.io/gc.ref.content': x });
    expect((await s.collector.collect()).removed).toEqual([]);
  });
});

describe('containers', () => {
  it('a container keeps its snapshot (and parents) and its label references; gc.bref.container keeps the labelled object', async () => {
    const sn = s.snapshots('ns');
    await sn.prepare('p', '');
    await sn.commit('image-top', 'p');
    await sn.prepare('c1-rootfs', 'image-top');
    const c = s.content('ns');
    const spec = await writeBlob(c, 'referenced by the container');
    const back = await writeBlob(c, 'kept by a back reference to the container', { 'containerd.io/gc.bref.container': 'c1' });
    await s.md.containers.bind({ namespace: 'ns' }).create({
      id: 'c1',
      runtime: { name: 'io.containerd.runc.v2' },
      spec: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Spec', value: Buffer.from('{}') },
      snapshotter: SNAPSHOTTER,
      snapshotKey: 'c1-rootfs',
      labels: { 'containerd.io/gc.ref.content.spec': spec },
    });
    expect((await s.collector.collect()).removed).toEqual([]);
    const why = await s.collector.why({ type: 'snapshot', namespace: 'ns', snapshotter: SNAPSHOTTER, id: 'image-top' });
    expect(why.root).toBe('container');
    expect(why.path.map((e) => `${e.from.type} ${e.from.id} -${e.reason}-> ${e.to.id}`)).toEqual(['container c1 -snapshot-> c1-rootfs', 'snapshot c1-rootfs -parent-> image-top']);

    await s.md.containers.bind({ namespace: 'ns' }).delete('c1');
    const r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`content ns ${back}`, `content ns ${spec}`, `snapshot ns ${SNAPSHOTTER}/c1-rootfs`, `snapshot ns ${SNAPSHOTTER}/image-top`].sort());
    expect(await backendKeys(s)).toEqual([]);
  });
});

describe('namespaces', () => {
  it('a label never reaches into another namespace; the other namespace keeps its own', async () => {
    const d = await writeBlob(s.content('b'), 'only namespace b records this');
    await writeBlob(s.content('a'), 'a root in a', { ...ROOT, 'containerd.io/gc.ref.content': d });
    let r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`content b ${d}`]);
    expect(hasBlob(s, d)).toBe(false);

    await writeBlob(s.content('b'), 'only namespace b records this');
    await s.images('b').create({ name: 'b-image', target: { mediaType: 'application/octet-stream', digest: d, size: 29 } });
    r = await s.collector.collect();
    expect(r.removed).toEqual([]);
    expect(hasBlob(s, d)).toBe(true);
    expect((await s.collector.why({ type: 'content', namespace: 'a', id: d })).reachable).toBe(false);
  });

  it('a blob shared by two namespaces stays until both have dropped it', async () => {
    const data = 'shared between namespaces';
    const d = await writeBlob(s.content('a'), data);
    await writeBlob(s.content('b'), data); // adopted: no second copy
    await s.images('b').create({ name: 'keep', target: { mediaType: 'application/octet-stream', digest: d, size: data.length } });
    let r = await s.collector.collect();
    // a's record goes; the blob stays for b, so nothing was freed.
    expect(r.removed).toEqual([{ type: 'content', namespace: 'a', id: d, size: 0 }]);
    expect(hasBlob(s, d)).toBe(true);
    expect(contentRow('b', d)).toBe(true);

    await s.images('b').delete('keep');
    r = await s.collector.collect();
    expect(r.removed).toEqual([{ type: 'content', namespace: 'b', id: d, size: data.length }]);
    expect(hasBlob(s, d)).toBe(false);
  });

  it('both namespaces dropping a shared blob in one run free it once', async () => {
    const data = 'dropped by both';
    const d = await writeBlob(s.content('a'), data);
    await writeBlob(s.content('b'), data);
    const r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`content a ${d}`, `content b ${d}`]);
    expect(r.removed.reduce((n, o) => n + o.size, 0)).toBe(data.length);
    expect(hasBlob(s, d)).toBe(false);
  });

  it('a snapshot labelled from another namespace is not kept by it', async () => {
    await s.snapshots('b').prepare('k', '');
    await s.snapshots('a').prepare('root', '', { labels: { ...ROOT, [`containerd.io/gc.ref.snapshot.${SNAPSHOTTER}`]: 'k' } });
    const bkey = backendKeyOf(s, 'b', 'k')!;
    const r = await s.collector.collect();
    expect(removedIds(r)).toEqual([`snapshot b ${SNAPSHOTTER}/k`]);
    expect(await backendKeys(s)).not.toContain(bkey);
  });
});

describe('sizes', () => {
  it('a dry run reports a snapshot\'s usage as the bytes it would free; the collection itself does not measure it', async () => {
    const sn = s.snapshots('ns');
    const mounts = await sn.prepare('with-data', '');
    // A parentless active snapshot is a bind mount of its own directory: write there directly.
    await writeFile(join(mounts[0]!.source, 'file'), Buffer.alloc(64 * 1024, 1));
    await sn.commit('committed', 'with-data');
    const dry = await s.collector.collect({ dryRun: true });
    expect(dry.removed).toHaveLength(1);
    expect(dry.removed[0]!.size).toBeGreaterThanOrEqual(64 * 1024);
    const r = await s.collector.collect();
    expect(r.removed).toEqual([{ ...dry.removed[0]!, size: 0 }]);
  });
});
