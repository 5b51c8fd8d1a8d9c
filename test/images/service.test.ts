/**
 * The images gRPC service through a real stratad: Get/List/Create/Update/Delete with the generated client
 * (codes and containerd's messages, update masks, created_at kept, namespaces, events on the wire), and the
 * unmodified ctr: `ctr image ls` (size and platform computed by ctr from content written to stratad),
 * `ctr image label`, `ctr image rm`, and `ctr namespaces rm` refusing a namespace that still has images.
 */
import type * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import type { Envelope } from '../../src/api/gen/containerd/services/events/v1/events.js';
import { ImageCreate, ImageDelete, ImageUpdate } from '../../src/api/gen/containerd/events/image.js';
import type { Image as ImagePb } from '../../src/api/gen/containerd/services/images/v1/images.js';
import { ctr, tableRows as rows } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { kindOf } from '../helpers/errors.js';
import { buildImage, type BuiltImage, type Descriptor } from '../helpers/images.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let d: StartedDaemon;
let c: StrataClient;
let t: TempDir;
let img: BuiltImage;

const pb = (name: string, target: Descriptor, labels: Record<string, string> = {}): ImagePb => ({
  name,
  labels,
  target: { mediaType: target.mediaType, digest: target.digest, size: target.size, annotations: target.annotations ?? {} },
  createdAt: undefined,
  updatedAt: undefined,
});


/** docker/go-units CustomSize("%02.1f %s", n, 1024, ...), as ctr prints sizes. */
function humanSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

async function writeImageContent(client: StrataClient, image: BuiltImage): Promise<void> {
  for (const [digest, bytes] of image.blobs) {
    await client.writeBlob([bytes], { ref: `test-${digest}`, expected: digest, total: bytes.length });
  }
}

beforeAll(async () => {
  t = await tempDir();
  img = await buildImage(t.path, {
    name: 'docker.io/library/svc:1',
    platforms: [{ layers: [{ entries: [{ path: 'hello', content: 'hello world\n' }] }, { compression: 'none', entries: [{ path: 'x', content: 'x' }] }] }],
  });
  d = await startDaemon();
  c = d.client('default');
});
afterAll(async () => {
  await stopAll();
  await d?.dir.cleanup();
  await t?.cleanup();
});

