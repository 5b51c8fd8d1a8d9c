/**
 * The label limits of one object ([plugins."io.containerd.metadata.v1.sqlite"] max_labels_per_object and
 * max_label_bytes_per_object) on a real stratad configured with small values, for every labelled object the API
 * has: content, snapshots, images, containers, leases, namespaces. Over a limit a create or an update fails
 * with INVALID_ARGUMENT naming the limit, its value and the section; a refused create makes nothing and a refused
 * update leaves the object's labels as they were. containerd's own per-label rule (key + value <= 4096 bytes)
 * still holds, and the defaults are checked.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { StrataError } from '../../src/core/errdefs.js';
import { labelLimitDefaults, labelLimitsFromConfig, labelLimits, setLabelLimits, validateLabels } from '../../src/core/labels.js';
import { ctr } from '../helpers/ctr.js';
import { sha256 } from '../helpers/data.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';

const SECTION = 'plugins."io.containerd.metadata.v1.sqlite"';
const MAX = 8;
const MAX_BYTES = 1024;

let d: StartedDaemon;
let c: StrataClient;

beforeAll(async () => {
  d = await startDaemon({ config: [`[${SECTION}]`, `max_labels_per_object = ${MAX}`, `max_label_bytes_per_object = ${MAX_BYTES}`].join('\n') });
  c = d.client('labels');
});
afterAll(async () => {
  c?.close();
  await stopAll();
  await d?.dir.cleanup();
});

/** `n` labels k0..k<n-1> with short values. */
const many = (n: number, prefix = 'k'): Record<string, string> => Object.fromEntries(Array.from({ length: n }, (_, i) => [`${prefix}${i}`, 'v']));
/** Two labels of 600 bytes each: 2 labels, but 1,204 bytes. */
const heavy = (): Record<string, string> => ({ big1: 'x'.repeat(600), big2: 'y'.repeat(600) });

async function refused(p: Promise<unknown>): Promise<StrataError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StrataError);
  return err as StrataError;
}

function expectCount(err: StrataError, count = MAX + 1): void {
  expect(err.kind).toBe('invalid argument');
  expect(err.message).toContain(`labels over the limit max_labels_per_object = ${MAX} (${SECTION}): ${count} labels on one object`);
  expect(err.message).not.toContain(d.dir.path);
}

/** `bytes`: keys and values of the labels the object would hold (heavy(): 4 + 600 + 4 + 600). */
function expectBytes(err: StrataError, bytes = 1208): void {
  expect(err.kind).toBe('invalid argument');
  expect(err.message).toContain(`labels over the limit max_label_bytes_per_object = ${MAX_BYTES} (${SECTION}): ${bytes} bytes of labels on one object`);
}

/**
 * The same three checks for one kind of object: a create over each limit makes nothing; an object made with
 * 8 labels takes no 9th by a field-path update and keeps its labels; a replacing update that would hold 9 is
 * refused too; removing one and adding one in one update (8 in the end) is accepted.
 */
async function checkObject(o: {
  create: (name: string, labels: Record<string, string>) => Promise<unknown>;
  exists: (name: string) => Promise<boolean>;
  labels: (name: string) => Promise<Record<string, string>>;
  update?: (name: string, labels: Record<string, string>, paths: string[]) => Promise<unknown>;
}): Promise<void> {
  expectCount(await refused(o.create('over-count', many(MAX + 1))));
  expect(await o.exists('over-count')).toBe(false);
  expectBytes(await refused(o.create('over-bytes', heavy())));
  expect(await o.exists('over-bytes')).toBe(false);

  await o.create('full', many(MAX));
  expect(await o.labels('full')).toEqual(many(MAX));
  if (!o.update) return;
  expectCount(await refused(o.update('full', { extra: 'v' }, ['labels.extra'])));
  expect(await o.labels('full')).toEqual(many(MAX));
  expectCount(await refused(o.update('full', many(MAX + 1), [])));
  expect(await o.labels('full')).toEqual(many(MAX));
  // k0 and k1 removed, the two heavy ones added: 6 labels, but 6 * 3 + 1208 bytes.
  expectBytes(await refused(o.update('full', { ...heavy() }, ['labels.big1', 'labels.big2', 'labels.k0', 'labels.k1'])), 1226);
  expect(await o.labels('full')).toEqual(many(MAX));
  await o.update('full', { extra: 'v' }, ['labels.extra', 'labels.k0']); // k0 removed, extra added: still 8
  const after = await o.labels('full');
  expect(Object.keys(after)).toHaveLength(MAX);
  expect(after.extra).toBe('v');
  expect(after.k0).toBeUndefined();
}

