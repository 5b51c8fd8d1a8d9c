/**
 * The image store in process, on a real SQLite file: CRUD with containerd's wording, validation, update field
 * paths (labels, labels.<k>, target, annotations, annotations.<k>), created_at kept, filters, namespace
 * isolation and occupancy, events, and persistence across a reopen.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openLocalContentStore, type LocalContentStore } from '../../src/content/local.js';
import type { EventPayload } from '../../src/events/types.js';
import { MetadataStore } from '../../src/metadata/index.js';
import { MediaTypeOCIIndex, MediaTypeOCIManifest } from '../../src/images/types.js';
import { type Descriptor } from '../../src/core/descriptor.js';
import { kindOf } from '../helpers/errors.js';
import { sha256 } from '../helpers/data.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let t: TempDir;
let local: LocalContentStore;
let md: MetadataStore;
const events: { namespace: string; topic: string; event: EventPayload }[] = [];

const target = (body: string, mediaType = MediaTypeOCIManifest): Descriptor => ({
  mediaType,
  digest: sha256(Buffer.from(body)),
  size: Buffer.byteLength(body),
});

beforeAll(async () => {
  t = await tempDir();
  local = await openLocalContentStore(join(t.path, 'content'));
  md = MetadataStore.open(join(t.path, 'meta.db'), local, { publish: (namespace, topic, event) => events.push({ namespace, topic, event }) });
});
afterAll(async () => {
  md?.close();
  await t?.cleanup();
});

describe('image store', () => {
  it('creates, gets, lists and deletes with containerd wording', async () => {
    const s = md.images.bind({ namespace: 'crud' });
    const tg = { ...target('m1'), annotations: { 'org.opencontainers.image.ref.name': 'latest' } };
    const created = await s.create({ name: 'docker.io/library/busybox:latest', target: tg, labels: { a: '1' } });
    expect(created.target).toEqual(tg);
    expect(created.labels).toEqual({ a: '1' });
    expect(created.createdAt.getTime()).toBe(created.updatedAt.getTime());
    const got = await s.get('docker.io/library/busybox:latest');
    expect(got).toEqual(created);
    await expect(s.create({ name: 'docker.io/library/busybox:latest', target: tg })).rejects.toThrow(
      'image "docker.io/library/busybox:latest": already exists',
    );
    await expect(s.get('nope')).rejects.toThrow('image "nope": not found');
    expect(await kindOf(s.get('nope'))).toBe('not found');
    await s.create({ name: 'a-first', target: target('m2') });
    expect((await s.list()).map((i) => i.name)).toEqual(['a-first', 'docker.io/library/busybox:latest']);
    await s.delete('a-first');
    expect(await kindOf(s.delete('a-first'))).toBe('not found');
    expect((await s.list()).map((i) => i.name)).toEqual(['docker.io/library/busybox:latest']);
  });

  it('validates name, target and labels', async () => {
    const s = md.images.bind({ namespace: 'valid' });
    const ok = target('x');
    const cases: [string, Parameters<typeof s.create>[0], RegExp][] = [
      ['empty name', { name: '', target: ok }, /image name must not be empty/],
      ['bad digest', { name: 'n', target: { ...ok, digest: 'sha256:abc' } }, /Target.Digest "sha256:abc" invalid/],
      ['no digest', { name: 'n', target: { ...ok, digest: '' } }, /Target.Digest "" invalid/],
      ['zero size', { name: 'n', target: { ...ok, size: 0 } }, /Target.Size must be greater than zero/],
      ['no media type', { name: 'n', target: { ...ok, mediaType: '' } }, /Target.MediaType must be set/],
      ['empty label key', { name: 'n', target: ok, labels: { '': 'v' } }, /image.Labels: label key must not be empty/],
      ['huge label', { name: 'n', target: ok, labels: { k: 'v'.repeat(5000) } }, /image.Labels: label key and value greater than maximum size/],
    ];
    for (const [what, img, msg] of cases) {
      const p = s.create(img);
      await expect(p, what).rejects.toThrow(msg);
      expect(await kindOf(s.create(img)), what).toBe('invalid argument');
    }
    expect(await s.list()).toEqual([]);
  });

  it('updates by field paths and keeps created_at', async () => {
    const s = md.images.bind({ namespace: 'upd' });
    const t1 = { ...target('t1'), annotations: { x: '1', y: '2' } };
    const c = await s.create({ name: 'img', target: t1, labels: { a: '1', b: '2' } });
    await new Promise((r) => setTimeout(r, 5));

    let u = await s.update({ name: 'img', labels: { a: '9', c: '3' } }, ['labels.a', 'labels.b']);
    expect(u.labels).toEqual({ a: '9' });
    expect(u.target).toEqual(t1);
    expect(u.createdAt).toEqual(c.createdAt);
    expect(u.updatedAt.getTime()).toBeGreaterThan(c.updatedAt.getTime());

    u = await s.update({ name: 'img', labels: { z: '0' } }, ['labels']);
    expect(u.labels).toEqual({ z: '0' });

    const t2 = target('t2', MediaTypeOCIIndex);
    u = await s.update({ name: 'img', target: t2 }, ['target']);
    expect(u.target).toEqual(t2);
    expect(u.labels).toEqual({ z: '0' });

    u = await s.update({ name: 'img', target: { ...t2, annotations: { k: 'v', drop: 'x' } } }, ['annotations']);
    expect(u.target.annotations).toEqual({ k: 'v', drop: 'x' });
    u = await s.update({ name: 'img', target: { ...t2, annotations: { k: 'w' } } }, ['annotations.k', 'annotations.drop']);
    expect(u.target.annotations).toEqual({ k: 'w' });

    // No paths: labels and target are replaced wholesale.
    u = await s.update({ name: 'img', target: t1, labels: { only: 'this' } });
    expect(u.target).toEqual(t1);
    expect(u.labels).toEqual({ only: 'this' });
    expect(u.createdAt).toEqual(c.createdAt);
    expect(await s.get('img')).toEqual(u);

    await expect(s.update({ name: 'img' }, ['name'])).rejects.toThrow('cannot update "name" field on image "img"');
    expect(await kindOf(s.update({ name: 'img', target: { ...t1, size: 0 } }, ['target']))).toBe('invalid argument');
    expect(await kindOf(s.update({ name: 'img', labels: {} }))).toBe('invalid argument'); // no target given
    expect(await kindOf(s.update({ name: 'missing', labels: {} }, ['labels']))).toBe('not found');
    expect(await kindOf(s.update({ name: '', labels: {} }, ['labels']))).toBe('invalid argument');
    expect((await s.get('img')).labels).toEqual({ only: 'this' }); // failed updates changed nothing
  });

  it('filters on name, target.mediatype, target.digest, labels and annotations', async () => {
    const s = md.images.bind({ namespace: 'filters' });
    const m = target('fm');
    const i = target('fi', MediaTypeOCIIndex);
    await s.create({ name: 'docker.io/library/alpine:3', target: m, labels: { env: 'prod', 'a.b': 'dotted' } });
    await s.create({ name: 'docker.io/library/busybox:1', target: i, labels: { env: 'dev' } });
    await s.create({ name: 'localhost/x:y', target: { ...m, annotations: { note: 'yes' } } });
    const names = async (...f: string[]) => (await s.list(f)).map((x) => x.name);
    expect(await names('name==localhost/x:y')).toEqual(['localhost/x:y']);
    expect(await names('name~=busybox')).toEqual(['docker.io/library/busybox:1']);
    expect(await names(`target.mediatype==${MediaTypeOCIIndex}`)).toEqual(['docker.io/library/busybox:1']);
    expect(await names(`target.digest==${m.digest}`)).toEqual(['docker.io/library/alpine:3', 'localhost/x:y']);
    expect(await names('labels.env==prod')).toEqual(['docker.io/library/alpine:3']);
    expect(await names('labels.env')).toEqual(['docker.io/library/alpine:3', 'docker.io/library/busybox:1']);
    expect(await names('labels."a.b"==dotted')).toEqual(['docker.io/library/alpine:3']);
    expect(await names('labels.env!=prod')).toEqual(['docker.io/library/busybox:1', 'localhost/x:y']);
    expect(await names('annotations.note==yes')).toEqual(['localhost/x:y']);
    expect(await names('labels.env==prod', 'name==localhost/x:y')).toEqual(['docker.io/library/alpine:3', 'localhost/x:y']);
    expect(await names('labels.env==dev,name~=alpine')).toEqual([]);
    expect(await kindOf(s.list(['name=='] ))).toBe('invalid argument');
  });

  it('isolates namespaces and keeps a namespace with images occupied', async () => {
    const a = md.images.bind({ namespace: 'iso-a' });
    const b = md.images.bind({ namespace: 'iso-b' });
    await a.create({ name: 'same', target: target('a') });
    await b.create({ name: 'same', target: target('b') });
    expect((await a.get('same')).target.digest).toBe(target('a').digest);
    expect((await b.get('same')).target.digest).toBe(target('b').digest);
    await a.delete('same');
    expect(await kindOf(a.get('same'))).toBe('not found');
    expect((await b.get('same')).target.digest).toBe(target('b').digest);
    expect(md.namespaces.exists('iso-b')).toBe(true);
    expect(() => md.namespaces.delete('iso-b')).toThrow('namespace "iso-b" must be empty, but it still has images');
    await b.delete('same');
    md.namespaces.delete('iso-b');
    expect(md.namespaces.exists('iso-b')).toBe(false);
  });

  it('publishes create, update and delete events with the images service types', async () => {
    const s = md.images.bind({ namespace: 'ev' });
    events.length = 0;
    await s.create({ name: 'e', target: target('e'), labels: { l: '1' } });
    await s.update({ name: 'e', labels: { l: '2' } }, ['labels.l']);
    await s.delete('e');
    await kindOf(s.delete('e')); // a failed call publishes nothing
    await kindOf(s.create({ name: '', target: target('e') }));
    expect(events).toEqual([
      { namespace: 'ev', topic: '/images/create', event: { kind: 'typed', type: 'containerd.services.images.v1.ImageCreate', data: { name: 'e', labels: { l: '1' } } } },
      { namespace: 'ev', topic: '/images/update', event: { kind: 'typed', type: 'containerd.services.images.v1.ImageUpdate', data: { name: 'e', labels: { l: '2' } } } },
      { namespace: 'ev', topic: '/images/delete', event: { kind: 'typed', type: 'containerd.services.images.v1.ImageDelete', data: { name: 'e' } } },
    ]);
  });

  it('requires a valid namespace', async () => {
    expect(await kindOf(Promise.resolve().then(() => md.images.bind({ namespace: '' })))).toBe('failed precondition');
  });

  it('persists across a reopen of the database', async () => {
    const s = md.images.bind({ namespace: 'persist' });
    const img = await s.create({ name: 'kept', target: { ...target('k'), annotations: { a: 'b' } }, labels: { x: 'y' } });
    md.close();
    md = MetadataStore.open(join(t.path, 'meta.db'), local);
    expect(await md.images.bind({ namespace: 'persist' }).get('kept')).toEqual(img);
    expect(md.images.byTarget(img.target.digest)).toEqual([{ namespace: 'persist', name: 'kept' }]);
  });
});
