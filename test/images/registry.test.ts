/**
 * The registry client against a real registry (Debian's docker-registry on loopback, no auth): resolve by
 * tag and digest, fetch manifests and blobs (verified by sha256), ranged fetches, not-found cases, the
 * concurrency limit, and pushes (upload, exists, cross-repository mount, bad content).
 */
import { createHash, randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Limiter } from '../../src/remotes/limit.js';
import { createResolver, type RegistryResolver } from '../../src/remotes/resolver.js';
import type { Descriptor } from '../../src/core/descriptor.js';
import { kindOf } from '../helpers/errors.js';
import { buildBusyboxArchive } from '../helpers/oci-image.js';
import { buildOciLayout, extractOciArchive, makeLayerTar, MEDIA_MANIFEST, type LayoutBlob, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const descOf = (b: LayoutBlob): Descriptor => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
const open = (b: Buffer) => async () => Readable.from([b]);

let reg: StartedRegistry;
let tmp: TempDir;
let image: OciLayout;
let victim: OciLayout;
let resolver: RegistryResolver;

beforeAll(async () => {
  tmp = await tempDir('strata-registry-test-');
  reg = await startRegistry();
  image = await buildOciLayout(join(tmp.path, 'image'), {
    layers: [
      await makeLayerTar({ 'etc/hello': 'hello from strata\n', 'bin/tool': randomBytes(200_000) }),
      await makeLayerTar({ 'etc/second': 'second layer\n' }),
    ],
    gzip: true,
    refName: 'v1',
  });
  await reg.pushOciLayout(image.dir, 'test/img:v1');
  victim = await buildOciLayout(join(tmp.path, 'victim'), { layers: [await makeLayerTar({ gone: randomBytes(1000) })] });
  await reg.pushOciLayout(victim.dir, 'test/victim:v1');
  resolver = createResolver({});
});

afterAll(async () => {
  await resolver?.close();
  await stopAllRegistries();
  await tmp?.cleanup();
});

describe('resolve', () => {
  it('resolves a tag to the manifest descriptor', async () => {
    const r = await resolver.resolve(`${reg.host}/test/img:v1`);
    expect(r.name).toBe(`${reg.host}/test/img:v1`);
    expect(r.desc).toEqual({ mediaType: MEDIA_MANIFEST, digest: image.manifest.digest, size: image.manifest.size });
  });

  it('resolves a digest reference (and a tag@digest one, named by the digest)', async () => {
    const r = await resolver.resolve(`${reg.host}/test/img@${image.manifest.digest}`);
    expect(r.name).toBe(`${reg.host}/test/img@${image.manifest.digest}`);
    expect(r.desc).toEqual({ mediaType: MEDIA_MANIFEST, digest: image.manifest.digest, size: image.manifest.size });
    const r2 = await resolver.resolve(`${reg.host}/test/img:v1@${image.manifest.digest}`);
    expect(r2.name).toBe(`${reg.host}/test/img@${image.manifest.digest}`);
    expect(r2.desc.digest).toBe(image.manifest.digest);
  });

  it('reports an unknown tag, an unknown repository and an unknown digest as not found', async () => {
    const ref = `${reg.host}/test/img:nope`;
    const err = await resolver.resolve(ref).catch((e: unknown) => e);
    expect((err as Error).message).toBe(`${ref}: not found`);
    expect(await kindOf(resolver.resolve(ref))).toBe('not found');
    expect(await kindOf(resolver.resolve(`${reg.host}/test/nothing-here:v1`))).toBe('not found');
    expect(await kindOf(resolver.resolve(`${reg.host}/test/img@${sha256(randomBytes(8))}`))).toBe('not found');
  });

  it('resolves the busybox test image seeded from its OCI archive', async () => {
    const bb = await buildBusyboxArchive(tmp.path);
    const layout = await extractOciArchive(bb.archive, join(tmp.path, 'busybox-layout'));
    await reg.pushOciLayout(layout, 'library/busybox:strata-test', { layoutRef: 'strata-test' });
    const { desc } = await resolver.resolve(`${reg.host}/library/busybox:strata-test`);
    expect(desc).toMatchObject({ mediaType: MEDIA_MANIFEST, digest: bb.manifestDigest });
    const f = resolver.fetcher(`${reg.host}/library/busybox:strata-test`);
    const manifest = JSON.parse((await readAll(await f.fetch(desc))).toString()) as { layers: Descriptor[] };
    expect(manifest.layers.map((l) => l.digest)).toEqual([bb.layerDigest]);
    const layer = await readAll(await f.fetch(manifest.layers[0]!));
    expect(layer.length).toBe(manifest.layers[0]!.size);
    expect(sha256(layer)).toBe(bb.layerDigest);
  });

  it('rejects invalid references before any request', async () => {
    expect(await kindOf(resolver.resolve(`${reg.host}/Test/img:v1`))).toBe('invalid argument');
    expect(await kindOf(resolver.resolve(''))).toBe('invalid argument');
  });
});

describe('fetch', () => {
  it('fetches the manifest by digest and every blob, each hashing to its digest', async () => {
    const { desc } = await resolver.resolve(`${reg.host}/test/img:v1`);
    const f = resolver.fetcher(`${reg.host}/test/img:v1`);
    const manifestBytes = await readAll(await f.fetch(desc));
    expect(sha256(manifestBytes)).toBe(desc.digest);
    expect(manifestBytes.equals(image.manifest.bytes)).toBe(true);
    const manifest = JSON.parse(manifestBytes.toString()) as { config: Descriptor; layers: Descriptor[] };
    for (const d of [manifest.config, ...manifest.layers]) {
      const bytes = await readAll(await f.fetch(d));
      expect(bytes.length).toBe(d.size);
      expect(sha256(bytes)).toBe(d.digest);
    }
  });

  it('fetches from an offset with Range: exactly the tail', async () => {
    const layer = image.layers[0]!;
    const f = resolver.fetcher(`${reg.host}/test/img:v1`);
    for (const offset of [1, 1000, layer.size - 1]) {
      const tail = await readAll(await f.fetch(descOf(layer), { offset }));
      expect(tail.equals(layer.bytes.subarray(offset)), `offset ${offset}`).toBe(true);
    }
    // At the end: nothing left.
    expect((await readAll(await f.fetch(descOf(layer), { offset: layer.size }))).length).toBe(0);
    expect(await kindOf(f.fetch(descOf(layer), { offset: layer.size + 1 }))).toBe('invalid argument');
    expect(await kindOf(f.fetch(descOf(layer), { offset: -1 }))).toBe('invalid argument');
  });

  it('reports a blob the registry does not have as not found', async () => {
    const f = resolver.fetcher(`${reg.host}/test/img:v1`);
    const missing = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(randomBytes(16)), size: 10 };
    const err = await f.fetch(missing).catch((e: unknown) => e);
    expect(await kindOf(Promise.reject(err))).toBe('not found');
    expect((err as Error).message).toContain(missing.digest);
    // A manifest digest goes to /manifests/: also not found.
    expect(await kindOf(f.fetch({ ...missing, mediaType: MEDIA_MANIFEST }))).toBe('not found');
  });

  it('reports a blob whose data vanished from the registry storage as not found', async () => {
    const layer = victim.layers[0]!;
    const f = resolver.fetcher(`${reg.host}/test/victim:v1`);
    expect(sha256(await readAll(await f.fetch(descOf(layer))))).toBe(layer.digest);
    await rm(reg.blobPath(layer.digest));
    expect(await kindOf(f.fetch(descOf(layer)))).toBe('not found');
  });

  it('holds one of maxConcurrent slots per open stream until it ends or is destroyed', async () => {
    const r = createResolver({ maxConcurrent: 2 });
    const limit = (r as unknown as { limit: Limiter }).limit;
    try {
      const f = r.fetcher(`${reg.host}/test/img:v1`);
      const [l0, l1] = image.layers as [LayoutBlob, LayoutBlob];
      const a = await f.fetch(descOf(l0));
      const b = await f.fetch(descOf(l1));
      expect(limit.inUse).toBe(2);
      let cDone = false;
      const cP = f.fetch(descOf(image.config)).then((s) => {
        cDone = true;
        return s;
      });
      await vi.waitFor(() => expect(limit.queued).toBe(1));
      expect(cDone).toBe(false);
      a.destroy(); // a consumer giving up frees its slot
      const c = await cP;
      expect(limit.queued).toBe(0);
      expect(sha256(await readAll(c))).toBe(image.config.digest); // reading to the end frees it too
      expect(sha256(await readAll(b))).toBe(l1.digest);
      await vi.waitFor(() => expect(limit.inUse).toBe(0));
      // A failed fetch does not keep its slot.
      expect(await kindOf(f.fetch({ mediaType: 'x', digest: sha256(randomBytes(4)), size: 1 }))).toBe('not found');
      expect(limit.inUse).toBe(0);
    } finally {
      await r.close();
    }
  });
});