describe('label limits per object', () => {
  it('content: a commit or an update over a limit is refused and the record keeps its labels', async () => {
    const blobs = new Map<string, string>();
    const blob = (name: string) => Buffer.from(`blob ${name}`);
    await checkObject({
      create: async (name, labels) => {
        const b = blob(name);
        blobs.set(name, sha256(b));
        await c.writeBlob([b], { ref: `ref-${name}`, expected: sha256(b), total: b.length, labels });
      },
      exists: (name) =>
        c.call(c.content, c.content.info, { digest: blobs.get(name)! }).then(
          () => true,
          () => false,
        ),
      labels: async (name) => (await c.call(c.content, c.content.info, { digest: blobs.get(name)! })).info!.labels,
      update: (name, labels, paths) =>
        c.call(c.content, c.content.update, {
          info: { digest: blobs.get(name)!, size: 0, labels, createdAt: undefined, updatedAt: undefined },
          updateMask: paths,
        }),
    });
    // A refused commit keeps its ingest, as containerd keeps one after a failed commit: committing it again
    // with labels within the limits makes the blob, and leaves no ingest.
    const statuses = async () => (await c.call(c.content, c.content.listStatuses, { filters: [] })).statuses.map((st) => st.ref);
    expect(await statuses()).toContain('ref-over-count');
    await c.writeBlob([blob('over-count')], { ref: 'ref-over-count', expected: blobs.get('over-count')!, total: blob('over-count').length, labels: many(2) });
    expect(await statuses()).not.toContain('ref-over-count');
    expect((await c.call(c.content, c.content.info, { digest: blobs.get('over-count')! })).info!.labels).toEqual(many(2));
  });

  it('snapshots: a prepare, a commit or an update over a limit is refused and the snapshot keeps its labels', async () => {
    const sn = 'overlayfs';
    const info = (name: string) => c.call(c.snapshots, c.snapshots.stat, { snapshotter: sn, key: name });
    await checkObject({
      create: (name, labels) => c.call(c.snapshots, c.snapshots.prepare, { snapshotter: sn, key: name, parent: '', labels }),
      exists: (name) =>
        info(name).then(
          () => true,
          () => false,
        ),
      labels: async (name) => (await info(name)).info!.labels,
      update: (name, labels, paths) =>
        c.call(c.snapshots, c.snapshots.update, {
          snapshotter: sn,
          info: { name, parent: '', kind: 0, labels, createdAt: undefined, updatedAt: undefined },
          updateMask: paths,
        }),
    });
    // A commit with too many labels: refused, the active snapshot stays active and no committed one appears.
    await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: sn, key: 'to-commit', parent: '', labels: {} });
    expectCount(await refused(c.call(c.snapshots, c.snapshots.commit, { snapshotter: sn, name: 'committed', key: 'to-commit', labels: many(MAX + 1) })));
    expect((await info('to-commit')).info!.kind).toBe(2); // active
    expect(await info('committed').then(() => true, () => false)).toBe(false);
    for (const key of ['full', 'to-commit']) await c.call(c.snapshots, c.snapshots.remove, { snapshotter: sn, key });
  });

  it('images: a create or an update over a limit is refused and the image keeps its labels', async () => {
    const target = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha256('manifest'), size: 8, annotations: {} };
    const img = (name: string, labels: Record<string, string>) => ({ name, labels, target, createdAt: undefined, updatedAt: undefined });
    await checkObject({
      create: (name, labels) => c.call(c.images, c.images.create, { image: img(name, labels), sourceDateEpoch: undefined }),
      exists: (name) =>
        c.call(c.images, c.images.get, { name }).then(
          () => true,
          () => false,
        ),
      labels: async (name) => (await c.call(c.images, c.images.get, { name })).image!.labels,
      update: (name, labels, paths) => c.call(c.images, c.images.update, { image: img(name, labels), updateMask: paths, sourceDateEpoch: undefined }),
    });
    const err = await refused(c.call(c.images, c.images.create, { image: img('over', many(MAX + 1)), sourceDateEpoch: undefined }));
    expect(err.message).toMatch(/^image\.Labels: labels over the limit/);
    await c.call(c.images, c.images.delete, { name: 'full', sync: false });
  });

  it('containers: a create or an update over a limit is refused and the container keeps its labels', async () => {
    const ctr = (id: string, labels: Record<string, string>) => ({
      id,
      labels,
      image: '',
      runtime: { name: 'io.containerd.runc.v2', options: undefined },
      spec: { typeUrl: 'types.containerd.io/opencontainers/runtime-spec/1/Spec', value: Buffer.from('{}') },
      snapshotter: '',
      snapshotKey: '',
      createdAt: undefined,
      updatedAt: undefined,
      extensions: {},
      sandbox: '',
    });
    await checkObject({
      create: (id, labels) => c.call(c.containers, c.containers.create, { container: ctr(id, labels) }),
      exists: (id) =>
        c.call(c.containers, c.containers.get, { id }).then(
          () => true,
          () => false,
        ),
      labels: async (id) => (await c.call(c.containers, c.containers.get, { id })).container!.labels,
      update: (id, labels, paths) => c.call(c.containers, c.containers.update, { container: ctr(id, labels), updateMask: paths }),
    });
    await c.call(c.containers, c.containers.delete, { id: 'full' });
  });

  it('leases: a create over a limit is refused and makes no lease', async () => {
    const ids = async () => (await c.call(c.leases, c.leases.list, { filters: [] })).leases.map((l) => l.id);
    await checkObject({
      create: (id, labels) => c.call(c.leases, c.leases.create, { id, labels }),
      exists: async (id) => (await ids()).includes(id),
      labels: async (id) => (await c.call(c.leases, c.leases.list, { filters: [`id==${id}`] })).leases[0]!.labels,
    });
    await c.call(c.leases, c.leases.delete, { id: 'full', sync: false });
  });

  it('namespaces: a create or an update over a limit is refused and the namespace keeps its labels', async () => {
    const names = async () => (await c.call(c.namespaces, c.namespaces.list, { filter: '' })).namespaces.map((n) => n.name);
    await checkObject({
      create: (name, labels) => c.call(c.namespaces, c.namespaces.create, { namespace: { name, labels } }),
      exists: async (name) => (await names()).includes(name),
      labels: async (name) => (await c.call(c.namespaces, c.namespaces.get, { name })).namespace!.labels,
      // containerd's namespaces take "labels.<key>" paths only, or none (replace all).
      update: (name, labels, paths) => c.call(c.namespaces, c.namespaces.update, { namespace: { name, labels }, updateMask: paths }),
    });
    // An update of a namespace with no record yet, over the limit, creates none.
    expectCount(await refused(c.call(c.namespaces, c.namespaces.update, { namespace: { name: 'fresh', labels: many(MAX + 1) }, updateMask: [] })));
    expect(await names()).not.toContain('fresh');
    await c.call(c.namespaces, c.namespaces.delete, { name: 'full' });
  });

  it('answers the gRPC code INVALID_ARGUMENT with the limit in grpc-message', async () => {
    const err = await new Promise<grpc.ServiceError>((resolve, reject) =>
      c.leases.create({ id: 'raw', labels: many(MAX + 1) }, c.metadata(), (e) => (e ? resolve(e) : reject(new Error('9 labels got through a limit of 8')))),
    );
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toBe(`labels over the limit max_labels_per_object = ${MAX} (${SECTION}): ${MAX + 1} labels on one object: invalid argument`);
  });

  it('ctr reports the limit when a label would take a blob past it, and the blob keeps its labels', async () => {
    const blob = Buffer.from('labelled by ctr');
    await c.writeBlob([blob], { ref: 'ctr-labels', expected: sha256(blob), total: blob.length, labels: many(MAX) });
    const r = await ctr(d.address, ['content', 'label', sha256(blob), 'one=more'], { namespace: 'labels' });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`labels over the limit max_labels_per_object = ${MAX} (${SECTION}): ${MAX + 1} labels on one object: invalid argument`);
    expect((await c.call(c.content, c.content.info, { digest: sha256(blob) })).info!.labels).toEqual(many(MAX));
  });

  it("still applies containerd's rule for one label: key and value at most 4096 bytes", async () => {
    const err = await refused(c.call(c.leases, c.leases.create, { id: 'one-big', labels: { big: 'x'.repeat(4094) } }));
    expect(err.message).toContain('label key and value greater than maximum size (4096 bytes), key: big');
  });
});

