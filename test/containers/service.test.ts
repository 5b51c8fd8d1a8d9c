/**
 * The containers service through a real stratad: the unmodified ctr (containerd 1.6) imports the busybox
 * test image, then `ctr container create | ls | info | label | rm` work against it (ctr prepares the
 * snapshot, writes the spec and removes the snapshot with the container); `strata container ls | info |
 * label | rm` print what ctr prints; the gRPC calls directly (errors, ListStream, filters, update masks,
 * events on the wire) and namespace occupancy.
 */
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { ContainerCreate, ContainerUpdate } from '../../src/api/gen/containerd/events/container.js';
import type { Container as PbContainer } from '../../src/api/gen/containerd/services/containers/v1/containers.js';
import type { Envelope } from '../../src/api/gen/containerd/services/events/v1/events.js';
import { StrataError } from '../../src/core/errdefs.js';
import { chainIDs } from '../../src/images/manifest.js';
import { ctr, run, tableRows as rows } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { kindOf } from '../helpers/errors.js';
import { buildImage, busyboxPlatform, type BuiltImage } from '../helpers/images.js';
import { STRATA } from '../helpers/paths.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const IMAGE = 'docker.io/library/busybox:strata';
const SPEC_URL = 'types.containerd.io/opencontainers/runtime-spec/1/Spec';

let d: StartedDaemon;
let dir: TempDir;
let busybox: BuiltImage;
const clients: StrataClient[] = [];

const client = (ns: string) => {
  const c = d.client(ns);
  clients.push(c);
  return c;
};
const strata = (args: string[], ns: string) => run(STRATA, ['--address', d.address, '--namespace', ns, ...args]);

