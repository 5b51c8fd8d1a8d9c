/**
 * The container store in process, on a real SQLite file: CRUD with containerd's wording, validation (with
 * error kinds), update field paths and the full-replace rules (immutable snapshotter and runtime name),
 * filters, events, namespace isolation and occupancy, listAll for the garbage collector, and persistence
 * across a reopen.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openLocalContentStore, type LocalContentStore } from '../../src/content/local.js';
import type { EventPayload } from '../../src/events/types.js';
import { MetadataStore } from '../../src/metadata/index.js';
import type { ContainerInput } from '../../src/metadata/containers.js';
import { kindOf } from '../helpers/errors.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let t: TempDir;
let local: LocalContentStore;
let md: MetadataStore;
const events: { namespace: string; topic: string; event: EventPayload }[] = [];

const SPEC = { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Spec', value: Buffer.from('{"ociVersion":"1.0.2-dev"}') };
const RUNC = { name: 'io.containerd.runc.v2', options: { typeUrl: 'containerd.runc.v1.Options', value: Buffer.alloc(0) } };

const base = (id: string, extra: Partial<ContainerInput> = {}): ContainerInput => ({
  id,
  runtime: RUNC,
  spec: SPEC,
  snapshotter: 'overlayfs',
  snapshotKey: id,
  image: 'docker.io/library/busybox:latest',
  ...extra,
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

describe('container store', () => {
  it('creates, gets, lists and deletes with containerd wording', async () => {
    const s = md.containers.bind({ namespace: 'crud' });
    const ext = { 'io.example/ext': { typeUrl: 'example.Ext', value: Buffer.from([1, 2, 3]) } };
    const created = await s.create(base('c1', { labels: { a: '1', empty: '' }, extensions: ext }));
    expect(created).toMatchObject({
      id: 'c1',
      labels: { a: '1' }, // an empty value is no label, as containerd's boltutil
      image: 'docker.io/library/busybox:latest',
      runtime: RUNC,
      spec: SPEC,
      snapshotter: 'overlayfs',
      snapshotKey: 'c1',
      extensions: ext,
    });
    expect(created.createdAt.getTime()).toBe(created.updatedAt.getTime());
    expect(created.sandboxId).toBeUndefined();
    expect(await s.get('c1')).toEqual(created);

    await expect(s.create(base('c1'))).rejects.toThrow('container "c1": already exists');
    expect(await kindOf(s.create(base('c1')))).toBe('already exists');
    await expect(s.get('nope')).rejects.toThrow('container "nope" in namespace "crud": not found');
    expect(await kindOf(s.get('nope'))).toBe('not found');

    // Minimal record: no image, no snapshot, no runtime options, an empty spec Any.
    const min = await s.create({ id: 'a0', runtime: { name: 'io.containerd.runc.v2' }, spec: { typeUrl: '', value: Buffer.alloc(0) } });
    expect(min).toMatchObject({ image: '', snapshotter: '', snapshotKey: '', labels: {}, extensions: {}, runtime: { name: 'io.containerd.runc.v2' } });
    expect(min.runtime.options).toBeUndefined();
    expect(min.spec).toEqual({ typeUrl: '', value: Buffer.alloc(0) });

    expect((await s.list()).map((c) => c.id)).toEqual(['a0', 'c1']);
    await s.delete('a0');
    await expect(s.delete('a0')).rejects.toThrow('container a0: not found');
    expect(await kindOf(s.delete('a0'))).toBe('not found');
    expect((await s.list()).map((c) => c.id)).toEqual(['c1']);
  });

  it('validates id, runtime, spec, snapshotter, labels and extensions', async () => {
    const s = md.containers.bind({ namespace: 'valid' });
    const cases: [string, ContainerInput, RegExp][] = [
      ['empty id', base(''), /create container failed validation: container.ID: identifier must not be empty/],
      ['bad id', base('a/b'), /container.ID: identifier "a\/b" must match/],
      ['id with a leading dash', base('-x'), /container.ID: identifier "-x" must match/],
      ['long id', base('a'.repeat(77)), /greater than maximum length \(76 characters\)/],
      ['no runtime', { ...base('r'), runtime: undefined }, /container.Runtime.Name must be set/],
      ['empty runtime name', base('r', { runtime: { name: '' } }), /container.Runtime.Name must be set/],
      ['no spec', { ...base('s'), spec: undefined }, /container.Spec must be set/],
      ['key without snapshotter', base('k', { snapshotter: '' }), /container.Snapshotter must be set if container.SnapshotKey is set/],
      ['empty label key', base('l', { labels: { '': 'v' } }), /containers.Labels: label key must not be empty/],
      ['huge label', base('l', { labels: { k: 'v'.repeat(5000) } }), /containers.Labels: label key and value greater than maximum size/],
      ['empty extension key', base('e', { extensions: { '': { typeUrl: 'x', value: Buffer.alloc(0) } } }), /container.Extension keys must not be zero-length/],
    ];
    for (const [what, c, msg] of cases) {
      await expect(s.create(c), what).rejects.toThrow(msg);
      expect(await kindOf(s.create(c)), what).toBe('invalid argument');
    }
    // A snapshotter without a key is fine (containerd only checks the other way round).
    await s.create(base('ok', { snapshotKey: '' }));
    expect((await s.list()).map((c) => c.id)).toEqual(['ok']);
  });

  it('updates by field paths, keeps created_at and refuses other paths', async () => {
    const s = md.containers.bind({ namespace: 'upd' });
    const e1 = { typeUrl: 'x.E1', value: Buffer.from('1') };
    const e2 = { typeUrl: 'x.E2', value: Buffer.from('2') };
    const c = await s.create(base('u', { labels: { a: '1', b: '2' }, extensions: { e1, e2 } }));

    let u = await s.update({ id: 'u', labels: { a: '9', c: '3' } }, ['labels.a', 'labels.b']);
    expect(u.labels).toEqual({ a: '9' });
    expect(u.createdAt).toEqual(c.createdAt);
    expect(u.updatedAt.getTime()).toBeGreaterThanOrEqual(c.updatedAt.getTime());
    // Untouched fields stay.
    expect(u).toMatchObject({ image: c.image, spec: SPEC, snapshotKey: 'u', extensions: { e1, e2 }, runtime: RUNC });

    u = await s.update({ id: 'u', labels: { z: '0' } }, ['labels']);
    expect(u.labels).toEqual({ z: '0' });

    const spec2 = { typeUrl: SPEC.typeUrl, value: Buffer.from('{"ociVersion":"1.0.2"}') };
    u = await s.update({ id: 'u', spec: spec2, image: 'other:1', snapshotKey: 'u2' }, ['spec', 'image', 'snapshotkey']);
    expect(u).toMatchObject({ spec: spec2, image: 'other:1', snapshotKey: 'u2', labels: { z: '0' } });

    const e3 = { typeUrl: 'x.E3', value: Buffer.from('3') };
    // As containerd: e2 absent from the request becomes an empty Any; "extensions" answers the request's set
    // but stored extensions are only ever added to (containerd's bolt code never clears them).
    const emptyAny = { typeUrl: '', value: Buffer.alloc(0) };
    u = await s.update({ id: 'u', extensions: { e3, e1: e3 } }, ['extensions.e3', 'extensions.e2']);
    expect(u.extensions).toEqual({ e1, e2: emptyAny, e3 });
    u = await s.update({ id: 'u', extensions: { e2 } }, ['extensions']);
    expect(u.extensions).toEqual({ e2 });
    expect((await s.get('u')).extensions).toEqual({ e1, e2, e3 });
    u = await s.get('u');

    // Paths that name immutable or unknown fields.
    for (const p of ['id', 'runtime', 'snapshotter', 'createdat', 'sandbox']) {
      await expect(s.update({ id: 'u' }, [p]), p).rejects.toThrow(`cannot update "${p}" field on "u"`);
      expect(await kindOf(s.update({ id: 'u' }, [p])), p).toBe('invalid argument');
    }
    // A spec path with no spec fails validation.
    await expect(s.update({ id: 'u' }, ['spec'])).rejects.toThrow('update failed validation: container.Spec must be set');
    // A key without a snapshotter cannot arise: the snapshotter is kept. An empty key is allowed.
    u = await s.update({ id: 'u', snapshotKey: '' }, ['snapshotkey']);
    expect(u.snapshotKey).toBe('');

    expect(await kindOf(s.update({ id: 'missing', labels: {} }, ['labels']))).toBe('not found');
    await expect(s.update({ id: '' }, ['labels'])).rejects.toThrow('must specify a container id');
    expect(await s.get('u')).toEqual(u); // failed updates changed nothing
  });

  it('full replace (no paths) rewrites the mutable fields and refuses changes to immutable ones', async () => {
    const s = md.containers.bind({ namespace: 'replace' });
    const c = await s.create(base('r', { labels: { a: '1' }, extensions: { e: { typeUrl: 'x', value: Buffer.from('x') } } }));
    await expect(s.update(base('r', { snapshotter: 'native' }))).rejects.toThrow('container.Snapshotter field is immutable');
    expect(await kindOf(s.update(base('r', { snapshotter: 'native' })))).toBe('invalid argument');
    await expect(s.update(base('r', { runtime: { name: 'io.containerd.runsc.v1' } }))).rejects.toThrow('container.Runtime.Name field is immutable');

    const spec2 = { typeUrl: SPEC.typeUrl, value: Buffer.from('{}') };
    const u = await s.update({ ...base('r'), image: 'new:2', labels: { b: '2' }, spec: spec2, snapshotKey: 'k2', extensions: {} });
    expect(u).toMatchObject({ image: 'new:2', labels: { b: '2' }, spec: spec2, snapshotKey: 'k2', extensions: {}, runtime: RUNC });
    expect(u.createdAt).toEqual(c.createdAt);
    // Runtime options are not part of a full replace.
    const v = await s.update({ ...base('r'), runtime: { name: RUNC.name, options: { typeUrl: 'other', value: Buffer.from('o') } }, snapshotKey: 'k2' });
    expect(v.runtime).toEqual(RUNC);
    // A full replace without a spec is invalid.
    expect(await kindOf(s.update({ ...base('r'), spec: undefined }))).toBe('invalid argument');
  });

  it('filters on id, image, runtime.name, labels, snapshotter and snapshotkey', async () => {
    const s = md.containers.bind({ namespace: 'filters' });
    await s.create(base('web', { image: 'nginx:1', labels: { env: 'prod', 'a.b': 'dotted' } }));
    await s.create(base('db', { image: 'postgres:16', labels: { env: 'dev' }, snapshotter: 'native' }));
    await s.create(base('bare', { image: '', runtime: { name: 'io.containerd.runsc.v1' }, snapshotter: '', snapshotKey: '' }));
    const ids = async (...f: string[]) => (await s.list(f)).map((x) => x.id);
    expect(await ids('id==web')).toEqual(['web']);
    expect(await ids('id~=^(w|d)')).toEqual(['db', 'web']);
    expect(await ids('image==nginx:1')).toEqual(['web']);
    expect(await ids('image')).toEqual(['db', 'web']); // present only when set
    expect(await ids('runtime.name==io.containerd.runsc.v1')).toEqual(['bare']);
    expect(await ids('runtime.name~=runc')).toEqual(['db', 'web']);
    expect(await ids('labels.env==prod')).toEqual(['web']);
    expect(await ids('labels.env')).toEqual(['db', 'web']);
    expect(await ids('labels."a.b"==dotted')).toEqual(['web']);
    expect(await ids('labels.env!=prod')).toEqual(['bare', 'db']);
    // containerd's adaptor has no snapshotter or snapshotkey field: such filters match nothing.
    expect(await ids('snapshotter==native')).toEqual([]);
    expect(await ids('snapshotkey==web')).toEqual([]);
    expect(await ids('labels.env==prod', 'id==bare')).toEqual(['bare', 'web']);
    expect(await ids('labels.env==dev,image~=nginx')).toEqual([]);
    expect(await kindOf(s.list(['id==']))).toBe('invalid argument');
  });

  it('isolates namespaces, keeps a namespace with containers occupied, and lists all for the collector', async () => {
    const a = md.containers.bind({ namespace: 'iso-a' });
    const b = md.containers.bind({ namespace: 'iso-b', lease: 'ignored' }); // containers are not leased
    await a.create(base('same', { image: 'a' }));
    await b.create(base('same', { image: 'b' }));
    expect((await a.get('same')).image).toBe('a');
    expect((await b.get('same')).image).toBe('b');
    expect(md.containers.listAll('iso-b').map((c) => [c.id, c.snapshotter, c.snapshotKey])).toEqual([['same', 'overlayfs', 'same']]);
    expect(md.containers.listAll('nowhere')).toEqual([]);
    await a.delete('same');
    expect(await kindOf(a.get('same'))).toBe('not found');
    expect((await b.get('same')).image).toBe('b');
    expect(() => md.namespaces.delete('iso-b')).toThrow('namespace "iso-b" must be empty, but it still has containers');
    await b.delete('same');
    md.namespaces.delete('iso-b');
    expect(md.namespaces.exists('iso-b')).toBe(false);
  });

  it('publishes create, update and delete events with containerd.events types', async () => {
    const s = md.containers.bind({ namespace: 'ev' });
    events.length = 0;
    await s.create(base('e', { labels: { l: '1' } }));
    await s.update({ id: 'e', labels: { l: '2' } }, ['labels.l']);
    await s.delete('e');
    await kindOf(s.delete('e')); // failed calls publish nothing
    await kindOf(s.create(base('')));
    await kindOf(s.update({ id: 'e' }, ['labels']));
    expect(events).toEqual([
      {
        namespace: 'ev',
        topic: '/containers/create',
        event: { kind: 'typed', type: 'containerd.events.ContainerCreate', data: { id: 'e', image: 'docker.io/library/busybox:latest', runtime: RUNC } },
      },
      {
        namespace: 'ev',
        topic: '/containers/update',
        event: { kind: 'typed', type: 'containerd.events.ContainerUpdate', data: { id: 'e', image: 'docker.io/library/busybox:latest', labels: { l: '2' }, snapshotKey: 'e' } },
      },
      { namespace: 'ev', topic: '/containers/delete', event: { kind: 'typed', type: 'containerd.events.ContainerDelete', data: { id: 'e' } } },
    ]);
  });

  it('reports committed writes to mutation listeners (deletions as such)', async () => {
    const s = md.containers.bind({ namespace: 'mut' });
    const seen: boolean[] = [];
    const off = md.onMutation((d) => seen.push(d));
    try {
      await s.create(base('m'));
      await s.update({ id: 'm', labels: { x: 'y' } }, ['labels.x']);
      await s.delete('m');
      await kindOf(s.delete('m'));
    } finally {
      off();
    }
    expect(seen).toEqual([false, false, true]);
  });

  it('requires a valid namespace', async () => {
    expect(await kindOf(Promise.resolve().then(() => md.containers.bind({ namespace: '' })))).toBe('failed precondition');
    expect(await kindOf(Promise.resolve().then(() => md.containers.bind({ namespace: 'a/b' })))).toBe('invalid argument');
  });

  it('persists across a reopen of the database', async () => {
    const s = md.containers.bind({ namespace: 'persist' });
    const c = await s.create(
      base('kept', { labels: { x: 'y' }, sandboxId: 'sb1', extensions: { k: { typeUrl: 't', value: Buffer.from([0, 255]) } } }),
    );
    expect(c.sandboxId).toBe('sb1');
    md.close();
    md = MetadataStore.open(join(t.path, 'meta.db'), local);
    expect(await md.containers.bind({ namespace: 'persist' }).get('kept')).toEqual(c);
  });
});