describe('the label limits config', () => {
  it('defaults to 4096 labels and 1 MiB of labels per object; 0 turns a limit off', () => {
    expect(labelLimitDefaults()).toEqual({ max_labels_per_object: 4096, max_label_bytes_per_object: 1 << 20 });
    expect(labelLimitsFromConfig({})).toEqual(labelLimitDefaults());
    const before = labelLimits();
    try {
      setLabelLimits(labelLimitsFromConfig({ max_labels_per_object: 0, max_label_bytes_per_object: 0 }));
      expect(() => validateLabels(many(10_000))).not.toThrow();
      setLabelLimits(labelLimitDefaults());
      expect(() => validateLabels(many(4096))).not.toThrow();
      expect(() => validateLabels(many(4097))).toThrow(/max_labels_per_object = 4096/);
      // Empty values are removals: they do not count.
      expect(() => validateLabels({ ...many(4096), ...Object.fromEntries(Object.keys(many(10, 'e')).map((k) => [k, ''])) })).not.toThrow();
    } finally {
      setLabelLimits(before);
    }
  });

  it('refuses a value that is not a whole number of 0 or more, naming the key', () => {
    for (const bad of [-1, 2.5, 'lots', false]) {
      expect(() => labelLimitsFromConfig({ max_label_bytes_per_object: bad })).toThrow(
        `config: ${SECTION}.max_label_bytes_per_object must be a whole number, 0 or more (0: no limit)`,
      );
    }
  });
});