async function ok(p: Promise<{ code: number | null; stdout: string; stderr: string }>, what: string): Promise<string> {
  const r = await p;
  expect(r.code, `${what}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

/** Imports the busybox archive with ctr (unpacked into overlayfs). */
async function importImage(ns: string): Promise<void> {
  await ok(ctr(d.address, ['image', 'import', busybox.archivePath], { namespace: ns }), 'ctr image import');
}

const pbContainer = (id: string, extra: Partial<PbContainer> = {}): PbContainer => ({
  id,
  labels: {},
  image: '',
  runtime: { name: 'io.containerd.runc.v2', options: undefined },
  spec: { typeUrl: SPEC_URL, value: Buffer.from('{"ociVersion":"1.0.2-dev"}') },
  snapshotter: '',
  snapshotKey: '',
  createdAt: undefined,
  updatedAt: undefined,
  extensions: {},
  ...extra,
});

beforeAll(async () => {
  dir = await tempDir();
  d = await startDaemon();
  busybox = await buildImage(dir.path, { basename: 'busybox', name: IMAGE, platforms: [await busyboxPlatform()] });
});

afterAll(async () => {
  for (const c of clients) c.close();
  await stopAll();
  await d?.dir.cleanup();
  await dir?.cleanup();
});

describe('ctr container against stratad', () => {
  it('ctr container create, ls, info, label and rm (the snapshot goes with the container)', async () => {
    const ns = 'ctr-c';
    await importImage(ns);
    const chain = chainIDs(busybox.manifests[0]!.layers.map((l) => l.diffID));

    await ok(ctr(d.address, ['container', 'create', '--label', 'team=a', IMAGE, 'c1'], { namespace: ns }), 'ctr container create');
    const dup = await ctr(d.address, ['container', 'create', IMAGE, 'c1'], { namespace: ns });
    expect(dup.code).not.toBe(0);
    expect(dup.stderr).toMatch(/already exists/);

    const ls = await ok(ctr(d.address, ['container', 'ls'], { namespace: ns }), 'ctr container ls');
    expect(rows(ls)).toEqual([['c1', IMAGE, 'io.containerd.runc.v2']]);
    expect(ls.split('\n')[0]).toMatch(/^CONTAINER\s+IMAGE\s+RUNTIME\s*$/);

    const info = JSON.parse(await ok(ctr(d.address, ['container', 'info', 'c1'], { namespace: ns }), 'ctr container info'));
    expect(info).toMatchObject({
      ID: 'c1',
      Image: IMAGE,
      Runtime: { Name: 'io.containerd.runc.v2' },
      Snapshotter: 'overlayfs',
      SnapshotKey: 'c1',
      Labels: { team: 'a', 'io.containerd.image.config.stop-signal': 'SIGTERM' },
    });
    expect(info.Spec.process.args).toEqual(['sh']);
    expect(info.Spec.process.env).toEqual(['PATH=/bin']);
    expect(info.Spec.linux.cgroupsPath).toBe(`/${ns}/c1`);
    expect(Date.parse(info.CreatedAt)).toBeGreaterThan(0);

    // ctr prepared the container's snapshot on the image's chain.
    const snaps = rows(await ok(ctr(d.address, ['snapshot', 'ls'], { namespace: ns }), 'ctr snapshot ls'));
    expect(snaps).toContainEqual(['c1', chain.at(-1), 'Active']);

    // Labels: set, then clear with "k=".
    const set = await ok(ctr(d.address, ['container', 'label', 'c1', 'extra=1'], { namespace: ns }), 'ctr container label');
    expect(set.trim().split(',').sort()).toEqual(['extra=1', 'io.containerd.image.config.stop-signal=SIGTERM', 'team=a']);
    await ok(ctr(d.address, ['container', 'label', 'c1', 'team='], { namespace: ns }), 'ctr container label (clear)');
    const after = JSON.parse(await ok(ctr(d.address, ['container', 'info', 'c1'], { namespace: ns }), 'ctr container info'));
    expect(after.Labels).toEqual({ extra: '1', 'io.containerd.image.config.stop-signal': 'SIGTERM' });
    expect(after.CreatedAt).toBe(info.CreatedAt);

    // Filters go to the server.
    expect(rows(await ok(ctr(d.address, ['container', 'ls', 'labels.extra==1'], { namespace: ns }), 'ls filter'))).toHaveLength(1);
    expect(rows(await ok(ctr(d.address, ['container', 'ls', 'labels.extra==2'], { namespace: ns }), 'ls filter'))).toHaveLength(0);
    expect((await ok(ctr(d.address, ['container', 'ls', '-q'], { namespace: ns }), 'ls -q')).trim()).toBe('c1');
    // Other namespaces see nothing.
    expect(rows(await ok(ctr(d.address, ['container', 'ls'], { namespace: 'elsewhere' }), 'ls elsewhere'))).toEqual([]);

    await ok(ctr(d.address, ['container', 'rm', 'c1'], { namespace: ns }), 'ctr container rm');
    expect(rows(await ok(ctr(d.address, ['container', 'ls'], { namespace: ns }), 'ctr container ls'))).toEqual([]);
    const left = rows(await ok(ctr(d.address, ['snapshot', 'ls'], { namespace: ns }), 'ctr snapshot ls'));
    expect(left.map((r) => r[0])).not.toContain('c1');
    const gone = await ctr(d.address, ['container', 'info', 'c1'], { namespace: ns });
    expect(gone.code).not.toBe(0);
    expect(gone.stderr).toMatch(/container "c1" in namespace "ctr-c": not found/);
  });

  it('strata container ls and info print what ctr prints; label and rm work on ctr-made containers', async () => {
    const ns = 'strata-c';
    await importImage(ns);
    await ok(ctr(d.address, ['container', 'create', IMAGE, 'web'], { namespace: ns }), 'create web');
    await ok(ctr(d.address, ['container', 'create', '--label', 'k=v', IMAGE, 'a-longer-container-name'], { namespace: ns }), 'create 2');

    const ours = await ok(strata(['container', 'ls'], ns), 'strata container ls');
    expect(ours).toBe(await ok(ctr(d.address, ['container', 'ls'], { namespace: ns }), 'ctr container ls'));
    expect(await ok(strata(['container', 'ls', '-q'], ns), 'ls -q')).toBe('a-longer-container-name\nweb\n');
    const json = JSON.parse(await ok(strata(['--json', 'container', 'ls'], ns), 'ls --json'));
    expect(json.map((c: { id: string; snapshotKey: string }) => [c.id, c.snapshotKey])).toEqual([
      ['a-longer-container-name', 'a-longer-container-name'],
      ['web', 'web'],
    ]);

    const info = await ok(strata(['container', 'info', 'web'], ns), 'strata container info');
    expect(info).toBe(await ok(ctr(d.address, ['container', 'info', 'web'], { namespace: ns }), 'ctr container info'));
    const spec = await ok(strata(['container', 'info', '--spec', 'web'], ns), 'strata container info --spec');
    expect(spec).toBe(await ok(ctr(d.address, ['container', 'info', '--spec', 'web'], { namespace: ns }), 'ctr container info --spec'));

    expect((await ok(strata(['container', 'label', 'web', 'x=1', 'flag'], ns), 'label')).trim()).toBe(
      'flag=true,io.containerd.image.config.stop-signal=SIGTERM,x=1',
    );
    expect((await ok(strata(['container', 'label', 'web', 'x='], ns), 'label clear')).trim()).toBe(
      'flag=true,io.containerd.image.config.stop-signal=SIGTERM',
    );

    // rm removes the snapshot unless --keep-snapshot; a missing container is reported and exits 1. A kept
    // snapshot is no longer a container's, so the garbage collector may take it: a gc.root label keeps it.
    await ok(ctr(d.address, ['snapshot', 'label', 'a-longer-container-name', 'containerd.io/gc.root=test'], { namespace: ns }), 'label');
    await ok(strata(['container', 'rm', 'web'], ns), 'strata container rm');
    await ok(strata(['container', 'rm', '--keep-snapshot', 'a-longer-container-name'], ns), 'strata container rm --keep-snapshot');
    const snaps = rows(await ok(ctr(d.address, ['snapshot', 'ls'], { namespace: ns }), 'ctr snapshot ls')).map((r) => r[0]);
    expect(snaps).not.toContain('web');
    expect(snaps).toContain('a-longer-container-name');
    const missing = await strata(['container', 'rm', 'web'], ns);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/failed to delete container "web": container "web" in namespace "strata-c": not found/);
    expect(await ok(strata(['container', 'ls', '-q'], ns), 'ls -q')).toBe('');
    await ok(ctr(d.address, ['snapshot', 'rm', 'a-longer-container-name'], { namespace: ns }), 'ctr snapshot rm');
  });
});

describe('containers gRPC service', () => {
  it('creates, gets, lists (and streams), updates with masks and deletes', async () => {
    const c = client('svc');
    const created = (await c.call(c.containers, c.containers.create, { container: pbContainer('s1', { labels: { a: '1' }, image: 'img:1' }) }))
      .container!;
    expect(created).toMatchObject({ id: 's1', labels: { a: '1' }, image: 'img:1', runtime: { name: 'io.containerd.runc.v2' } });
    expect(created.createdAt).toBeInstanceOf(Date);
    expect(created.spec?.typeUrl).toBe(SPEC_URL);
    await c.call(c.containers, c.containers.create, {
      container: pbContainer('s2', {
        snapshotter: 'native',
        snapshotKey: 'k2',
        runtime: { name: 'io.containerd.runc.v2', options: { typeUrl: 'containerd.runc.v1.Options', value: Buffer.from([8, 1]) } },
        extensions: { ext: { typeUrl: 'x.Y', value: Buffer.from('z') } },
      }),
    });
    const got = (await c.call(c.containers, c.containers.get, { id: 's2' })).container!;
    expect(got.runtime?.options).toEqual({ typeUrl: 'containerd.runc.v1.Options', value: Buffer.from([8, 1]) });
    expect(got.extensions).toEqual({ ext: { typeUrl: 'x.Y', value: Buffer.from('z') } });
    expect(got).toMatchObject({ snapshotter: 'native', snapshotKey: 'k2' });

    const listed = (await c.call(c.containers, c.containers.list, { filters: [] })).containers.map((x) => x.id);
    expect(listed).toEqual(['s1', 's2']);
    const streamed = await c.collect(c.containers.listStream({ filters: ['runtime.name==io.containerd.runc.v2,id==s2'] }, c.metadata()));
    expect(streamed.map((m) => m.container?.id)).toEqual(['s2']);
    expect((await c.call(c.containers, c.containers.list, { filters: ['image==img:1'] })).containers.map((x) => x.id)).toEqual(['s1']);

    const u = (
      await c.call(c.containers, c.containers.update, { container: pbContainer('s1', { labels: { b: '2' } }), updateMask: ['labels.b', 'labels.a'] })
    ).container!;
    expect(u.labels).toEqual({ b: '2' });
    expect(u.image).toBe('img:1');
    expect(u.createdAt).toEqual(created.createdAt);

    await c.call(c.containers, c.containers.delete, { id: 's1' });
    await c.call(c.containers, c.containers.delete, { id: 's2' });
    expect((await c.call(c.containers, c.containers.list, { filters: [] })).containers).toEqual([]);
  });

  it('answers with containerd error kinds and wording', async () => {
    const c = client('svc-err');
    expect(await kindOf(c.call(c.containers, c.containers.get, { id: 'none' }))).toBe('not found');
    expect(await kindOf(c.call(c.containers, c.containers.delete, { id: 'none' }))).toBe('not found');
    const err = await c.call(c.containers, c.containers.create, { container: pbContainer('x', { spec: undefined }) }).catch((e: StrataError) => e);
    expect(err).toBeInstanceOf(StrataError);
    expect((err as StrataError).kind).toBe('invalid argument');
    expect((err as StrataError).message).toBe('create container failed validation: container.Spec must be set: invalid argument');
    expect(await kindOf(c.call(c.containers, c.containers.create, { container: undefined }))).toBe('invalid argument');
    expect(await kindOf(c.call(c.containers, c.containers.create, { container: pbContainer('bad id') }))).toBe('invalid argument');
    const noId = await c.call(c.containers, c.containers.update, { container: pbContainer(''), updateMask: ['labels'] }).catch((e: StrataError) => e);
    expect((noId as StrataError).message).toBe('Container.ID required: invalid argument');
    await c.call(c.containers, c.containers.create, { container: pbContainer('y', { snapshotter: 'overlayfs' }) });
    expect(await kindOf(c.call(c.containers, c.containers.create, { container: pbContainer('y') }))).toBe('already exists');
    const imm = await c.call(c.containers, c.containers.update, { container: pbContainer('y'), updateMask: [] }).catch((e: StrataError) => e);
    expect((imm as StrataError).message).toBe('container.Snapshotter field is immutable: invalid argument');
    expect(await kindOf(c.call(c.containers, c.containers.update, { container: pbContainer('y'), updateMask: ['snapshotter'] }))).toBe(
      'invalid argument',
    );
    expect(await kindOf(c.collect(c.containers.listStream({ filters: ['id=='] }, c.metadata())))).toBe('invalid argument');
    // A namespace with a container is not empty.
    const nsErr = await c.call(c.namespaces, c.namespaces.delete, { name: 'svc-err' }).catch((e: StrataError) => e);
    expect((nsErr as StrataError).kind).toBe('failed precondition');
    expect((nsErr as StrataError).message).toMatch(/still has containers/);
    await c.call(c.containers, c.containers.delete, { id: 'y' });
    await c.call(c.namespaces, c.namespaces.delete, { name: 'svc-err' });
    // Without a namespace header: containerd's NamespaceRequired answers FAILED_PRECONDITION.
    const bare = d.client('');
    clients.push(bare);
    expect(await kindOf(bare.call(bare.containers, bare.containers.list, { filters: [] }))).toBe('failed precondition');
  });

  it('publishes /containers/create, update and delete on the wire', async () => {
    const ns = 'svc-events';
    const c = client(ns);
    const received: Envelope[] = [];
    const call = c.events.subscribe({ filters: [`namespace==${ns}`] }, c.metadata()) as grpc.ClientReadableStream<Envelope>;
    call.on('data', (e: Envelope) => received.push(e));
    call.on('error', () => undefined);
    try {
      // Wait until the subscription is live: publish probes until one comes back.
      for (let i = 0; !received.some((e) => e.topic === '/probe'); i++) {
        if (i > 100) throw new Error('subscription never became live');
        await c.call(c.events, c.events.publish, { topic: '/probe', event: { typeUrl: 'probe', value: Buffer.alloc(0) } });
        await new Promise((r) => setTimeout(r, 20));
      }
      received.length = 0;
      await c.call(c.containers, c.containers.create, { container: pbContainer('ev', { image: 'i:1' }) });
      await c.call(c.containers, c.containers.update, { container: pbContainer('ev', { labels: { k: 'v' } }), updateMask: ['labels.k'] });
      await c.call(c.containers, c.containers.delete, { id: 'ev' });
      // The delete is the last of three: wait for it (the exchange delivers in order).
      for (let i = 0; !received.some((e) => e.topic === '/containers/delete'); i++) {
        if (i > 500) throw new Error('no delete event');
        await new Promise((r) => setTimeout(r, 10));
      }
    } finally {
      call.cancel();
    }
    const evs = received.filter((e) => e.topic.startsWith('/containers/'));
    expect(evs.map((e) => [e.topic, e.event?.typeUrl])).toEqual([
      ['/containers/create', 'containerd.events.ContainerCreate'],
      ['/containers/update', 'containerd.events.ContainerUpdate'],
      ['/containers/delete', 'containerd.events.ContainerDelete'],
    ]);
    expect(ContainerCreate.decode(evs[0]!.event!.value)).toMatchObject({ id: 'ev', image: 'i:1', runtime: { name: 'io.containerd.runc.v2' } });
    expect(ContainerUpdate.decode(evs[1]!.event!.value)).toMatchObject({ id: 'ev', labels: { k: 'v' } });
  });
});
