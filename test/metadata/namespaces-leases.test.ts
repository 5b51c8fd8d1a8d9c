/**
 * Namespaces and leases through a real stratad, and the metadata database's schema handling.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { tempDir } from '../helpers/temp.js';
import { kindOf } from '../helpers/errors.js';
import { sha256 } from '../helpers/data.js';
import { StrataError } from '../../src/core/errdefs.js';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { MetadataStore, SCHEMA_VERSION } from '../../src/metadata/index.js';
import { openLocalContentStore } from '../../src/content/local.js';

let d: StartedDaemon;
let c: StrataClient;

beforeAll(async () => {
  d = await startDaemon();
  c = d.client('default');
});
afterAll(async () => {
  await stopAll();
  await d?.dir.cleanup();
});

describe('namespaces', () => {
  const ns = () => c.namespaces;
  it('creates, gets, lists, updates labels by field path, and deletes', async () => {
    await c.call(ns(), ns().create, { namespace: { name: 'alpha', labels: { a: '1', b: '2' } } });
    expect((await c.call(ns(), ns().get, { name: 'alpha' })).namespace).toEqual({ name: 'alpha', labels: { a: '1', b: '2' } });
    // As containerd: Update answers an empty namespace; Get shows what it did.
    const updated = await c.call(ns(), ns().update, {
      namespace: { name: 'alpha', labels: { a: '9', c: '3' } },
      updateMask: ['labels.a', 'labels.b'],
    });
    expect(updated.namespace).toEqual({ name: '', labels: {} });
    expect((await c.call(ns(), ns().get, { name: 'alpha' })).namespace?.labels).toEqual({ a: '9' });
    await c.call(ns(), ns().update, { namespace: { name: 'alpha', labels: { z: '0', e: '' } }, updateMask: [] });
    expect((await c.call(ns(), ns().get, { name: 'alpha' })).namespace?.labels).toEqual({ z: '0' });
    const names = (await c.call(ns(), ns().list, { filter: '' })).namespaces.map((n) => n.name);
    expect(names).toContain('alpha');
    await c.call(ns(), ns().delete, { name: 'alpha' });
    // As containerd: Get of a namespace with no record answers empty labels; it is gone from the list.
    expect((await c.call(ns(), ns().get, { name: 'alpha' })).namespace).toEqual({ name: 'alpha', labels: {} });
    expect((await c.call(ns(), ns().list, { filter: '' })).namespaces.map((n) => n.name)).not.toContain('alpha');
    expect(await kindOf(c.call(ns(), ns().delete, { name: 'alpha' }))).toBe('not found');
  });

  it('refuses duplicates, invalid names and invalid update paths', async () => {
    await c.call(ns(), ns().create, { namespace: { name: 'dup', labels: {} } });
    expect(await kindOf(c.call(ns(), ns().create, { namespace: { name: 'dup', labels: {} } }))).toBe('already exists');
    for (const bad of ['', 'has space', 'a/b', '-lead', 'x'.repeat(77), '..']) {
      expect(await kindOf(c.call(ns(), ns().create, { namespace: { name: bad, labels: {} } })), bad).toBe('invalid argument');
    }
    expect(
      await kindOf(c.call(ns(), ns().update, { namespace: { name: 'dup', labels: {} }, updateMask: ['name'] })),
    ).toBe('invalid argument');
    // containerd's namespaces service takes only "labels.<key>" paths, not "labels" as its other stores do.
    expect(
      await kindOf(c.call(ns(), ns().update, { namespace: { name: 'dup', labels: { k: 'v' } }, updateMask: ['labels'] })),
    ).toBe('invalid argument');
    // As containerd: updating a namespace with no record sets its labels, creating it (and with none, nothing).
    await c.call(ns(), ns().update, { namespace: { name: 'missing', labels: {} }, updateMask: [] });
    const names = async () => (await c.call(ns(), ns().list, { filter: '' })).namespaces.map((n) => n.name);
    expect(await names()).not.toContain('missing');
    await c.call(ns(), ns().update, { namespace: { name: 'missing', labels: { k: 'v' } }, updateMask: [] });
    expect((await c.call(ns(), ns().get, { name: 'missing' })).namespace).toEqual({ name: 'missing', labels: { k: 'v' } });
    expect(await names()).toContain('missing');
    expect(
      await kindOf(c.call(ns(), ns().update, { namespace: { name: 'bad name', labels: { k: 'v' } }, updateMask: [] })),
    ).toBe('invalid argument');
  });

  it('refuses to delete a namespace that still has content, and deletes it once emptied', async () => {
    const busy = d.client('busy-ns');
    const data = Buffer.from('occupant');
    await busy.writeBlob(Readable.from([data]), { ref: 'occupant' });
    const err = await c.call(ns(), ns().delete, { name: 'busy-ns' }).catch((e: StrataError) => e);
    expect(err).toBeInstanceOf(StrataError);
    expect((err as StrataError).kind).toBe('failed precondition');
    expect((err as StrataError).message).toMatch(/must be empty, but it still has blobs/);
    // Nothing was lost.
    expect((await busy.call(busy.content, busy.content.info, { digest: sha256(data) })).info?.size).toBe(data.length);
    await busy.call(busy.content, busy.content.delete, { digest: sha256(data) });
    await c.call(ns(), ns().delete, { name: 'busy-ns' });
  });
});

describe('leases', () => {
  const ls = () => c.leases;
  it('creates with a given or generated id, lists with filters, and deletes', async () => {
    const a = await c.call(ls(), ls().create, { id: 'lease-a', labels: { purpose: 'pull' } });
    expect(a.lease?.id).toBe('lease-a');
    expect(a.lease?.createdAt).toBeInstanceOf(Date);
    const gen = await c.call(ls(), ls().create, { id: '', labels: { 'containerd.io/gc.expire': new Date(Date.now() + 3600e3).toISOString() } });
    expect(gen.lease?.id).toMatch(/^\d+-[A-Za-z0-9_-]+$/);
    expect(await kindOf(c.call(ls(), ls().create, { id: 'lease-a', labels: {} }))).toBe('already exists');
    // As containerd: a gc.expire label that is not a time is taken (the collector ignores it: the lease never expires).
    const bad = await c.call(ls(), ls().create, { id: 'bad-expire', labels: { 'containerd.io/gc.expire': 'tomorrow' } });
    expect(bad.lease?.labels).toEqual({ 'containerd.io/gc.expire': 'tomorrow' });
    await c.call(ls(), ls().delete, { id: 'bad-expire', sync: false });

    const pulls = await c.call(ls(), ls().list, { filters: ['labels.purpose==pull'] });
    expect(pulls.leases.map((l) => l.id)).toEqual(['lease-a']);
    const byId = await c.call(ls(), ls().list, { filters: [`id==${gen.lease!.id}`] });
    expect(byId.leases.length).toBe(1);
    // Leases are per namespace.
    const other = d.client('lease-other');
    expect((await other.call(other.leases, other.leases.list, { filters: [] })).leases).toEqual([]);

    await c.call(ls(), ls().delete, { id: 'lease-a', sync: false });
    await c.call(ls(), ls().delete, { id: gen.lease!.id, sync: true });
    expect(await kindOf(c.call(ls(), ls().delete, { id: 'lease-a', sync: false }))).toBe('not found');
  });

  it('adds, lists and deletes resources, validating their types', async () => {
    await c.call(ls(), ls().create, { id: 'res', labels: {} });
    const dg = sha256('resource');
    await c.call(ls(), ls().addResource, { id: 'res', resource: { id: dg, type: 'content' } });
    await c.call(ls(), ls().addResource, { id: 'res', resource: { id: 'k1', type: 'snapshots/overlayfs' } });
    await c.call(ls(), ls().addResource, { id: 'res', resource: { id: 'ref-1', type: 'ingests' } });
    const res = await c.call(ls(), ls().listResources, { id: 'res' });
    expect(res.resources).toEqual([
      { id: dg, type: 'content' },
      { id: 'ref-1', type: 'ingests' },
      { id: 'k1', type: 'snapshots/overlayfs' },
    ]);
    await c.call(ls(), ls().deleteResource, { id: 'res', resource: { id: 'k1', type: 'snapshots/overlayfs' } });
    expect((await c.call(ls(), ls().listResources, { id: 'res' })).resources.length).toBe(2);

    expect(await kindOf(c.call(ls(), ls().addResource, { id: 'res', resource: { id: 'not-a-digest', type: 'content' } }))).toBe(
      'invalid argument',
    );
    expect(await kindOf(c.call(ls(), ls().addResource, { id: 'res', resource: { id: 'x', type: 'snapshots' } }))).toBe(
      'invalid argument',
    );
    expect(await kindOf(c.call(ls(), ls().addResource, { id: 'res', resource: { id: 'x', type: 'images' } }))).toBe(
      'not implemented',
    );
    expect(await kindOf(c.call(ls(), ls().addResource, { id: 'nope', resource: { id: dg, type: 'content' } }))).toBe('not found');
    expect(await kindOf(c.call(ls(), ls().listResources, { id: 'nope' }))).toBe('not found');
  });
});

describe('metadata database', () => {
  it('records its schema version, reopens without migrating twice, and refuses a newer schema', async () => {
    const t = await tempDir();
    try {
      const local = await openLocalContentStore(join(t.path, 'content'));
      const dbPath = join(t.path, 'meta.db');
      const m1 = MetadataStore.open(dbPath, local);
      m1.namespaces.create('kept');
      m1.close();
      const m2 = MetadataStore.open(dbPath, local);
      expect(m2.namespaces.get('kept').name).toBe('kept');
      m2.close();
      const raw = new Database(dbPath);
      expect(raw.prepare('SELECT version FROM schema_version').get()).toEqual({ version: SCHEMA_VERSION });
      expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
      raw.prepare('UPDATE schema_version SET version = ?').run(SCHEMA_VERSION + 1);
      raw.close();
      expect(() => MetadataStore.open(dbPath, local)).toThrow(/newer than this stratad understands/);
    } finally {
      await t.cleanup();
    }
  });
});