describe('images service', () => {
  it('creates, gets, lists, updates and deletes', async () => {
    const target = { ...img.target, annotations: { 'org.opencontainers.image.ref.name': '1' } };
    const created = (await c.call(c.images, c.images.create, { image: pb('svc:a', target, { a: '1' }) })).image!;
    expect(created.name).toBe('svc:a');
    expect(created.target).toEqual({ ...target, annotations: target.annotations });
    expect(created.createdAt).toBeInstanceOf(Date);
    const got = (await c.call(c.images, c.images.get, { name: 'svc:a' })).image!;
    expect(got).toEqual(created);

    await c.call(c.images, c.images.create, { image: pb('svc:b', img.target) });
    const list = (await c.call(c.images, c.images.list, { filters: [] })).images.map((i) => i.name);
    expect(list).toEqual(['svc:a', 'svc:b']);
    expect((await c.call(c.images, c.images.list, { filters: ['labels.a==1'] })).images.map((i) => i.name)).toEqual(['svc:a']);

    const upd = (await c.call(c.images, c.images.update, { image: pb('svc:a', img.target, { b: '2' }), updateMask: ['labels.b'] })).image!;
    expect(upd.labels).toEqual({ a: '1', b: '2' });
    expect(upd.target?.annotations).toEqual(target.annotations); // only labels.b changed
    expect(upd.createdAt).toEqual(created.createdAt);
    expect(upd.updatedAt!.getTime()).toBeGreaterThanOrEqual(created.updatedAt!.getTime());
    const replaced = (await c.call(c.images, c.images.update, { image: pb('svc:a', img.target, { z: '9' }), updateMask: undefined })).image!;
    expect(replaced.labels).toEqual({ z: '9' });
    expect(replaced.target?.annotations).toEqual({});

    await c.call(c.images, c.images.delete, { name: 'svc:a', sync: false });
    await c.call(c.images, c.images.delete, { name: 'svc:b', sync: true });
    expect((await c.call(c.images, c.images.list, { filters: [] })).images).toEqual([]);
  });

  it('answers with containerd codes and messages', async () => {
    await c.call(c.images, c.images.create, { image: pb('dup', img.target) });
    await expect(c.call(c.images, c.images.create, { image: pb('dup', img.target) })).rejects.toThrow('image "dup": already exists');
    expect(await kindOf(c.call(c.images, c.images.create, { image: pb('dup', img.target) }))).toBe('already exists');
    await expect(c.call(c.images, c.images.get, { name: 'missing' })).rejects.toThrow('image "missing": not found');
    expect(await kindOf(c.call(c.images, c.images.get, { name: 'missing' }))).toBe('not found');
    expect(await kindOf(c.call(c.images, c.images.delete, { name: 'missing', sync: false }))).toBe('not found');
    expect(await kindOf(c.call(c.images, c.images.create, { image: undefined }))).toBe('invalid argument');
    expect(await kindOf(c.call(c.images, c.images.create, { image: pb('', img.target) }))).toBe('invalid argument');
    expect(await kindOf(c.call(c.images, c.images.create, { image: pb('x', { ...img.target, digest: 'nope' }) }))).toBe('invalid argument');
    expect(await kindOf(c.call(c.images, c.images.create, { image: { ...pb('x', img.target), target: undefined } }))).toBe('invalid argument');
    expect(await kindOf(c.call(c.images, c.images.update, { image: pb('dup', img.target), updateMask: ['name'] }))).toBe('invalid argument');
    expect(await kindOf(c.call(c.images, c.images.update, { image: pb('missing', img.target), updateMask: ['labels'] }))).toBe('not found');
    expect(await kindOf(c.call(c.images, c.images.list, { filters: ['name=='] }))).toBe('invalid argument');
    await c.call(c.images, c.images.delete, { name: 'dup', sync: false });
  });

  it('keeps namespaces apart and requires one', async () => {
    const other = d.client('svc-other');
    await c.call(c.images, c.images.create, { image: pb('shared-name', img.target, { ns: 'default' }) });
    await other.call(other.images, other.images.create, { image: pb('shared-name', img.target, { ns: 'other' }) });
    expect((await other.call(other.images, other.images.get, { name: 'shared-name' })).image!.labels).toEqual({ ns: 'other' });
    await other.call(other.images, other.images.delete, { name: 'shared-name', sync: false });
    expect((await c.call(c.images, c.images.get, { name: 'shared-name' })).image!.labels).toEqual({ ns: 'default' });
    await c.call(c.images, c.images.delete, { name: 'shared-name', sync: false });
    const none = c.with({ namespace: '' });
    expect(await kindOf(none.call(none.images, none.images.list, { filters: [] }))).toBe('failed precondition');
    other.close();
  });

  it('publishes /images/* events with the images service type URLs', async () => {
    const ns = 'svc-events';
    const client = d.client(ns);
    const received: Envelope[] = [];
    const call = client.events.subscribe({ filters: [`namespace==${ns}`] }, client.metadata()) as grpc.ClientReadableStream<Envelope>;
    call.on('data', (e: Envelope) => received.push(e));
    call.on('error', () => undefined);
    // Wait until the subscription is live: publish probes until one comes back.
    const waitFor = async (pred: () => boolean, what: string) => {
      for (let i = 0; i < 500 && !pred(); i++) await new Promise((r) => setTimeout(r, 10));
      if (!pred()) throw new Error(`timed out waiting for ${what}`);
    };
    for (let i = 0; !received.some((e) => e.topic === '/probe'); i++) {
      if (i > 100) throw new Error('subscription never became live');
      await client.call(client.events, client.events.publish, { topic: '/probe', event: { typeUrl: 'probe', value: Buffer.alloc(0) } });
      await new Promise((r) => setTimeout(r, 20));
    }
    received.length = 0;
    await client.call(client.images, client.images.create, { image: pb('ev', img.target, { k: 'v' }) });
    await client.call(client.images, client.images.update, { image: pb('ev', img.target, { k: 'w' }), updateMask: ['labels.k'] });
    await client.call(client.images, client.images.delete, { name: 'ev', sync: false });
    await waitFor(() => received.filter((e) => e.topic.startsWith('/images/')).length >= 3, 'three image events');
    const evs = received.filter((e) => e.topic.startsWith('/images/'));
    call.cancel();
    client.close();
    expect(evs.map((e) => [e.topic, e.event?.typeUrl])).toEqual([
      ['/images/create', 'containerd.services.images.v1.ImageCreate'],
      ['/images/update', 'containerd.services.images.v1.ImageUpdate'],
      ['/images/delete', 'containerd.services.images.v1.ImageDelete'],
    ]);
    expect(ImageCreate.decode(evs[0]!.event!.value)).toEqual({ name: 'ev', labels: { k: 'v' } });
    expect(ImageUpdate.decode(evs[1]!.event!.value)).toEqual({ name: 'ev', labels: { k: 'w' } });
    expect(ImageDelete.decode(evs[2]!.event!.value)).toEqual({ name: 'ev' });
  });
});

