/**
 * containerd.services.diff.v1.Diff on a real stratad: Apply and Diff through the generated client over the
 * socket, with snapshots from the daemon's overlayfs snapshotter and blobs in its content store; namespaces
 * and leases resolved per call; errors as gRPC codes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import type { Mount as PbMount } from '../../src/api/gen/containerd/types/mount.js';
import type { ApplyRequest, DiffRequest } from '../../src/api/gen/containerd/services/diff/v1/diff.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { kindOf } from '../helpers/errors.js';
import { listTar } from './helpers.js';
import { makeTar } from '../helpers/tar.js';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
const PLAIN = 'application/vnd.oci.image.layer.v1.tar';

let d: StartedDaemon;
let c: StrataClient;

beforeAll(async () => {
  d = await startDaemon();
  c = d.client();
});
afterAll(async () => {
  c?.close();
  await stopAll();
  await d?.dir.cleanup();
});

type SnReq = { key: string; parent?: string };
const snap = {
  prepare: async (cl: StrataClient, r: SnReq) =>
    (await cl.call(cl.snapshots, cl.snapshots.prepare, { snapshotter: 'overlayfs', key: r.key, parent: r.parent ?? '', labels: {} })).mounts,
  view: async (cl: StrataClient, r: SnReq) =>
    (await cl.call(cl.snapshots, cl.snapshots.view, { snapshotter: 'overlayfs', key: r.key, parent: r.parent ?? '', labels: {} })).mounts,
  commit: (cl: StrataClient, name: string, key: string) =>
    cl.call(cl.snapshots, cl.snapshots.commit, { parent: '', snapshotter: 'overlayfs', name, key, labels: {} }),
  remove: (cl: StrataClient, key: string) => cl.call(cl.snapshots, cl.snapshots.remove, { snapshotter: 'overlayfs', key }),
};
const apply = (cl: StrataClient, r: Partial<ApplyRequest>) => cl.call(cl.diff, cl.diff.apply, { mounts: [], payloads: {}, diff: undefined, ...r });
const diff = (cl: StrataClient, r: Partial<DiffRequest>) => cl.call(cl.diff, cl.diff.diff, { left: [], right: [], mediaType: '', ref: '', labels: {}, ...r });

async function upload(cl: StrataClient, blob: Buffer): Promise<string> {
  const digest = sha(blob);
  await cl.writeBlob([blob], { ref: `up-${digest}`, expected: digest, total: blob.length });
  return digest;
}

async function blobOf(cl: StrataClient, digest: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const ch of cl.readBlob(digest)) chunks.push(ch);
  return Buffer.concat(chunks);
}

const upperdir = (m: PbMount[]) => m[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);

describe('Diff service', () => {
  let parent: string;

  it('is served, over the walking differ plugin', async () => {
    const { plugins } = await c.call(c.introspection, c.introspection.plugins, { filters: [] });
    const differ = plugins.find((p) => p.type === 'io.containerd.differ.v1' && p.id === 'walking');
    expect(differ?.initErr).toBeUndefined();
    expect(differ?.platforms.map((p) => p.os)).toEqual(['linux']);
    const svc = plugins.find((p) => p.type === 'io.containerd.grpc.v1' && p.id === 'diff');
    expect(svc?.initErr).toBeUndefined();
    expect(svc?.requires).toEqual(expect.arrayContaining(['io.containerd.differ.v1', 'io.containerd.metadata.v1']));
  });

  it('Apply writes a layer from the content store onto a snapshot and returns its diffID', async () => {
    const tar = await makeTar([
      { name: 'etc/', type: 'directory', mode: 0o755 },
      { name: 'etc/motd', body: 'welcome\n' },
      { name: 'bin/', type: 'directory', mode: 0o755 },
      { name: 'bin/sh', body: 'sh', mode: 0o755 },
    ]);
    const blob = gzipSync(tar);
    const digest = await upload(c, blob);
    const mounts = await snap.prepare(c, { key: 'svc-base' });
    const res = await apply(c, { diff: { mediaType: GZIP, digest, size: blob.length, annotations: {} }, mounts });
    expect(res.applied).toEqual({ mediaType: PLAIN, digest: sha(tar), size: tar.length, annotations: {} });
    expect(await readFile(join(mounts[0]!.source, 'etc/motd'), 'utf8')).toBe('welcome\n');
    parent = 'svc-parent';
    await snap.commit(c, parent, 'svc-base');
  });

  it('Diff writes the layer between two mount lists into content, labelled, and attached to the lease', async () => {
    const mounts = await snap.prepare(c, { key: 'svc-work', parent });
    expect(mounts[0]!.type).toBe('overlay');
    await writeFile(join(upperdir(mounts), 'added'), 'added by the test');
    const lower = await snap.view(c, { key: 'svc-lower', parent });

    const lease = (await c.call(c.leases, c.leases.create, { id: 'diff-lease', labels: {} })).lease!;
    const leased = c.with({ lease: lease.id });
    const res = await diff(leased, { left: lower, right: mounts, labels: { 'com.example/who': 'test' } });
    leased.close();
    const desc = res.diff!;
    expect(desc.mediaType).toBe(GZIP);
    const blob = await blobOf(c, desc.digest);
    expect(sha(blob)).toBe(desc.digest);
    expect(desc.size).toBe(blob.length);
    const entries = await listTar(blob);
    expect(entries.map((e) => e.name)).toEqual(['added']);
    expect(entries[0]!.body?.toString()).toBe('added by the test');

    const info = (await c.call(c.content, c.content.info, { digest: desc.digest })).info!;
    const uncompressed = (await import('node:zlib')).gunzipSync(blob);
    expect(info.labels).toEqual({ 'com.example/who': 'test', 'containerd.io/uncompressed': sha(uncompressed) });
    const resources = (await c.call(c.leases, c.leases.listResources, { id: lease.id })).resources;
    expect(resources).toContainEqual({ id: desc.digest, type: 'content' });

    // Plain tar on request: the digest is the diffID.
    const plain = (await diff(c, { left: lower, right: mounts, mediaType: PLAIN, ref: 'svc-plain' })).diff!;
    expect(plain.mediaType).toBe(PLAIN);
    expect(plain.digest).toBe(sha(uncompressed));
    await snap.remove(c, 'svc-lower');
    await snap.remove(c, 'svc-work');
  });

  it('works per namespace: a blob of another namespace is not found', async () => {
    const other = d.client('other-ns');
    const tar = await makeTar([{ name: 'x', body: 'x' }]);
    const digest = await upload(c, tar);
    const mounts = await snap.prepare(other, { key: 'ns-k' });
    expect(await kindOf(apply(other, { diff: { mediaType: PLAIN, digest, size: tar.length, annotations: {} }, mounts }))).toBe('not found');
    await upload(other, tar);
    expect((await apply(other, { diff: { mediaType: PLAIN, digest, size: tar.length, annotations: {} }, mounts })).applied?.digest).toBe(digest);
    expect(await readFile(join(mounts[0]!.source, 'x'), 'utf8')).toBe('x');
    await snap.remove(other, 'ns-k');
    other.close();
  });

  it('maps errors to gRPC codes', async () => {
    const mounts = await snap.prepare(c, { key: 'svc-err' });
    const tag = randomBytes(4).toString('hex');
    const good = await makeTar([{ name: 'f', body: 'f' }]);
    const digest = await upload(c, good);
    // A hardlink to a host file: refused (`../` names are cleaned to stay inside, as containerd does).
    const hostile = await makeTar([{ name: `escape-${tag}`, type: 'link', linkname: '/etc/passwd' }]);
    const hostileDigest = await upload(c, hostile);
    const desc = (mediaType: string, dg = digest, size = good.length) => ({ mediaType, digest: dg, size, annotations: {} });

    // No stream processor for the media type: containerd answers UNKNOWN ("failed to get stream processor").
    expect(await kindOf(apply(c, { diff: desc('application/vnd.oci.image.layer.v1.tar+encrypted'), mounts }))).toBe('unknown');
    expect(await kindOf(apply(c, { diff: desc(PLAIN, sha(Buffer.from('missing'))), mounts }))).toBe('not found');
    expect(await kindOf(apply(c, { diff: desc(PLAIN, hostileDigest, hostile.length), mounts }))).toBe('invalid argument');
    expect(existsSync(`/escape-${tag}`)).toBe(false);
    expect(await kindOf(apply(c, { mounts }))).toBe('invalid argument');
    expect(await kindOf(diff(c, { left: [], right: mounts, mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd' }))).toBe('not implemented');
    expect(await kindOf(apply(d.client(''), { diff: desc(PLAIN), mounts }))).toBe('failed precondition'); // no namespace: containerd's NamespaceRequired
    await snap.remove(c, 'svc-err');
  });
});