describe('push', () => {
  it('pushes config, layers and a tagged manifest; they resolve and fetch back byte for byte; again = exists', async () => {
    const pushed = await buildOciLayout(join(tmp.path, 'pushed'), {
      layers: [await makeLayerTar({ 'a/b': randomBytes(50_000) }), await makeLayerTar({ c: 'c\n' })],
    });
    const ref = `${reg.host}/test/pushed:v2`;
    const p = resolver.pusher(ref);
    for (const b of [...pushed.layers, pushed.config]) expect(await p.push(descOf(b), open(b.bytes))).toBe('pushed');
    expect(await p.push(descOf(pushed.manifest), open(pushed.manifest.bytes), { tag: true })).toBe('pushed');

    const r = await resolver.resolve(ref);
    expect(r.desc).toEqual(descOf(pushed.manifest));
    const f = resolver.fetcher(ref);
    for (const b of [pushed.manifest, pushed.config, ...pushed.layers]) {
      expect((await readAll(await f.fetch(descOf(b)))).equals(b.bytes)).toBe(true);
    }

    // Everything is there now: nothing is read again.
    const never = async (): Promise<Readable> => {
      throw new Error('must not open');
    };
    for (const b of [...pushed.layers, pushed.config]) expect(await p.push(descOf(b), never)).toBe('exists');
    expect(await p.push(descOf(pushed.manifest), never, { tag: true })).toBe('exists');
    expect(await p.push(descOf(pushed.manifest), never)).toBe('exists');
  });

  it('pushes a manifest by digest only when not tagging', async () => {
    const m = await buildOciLayout(join(tmp.path, 'bydigest'), { layers: [await makeLayerTar({ d: randomBytes(100) })] });
    const ref = `${reg.host}/test/bydigest:unused`;
    const p = resolver.pusher(ref);
    for (const b of [...m.layers, m.config]) await p.push(descOf(b), open(b.bytes));
    expect(await p.push(descOf(m.manifest), open(m.manifest.bytes))).toBe('pushed');
    expect(await kindOf(resolver.resolve(ref))).toBe('not found');
    expect((await resolver.resolve(`${reg.host}/test/bydigest@${m.manifest.digest}`)).desc.digest).toBe(m.manifest.digest);
  });

  it('mounts a blob from another repository on the same host', async () => {
    const layer = image.layers[0]!;
    const p = resolver.pusher(`${reg.host}/test/mounted:v1`);
    expect(await p.push(descOf(layer), open(layer.bytes), { mountFrom: ['test/img'] })).toBe('mounted');
    const layer2 = image.layers[1]!;
    // The "host/repo" form works too; a candidate on another host is ignored (plain upload).
    expect(await p.push(descOf(layer2), open(layer2.bytes), { mountFrom: [`other.example.com/test/img`, `${reg.host}/test/img`] })).toBe('mounted');
    const p2 = resolver.pusher(`${reg.host}/test/mounted2:v1`);
    expect(await p2.push(descOf(layer), open(layer.bytes), { mountFrom: ['other.example.com/test/img'] })).toBe('pushed');
    // A source repository without the blob: the registry starts a normal upload instead.
    const fresh = randomBytes(3000);
    expect(await p2.push({ mediaType: 'application/octet-stream', digest: sha256(fresh), size: fresh.length }, open(fresh), { mountFrom: ['test/img'] })).toBe('pushed');
    const bytes = await readAll(await resolver.fetcher(`${reg.host}/test/mounted:v1`).fetch(descOf(layer)));
    expect(bytes.equals(layer.bytes)).toBe(true);
  });

  it('streams a large blob up from a generator and back', async () => {
    const chunk = randomBytes(1 << 20);
    const n = 6;
    const h = createHash('sha256');
    for (let i = 0; i < n; i++) h.update(chunk).update(Buffer.from([i]));
    const digest = 'sha256:' + h.digest('hex');
    const size = n * (chunk.length + 1);
    let opened = 0;
    const gen = async () => {
      opened++;
      return Readable.from(
        (function* () {
          for (let i = 0; i < n; i++) {
            yield chunk;
            yield Buffer.from([i]);
          }
        })(),
      );
    };
    const desc = { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest, size };
    expect(await resolver.pusher(`${reg.host}/test/big:v1`).push(desc, gen)).toBe('pushed');
    expect(opened).toBe(1);
    const back = await readAll(await resolver.fetcher(`${reg.host}/test/big:v1`).fetch(desc));
    expect(back.length).toBe(size);
    expect(sha256(back)).toBe(digest);
  });

  it('refuses content that does not match its descriptor', async () => {
    const p = resolver.pusher(`${reg.host}/test/bad:v1`);
    const bytes = randomBytes(500);
    // Wrong digest: the registry refuses it (400 DIGEST_INVALID).
    expect(await kindOf(p.push({ mediaType: 'application/octet-stream', digest: sha256(randomBytes(500)), size: 500 }, open(bytes)))).toBe('invalid argument');
    // Wrong size: the stream is shorter than announced.
    expect(await kindOf(p.push({ mediaType: 'application/octet-stream', digest: sha256(bytes), size: 600 }, open(bytes)))).toBe('invalid argument');
    // A manifest that is not JSON.
    expect(await kindOf(p.push({ mediaType: MEDIA_MANIFEST, digest: sha256(bytes), size: 500 }, open(bytes), { tag: true }))).toBe('invalid argument');
    expect(await kindOf(p.push({ mediaType: 'application/octet-stream', digest: 'sha256:nope', size: 1 }, open(bytes)))).toBe('invalid argument');
  });
});