describe('ctr image commands against stratad', () => {
  const ns = 'ctr-images';
  const run = (args: string[]) => ctr(d.address, args, { namespace: ns });

  it('ctr image ls shows an image whose content was written to stratad, with size and platform', async () => {
    const client = d.client(ns);
    await writeImageContent(client, img);
    await client.call(client.images, client.images.create, { image: pb('docker.io/library/svc:1', img.target, { team: 'storage' }) });
    client.close();
    const r = await run(['image', 'ls']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split('\n')[0]).toMatch(/^REF\s+TYPE\s+DIGEST\s+SIZE\s+PLATFORMS\s+LABELS/);
    const m = img.manifests[0]!;
    const size = m.descriptor.size + m.config.descriptor.size + m.layers.reduce((n, l) => n + l.descriptor.size, 0);
    const [sizeNum, sizeUnit] = humanSize(size).split(' ');
    const platform = [m.platform.os, m.platform.architecture, m.platform.variant].filter(Boolean).join('/');
    expect(rows(r.stdout)).toEqual([
      ['docker.io/library/svc:1', img.target.mediaType, img.target.digest, sizeNum, sizeUnit, platform, 'team=storage'],
    ]);
    expect(r.stderr).not.toMatch(/failed/);
    expect((await run(['image', 'ls', '-q'])).stdout.trim()).toBe('docker.io/library/svc:1');
    expect((await run(['image', 'ls', '-q', 'labels.team==other'])).stdout.trim()).toBe('');
  });

  it('ctr image label sets and clears labels', async () => {
    let r = await run(['image', 'label', 'docker.io/library/svc:1', 'tier=gold']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim().split(',').sort()).toEqual(['team=storage', 'tier=gold']);
    r = await run(['image', 'label', 'docker.io/library/svc:1', 'team=']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe('tier=gold');
    const client = d.client(ns);
    expect((await client.call(client.images, client.images.get, { name: 'docker.io/library/svc:1' })).image!.labels).toEqual({ tier: 'gold' });
    client.close();
    r = await run(['image', 'label', 'missing', 'a=b']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/image "missing": not found/);
  });

  it('ctr namespaces rm refuses a namespace with images; ctr image rm removes them', async () => {
    let r = await ctr(d.address, ['namespaces', 'rm', ns]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(new RegExp(`namespace "${ns}" must be empty, but it still has .*images`));
    r = await run(['image', 'rm', 'docker.io/library/svc:1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe('docker.io/library/svc:1');
    expect((await run(['image', 'ls', '-q'])).stdout.trim()).toBe('');
    r = await run(['image', 'rm', 'docker.io/library/svc:1']);
    expect(r.stderr).toMatch(/not found/);
    // The content stays (GC is what removes unreferenced blobs).
    expect((await run(['content', 'ls', '-q'])).stdout.trim().split('\n').sort()).toEqual([...img.blobs.keys()].sort());
  });
});
