/**
 * Image archives: importArchive (OCI layouts from test/helpers/images.ts and oci-image.ts, docker save
 * archives with synthesized schema 2 manifests, platform selection, gc.ref labels, image records), the
 * export/import round trip, exportArchive's layout, and interop with a real containerd 1.6 both ways:
 * `ctr image export` read by importArchive, exportArchive's output imported (and unpacked) by containerd,
 * and the same docker archive given the same manifest digests by both. Hostile archives are refused
 * without committing anything under a wrong digest.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { gunzipSync } from 'node:zlib';
import { extract } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openLocalContentStore, type LocalContentStore } from '../../src/content/local.js';
import type { ContentStore } from '../../src/content/types.js';
import { applyTar } from '../../src/diff/apply.js';
import { exportArchive, importArchive } from '../../src/images/archive/index.js';
import { ociReferenceName } from '../../src/images/archive/common.js';
import { parseManifest } from '../../src/images/manifest.js';
import { defaultPlatform, formatPlatform } from '../../src/images/platforms.js';
import type { ImageStore } from '../../src/metadata/images.js';
import { MetadataStore } from '../../src/metadata/index.js';
import { ctrAt, startContainerd, type StartedContainerd } from '../helpers/containerd.js';
import { tableRows } from '../helpers/ctr.js';
import { kindOf } from '../helpers/errors.js';
import { buildImage, busyboxPlatform, dockerSaveArchive, hostileLayer, hostPlatform, MEDIA, sha256, type BuiltImage, type Platform } from '../helpers/images.js';
import { makeTar } from '../helpers/tar.js';
import { buildBusyboxArchive, type BusyboxArchive } from '../helpers/oci-image.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let t: TempDir;
let local: LocalContentStore;
let md: MetadataStore;
let nsCounter = 0;

/** A fresh namespace's content and image stores. */
function stores(): { content: ContentStore; images: ImageStore; ns: string } {
  const ns = `arch-${++nsCounter}`;
  return { content: md.content.bind({ namespace: ns }), images: md.images.bind({ namespace: ns }), ns };
}

/** The entries of a tar file: name → bytes (directories map to empty buffers), in archive order. */
async function readTar(path: string | Buffer): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const ex = extract();
  const done = (async () => {
    for await (const e of ex) {
      const chunks: Buffer[] = [];
      for await (const c of e) chunks.push(c as Buffer);
      out.set(e.header.name, Buffer.concat(chunks));
    }
  })();
  const data = typeof path === 'string' ? await readFile(path) : path;
  ex.end(data);
  await done;
  return out;
}

const labelsOf = async (content: ContentStore, digest: string) => (await content.info(digest)).labels;
const digests = async (content: ContentStore) => (await content.list()).map((i) => i.digest).sort();

const host = hostPlatform();
const others: Platform[] = [
  { os: 'linux', architecture: 'amd64' },
  { os: 'linux', architecture: 'arm64', variant: 'v8' },
  { os: 'linux', architecture: 'arm', variant: 'v7' },
  { os: 'linux', architecture: 's390x' },
].filter((p) => formatPlatform(p) !== formatPlatform(host));

let multi: BuiltImage;

beforeAll(async () => {
  t = await tempDir();
  local = await openLocalContentStore(join(t.path, 'content'));
  md = MetadataStore.open(join(t.path, 'meta.db'), local);
  multi = await buildImage(t.path, {
    name: 'docker.io/library/multi:1',
    basename: 'multi',
    platforms: [
      { platform: others[0]!, layers: [{ entries: [{ path: 'which', content: formatPlatform(others[0]!) }] }] },
      { platform: host, layers: [{ entries: [{ path: 'which', content: 'host' }] }, { compression: 'zstd', entries: [{ path: 'which', type: 'whiteout' }] }] },
      { platform: others[1]!, layers: [{ compression: 'none', entries: [{ path: 'which', content: formatPlatform(others[1]!) }] }] },
    ],
  });
});
afterAll(async () => {
  md?.close();
  await t?.cleanup();
});

describe('test image builder', () => {
  it('is deterministic and writes a consistent layout', async () => {
    const again = await buildImage(join(t.path), { ...{ name: 'docker.io/library/multi:1', basename: 'multi-again' }, platforms: [
      { platform: others[0]!, layers: [{ entries: [{ path: 'which', content: formatPlatform(others[0]!) }] }] },
      { platform: host, layers: [{ entries: [{ path: 'which', content: 'host' }] }, { compression: 'zstd', entries: [{ path: 'which', type: 'whiteout' }] }] },
      { platform: others[1]!, layers: [{ compression: 'none', entries: [{ path: 'which', content: formatPlatform(others[1]!) }] }] },
    ] });
    expect(again.target).toEqual(multi.target);
    expect(await readFile(again.archivePath)).toEqual(await readFile(multi.archivePath));
    const files = await readTar(multi.archivePath);
    for (const [digest, bytes] of multi.blobs) expect(sha256(files.get(`blobs/sha256/${digest.slice(7)}`)!)).toBe(digest);
    const hostManifest = multi.manifests[1]!;
    expect(hostManifest.layers[0]!.descriptor.mediaType).toBe(MEDIA.ociLayerGzip);
    expect(sha256(gunzipSync(hostManifest.layers[0]!.blob))).toBe(hostManifest.layers[0]!.diffID);
    expect(hostManifest.layers[1]!.descriptor.mediaType).toBe(MEDIA.ociLayerZstd);
    expect(hostManifest.config.json['rootfs']).toEqual({ type: 'layers', diff_ids: hostManifest.layers.map((l) => l.diffID) });
    expect(multi.index!.json.manifests.map((m) => m.platform)).toEqual([others[0], host, others[1]]);
  });

  it('hostile layers are refused by the applier, or land inside the target', async () => {
    for (const kind of ['hardlink-escape'] as const) {
      const dir = await tempDir();
      try {
        const err = await applyTar(Readable.from([await hostileLayer(kind)]), join(dir.path)).then(() => undefined, (e: unknown) => e);
        expect((err as { kind?: string })?.kind, kind).toBe('invalid argument');
      } finally {
        await dir.cleanup();
      }
    }
    // `../` names are cleaned as containerd cleans them (as if under /): they land inside.
    const trav = await tempDir();
    try {
      await mkdir(join(trav.path, 'root'));
      await applyTar(Readable.from([await hostileLayer('traversal')]), join(trav.path, 'root'));
      expect((await readdir(join(trav.path, 'root'))).sort()).toEqual(['ok', 'strata-escape', 'strata-escape2']);
      expect(await readdir(trav.path)).toEqual(['root']);
    } finally {
      await trav.cleanup();
    }
    // Symlinks are resolved with the target as root (containerd's RootPath): what goes through them stays inside.
    const dir = await tempDir();
    try {
      await mkdir(join(dir.path, 'root'));
      await applyTar(Readable.from([await hostileLayer('symlink-escape')]), join(dir.path, 'root'));
      expect(existsSync(join(dir.path, 'root', 'tmp', 'strata-escape'))).toBe(true);
      expect(existsSync(join(dir.path, 'root', 'strata-escape'))).toBe(true);
      expect(existsSync(join(dir.path, 'strata-escape'))).toBe(false);
      expect(existsSync('/tmp/strata-escape')).toBe(false);
    } finally {
      await dir.cleanup();
    }
  });
});

describe('importArchive: OCI layouts', () => {
  let bb: BusyboxArchive;
  beforeAll(async () => {
    bb = await buildBusyboxArchive(t.path);
  });

  it('imports the busybox archive: content, gc labels and the image record', async () => {
    const { content, images } = stores();
    const r = await importArchive(createReadStream(bb.archive), content, { images });
    expect(r.images.map((i) => i.name)).toEqual([bb.name]);
    const target = r.images[0]!.target;
    expect(target.digest).toBe(bb.manifestDigest);
    expect(target.annotations?.['io.containerd.image.name']).toBe(bb.name);
    expect(await digests(content)).toEqual([bb.layerDigest, bb.configDigest, bb.manifestDigest, r.index.digest].sort());
    expect(await labelsOf(content, bb.manifestDigest)).toEqual({
      'containerd.io/gc.ref.content.config': bb.configDigest,
      'containerd.io/gc.ref.content.l.0': bb.layerDigest,
    });
    expect(await labelsOf(content, r.index.digest)).toEqual({ 'containerd.io/gc.ref.content.m.0': bb.manifestDigest });
    const rec = await images.get(bb.name);
    expect(rec.target.digest).toBe(bb.manifestDigest);
    expect(rec.target.annotations).toEqual(target.annotations);
    // Importing again updates the target, keeping the record (and created_at).
    const again = await importArchive(createReadStream(bb.archive), content, { images });
    expect(again.index.digest).toBe(r.index.digest);
    expect((await images.get(bb.name)).createdAt).toEqual(rec.createdAt);
  });

  it('selects the host platform by default, one platform strictly, or all', async () => {
    const hostM = multi.manifests[1]!;
    {
      const { content, images } = stores();
      const r = await importArchive(createReadStream(multi.archivePath), content, { images });
      expect(r.images).toEqual([{ name: 'docker.io/library/multi:1', target: multi.layoutIndex.manifests[0] }]);
      expect((await images.get('docker.io/library/multi:1')).target.digest).toBe(multi.target.digest);
      // Only the host manifest is referenced from the index blob and labelled.
      expect(await labelsOf(content, multi.target.digest)).toEqual({ 'containerd.io/gc.ref.content.m.0': hostM.descriptor.digest });
      expect(await labelsOf(content, hostM.descriptor.digest)).toEqual({
        'containerd.io/gc.ref.content.config': hostM.config.descriptor.digest,
        'containerd.io/gc.ref.content.l.0': hostM.layers[0]!.descriptor.digest,
        'containerd.io/gc.ref.content.l.1': hostM.layers[1]!.descriptor.digest,
      });
      expect(await labelsOf(content, multi.manifests[0]!.descriptor.digest)).toEqual({});
      // index.json lists an index, not a manifest: containerd's key for that is gc.ref.content.<i>.
      expect(await labelsOf(content, r.index.digest)).toEqual({ 'containerd.io/gc.ref.content.0': multi.target.digest });
    }
    {
      const { content } = stores();
      await importArchive(createReadStream(multi.archivePath), content, { platform: others[1]! });
      expect(await labelsOf(content, multi.target.digest)).toEqual({ 'containerd.io/gc.ref.content.m.0': multi.manifests[2]!.descriptor.digest });
      expect(await labelsOf(content, hostM.descriptor.digest)).toEqual({});
    }
    {
      const { content } = stores();
      await importArchive(createReadStream(multi.archivePath), content, { allPlatforms: true });
      expect(await labelsOf(content, multi.target.digest)).toEqual({
        'containerd.io/gc.ref.content.m.0': multi.manifests[0]!.descriptor.digest,
        'containerd.io/gc.ref.content.m.1': multi.manifests[1]!.descriptor.digest,
        'containerd.io/gc.ref.content.m.2': multi.manifests[2]!.descriptor.digest,
      });
      for (const m of multi.manifests) expect(Object.keys(await labelsOf(content, m.descriptor.digest))).toContain('containerd.io/gc.ref.content.config');
    }
    {
      // index.json lists the index blob without a platform: it passes the filter, and the image is created
      // even though no manifest in it matches (as in containerd).
      const { content, images } = stores();
      await importArchive(createReadStream(multi.archivePath), content, { images, platform: { os: 'windows', architecture: 'amd64' } });
      expect(await labelsOf(content, multi.target.digest)).toEqual({});
      expect((await images.list()).map((i) => i.name)).toEqual(['docker.io/library/multi:1']);
    }
    {
      // A single-platform layout for another platform: containerd's "image might be filtered out".
      const other = await buildImage(t.path, { name: 'docker.io/library/other:1', basename: 'other', platforms: [{ platform: others[0]!, layers: [] }] });
      const { content, images } = stores();
      const err = importArchive(createReadStream(other.archivePath), content, { images });
      await expect(err).rejects.toThrow(/image might be filtered out/);
      expect(await kindOf(importArchive(createReadStream(other.archivePath), content, { images }))).toBe('not found');
      expect(await images.list()).toEqual([]);
      expect((await importArchive(createReadStream(other.archivePath), content, { images, platform: others[0]! })).images.map((i) => i.name)).toEqual([
        'docker.io/library/other:1',
      ]);
    }
  });

  it('names: index name, bare ref names with a prefix, base-name filtering, digests', async () => {
    const img = await buildImage(t.path, {
      basename: 'refname',
      refName: 'v2',
      platforms: [{ layers: [{ entries: [{ path: 'f', content: 'x' }] }] }],
    });
    const { content, images } = stores();
    const today = new Date().toISOString().slice(0, 10);
    let r = await importArchive(createReadStream(img.archivePath), content, { images, indexName: 'my-index', digests: true });
    expect(r.images.map((i) => i.name)).toEqual(['my-index', `import-${today}:v2`, `import-${today}@${img.target.digest}`]);
    expect((await images.get('my-index')).target).toEqual({ mediaType: MEDIA.ociIndex, digest: r.index.digest, size: r.index.size });
    r = await importArchive(createReadStream(img.archivePath), content, { baseName: 'example.com/app' });
    expect(r.images.map((i) => i.name)).toEqual(['example.com/app:v2']);
    r = await importArchive(createReadStream(multi.archivePath), content, { baseName: 'example.com/app' });
    expect(r.images.map((i) => i.name)).toEqual(['docker.io/library/multi:1']); // io.containerd.image.name wins
    expect(ociReferenceName('docker.io/library/busybox:latest')).toBe('latest');
    expect(ociReferenceName('localhost:5000/a/b@sha256:abc')).toBe('@sha256:abc');
    expect(ociReferenceName('busybox:latest')).toBe('busybox:latest');
  });

  it('a missing blob referenced by a selected manifest is not found', async () => {
    const files = await readTar(multi.archivePath);
    const hostConfig = multi.manifests[1]!.config.descriptor.digest;
    const entries = [...files].filter(([n]) => n !== `blobs/sha256/${hostConfig.slice(7)}`);
    // The config is only read for docker archives; a missing manifest is what a walk needs.
    const hostManifest = multi.manifests[1]!.descriptor.digest;
    const broken = await makeTar(
      entries.filter(([n]) => n !== `blobs/sha256/${hostManifest.slice(7)}`).map(([name, body]) => (name.endsWith('/') ? { name, type: 'directory' as const } : { name, body })),
    );
    const { content, images } = stores();
    expect(await kindOf(importArchive(Readable.from([broken]), content, { images }))).toBe('not found');
    expect(await images.list()).toEqual([]);
  });
});

describe('importArchive: hostile archives', () => {
  it('refuses entries that climb out or are absolute', async () => {
    for (const name of ['../x', 'blobs/../../x', '/etc/passwd']) {
      const { content } = stores();
      const tar = await makeTar([
        { name: 'oci-layout', body: '{"imageLayoutVersion":"1.0.0"}' },
        { name, body: 'evil' },
      ]);
      expect(await kindOf(importArchive(Readable.from([tar]), content)), name).toBe('invalid argument');
      expect(await digests(content)).toEqual([]);
      expect(await content.listStatuses()).toEqual([]);
    }
  });

  it('refuses a blob whose bytes do not match its name, committing nothing under that name', async () => {
    const { content } = stores();
    const claimed = sha256('the real thing');
    const tar = await makeTar([
      { name: 'oci-layout', body: '{"imageLayoutVersion":"1.0.0"}' },
      { name: `blobs/sha256/${claimed.slice(7)}`, body: 'something else' },
      { name: 'index.json', body: JSON.stringify({ schemaVersion: 2, manifests: [] }) },
    ]);
    const err = importArchive(Readable.from([tar]), content);
    expect(await kindOf(err)).toBe('failed precondition');
    expect(await digests(content)).toEqual([]);
    expect(await kindOf(content.info(claimed))).toBe('not found');
    expect(await kindOf(content.info(sha256('something else')))).toBe('not found');
    expect(await content.listStatuses()).toEqual([]);
  });

  it('refuses bad digests in blob names, unknown formats, bad layout versions and garbage', async () => {
    const cases: [string, Buffer, string][] = [
      ['bad blob name', await makeTar([{ name: 'blobs/sha256/xyz', body: 'x' }]), 'invalid argument'],
      ['no layout, no manifest.json', await makeTar([{ name: 'index.json', body: '{}' }]), 'invalid argument'],
      ['layout 2.0', await makeTar([{ name: 'oci-layout', body: '{"imageLayoutVersion":"2.0.0"}' }, { name: 'index.json', body: '{"manifests":[]}' }]), 'invalid argument'],
      ['layout without index.json', await makeTar([{ name: 'oci-layout', body: '{"imageLayoutVersion":"1.0.0"}' }]), 'invalid argument'],
      ['manifest.json not a list', await makeTar([{ name: 'manifest.json', body: '{}' }]), 'invalid argument'],
      ['not a tar', Buffer.from('x'.repeat(1024)), 'invalid argument'],
    ];
    for (const [what, tar, kind] of cases) {
      const { content } = stores();
      expect(await kindOf(importArchive(Readable.from([tar]), content)), what).toBe(kind);
    }
  });
});

describe('importArchive: docker save archives', () => {
  it('synthesizes Docker schema 2 manifests and an index, with normalized names', async () => {
    const ds = await dockerSaveArchive(t.path, [
      {
        repoTags: ['dsave:1', 'example.com/team/dsave:2'],
        layers: [[{ path: 'a', content: 'layer one' }], [{ path: 'b', content: 'layer two' }]],
      },
    ]);
    const { content, images } = stores();
    const r = await importArchive(createReadStream(ds.archivePath), content, { images });
    expect(r.images.map((i) => i.name)).toEqual(['docker.io/library/dsave:1', 'example.com/team/dsave:2']);
    const target = r.images[0]!.target;
    expect(target.mediaType).toBe(MEDIA.dockerManifest);
    expect(target.annotations).toEqual({ 'io.containerd.image.name': 'docker.io/library/dsave:1', 'org.opencontainers.image.ref.name': '1' });
    const normalizedHost = { os: host.os, architecture: host.architecture }; // containerd drops the variant here
    expect(target.platform).toEqual(normalizedHost);
    const chunks: Buffer[] = [];
    for await (const c of await content.read(target.digest)) chunks.push(c as Buffer);
    const manifest = parseManifest(Buffer.concat(chunks));
    expect(manifest.config).toEqual({ mediaType: MEDIA.dockerConfig, digest: ds.images[0]!.configDigest, size: expect.any(Number) });
    expect(manifest.layers).toEqual(ds.images[0]!.layerTars.map((tar) => ({ mediaType: MEDIA.dockerLayer, digest: sha256(tar), size: tar.length })));
    expect(await labelsOf(content, target.digest)).toEqual({
      'containerd.io/gc.ref.content.config': ds.images[0]!.configDigest,
      'containerd.io/gc.ref.content.l.0': ds.images[0]!.diffIDs[0],
      'containerd.io/gc.ref.content.l.1': ds.images[0]!.diffIDs[1],
    });
    expect((await images.get('example.com/team/dsave:2')).target.digest).toBe(target.digest);
    // Docker's legacy per-layer metadata is not stored.
    expect(await digests(content)).toEqual([target.digest, r.index.digest, ds.images[0]!.configDigest, ...ds.images[0]!.diffIDs].sort());
  });

  it('gets the same digests whether manifest.json comes first or last, and resolves symlinked layers', async () => {
    const spec = [{ repoTags: ['order:1'], layers: [[{ path: 'x', content: 'same' }]] }];
    const last = await dockerSaveArchive(t.path, spec, { basename: 'last' });
    const first = await dockerSaveArchive(t.path, spec, { basename: 'first', manifestFirst: true });
    const a = await importArchive(createReadStream(last.archivePath), stores().content);
    const b = await importArchive(createReadStream(first.archivePath), stores().content);
    expect(a.index.digest).toBe(b.index.digest);
    expect(a.images[0]!.target.digest).toBe(b.images[0]!.target.digest);

    const layer = await makeTar([{ name: 'f', body: 'shared layer' }]);
    const cfg = Buffer.from(JSON.stringify({ architecture: host.architecture, os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256(layer), sha256(layer)] } }));
    const tar = await makeTar([
      { name: 'aaa/', type: 'directory' },
      { name: 'aaa/layer.tar', body: layer },
      { name: 'bbb/', type: 'directory' },
      { name: 'bbb/layer.tar', type: 'symlink', linkname: '../aaa/layer.tar' },
      { name: `${sha256(cfg).slice(7)}.json`, body: cfg },
      { name: 'manifest.json', body: JSON.stringify([{ Config: `${sha256(cfg).slice(7)}.json`, RepoTags: null, Layers: ['aaa/layer.tar', 'bbb/layer.tar'] }]) },
    ]);
    const { content } = stores();
    const r = await importArchive(Readable.from([tar]), content, { allPlatforms: true, indexName: 'linked' });
    expect(r.images.map((i) => i.name)).toEqual(['linked']); // no RepoTags: unnamed manifest
    const idx = JSON.parse((await readAll(content, r.index.digest)).toString()) as { manifests: { digest: string }[] };
    const m = parseManifest(await readAll(content, idx.manifests[0]!.digest));
    expect(m.layers.map((l) => l.digest)).toEqual([sha256(layer), sha256(layer)]);
  });

  it('--compress-blobs gzips uncompressed layers and labels them with the uncompressed digest', async () => {
    const ds = await dockerSaveArchive(t.path, [{ repoTags: ['gz:1'], layers: [[{ path: 'c', content: 'compress me '.repeat(100) }]] }], { basename: 'gz' });
    const { content } = stores();
    const r = await importArchive(createReadStream(ds.archivePath), content, { compressBlobs: true });
    const m = parseManifest(await readAll(content, r.images[0]!.target.digest));
    expect(m.layers[0]!.mediaType).toBe(MEDIA.dockerLayerGzip);
    const gz = await readAll(content, m.layers[0]!.digest);
    expect(sha256(gunzipSync(gz))).toBe(ds.images[0]!.diffIDs[0]);
    expect(await labelsOf(content, m.layers[0]!.digest)).toEqual({ 'containerd.io/uncompressed': ds.images[0]!.diffIDs[0] });
    // A later import without the flag reuses the compressed blob, as containerd does.
    const again = await importArchive(createReadStream(ds.archivePath), content);
    expect(again.images[0]!.target.digest).toBe(r.images[0]!.target.digest);
  });
});

async function readAll(content: ContentStore, digest: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await content.read(digest)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function exportToFile(path: string, content: ContentStore, imgs: { name: string; target: import('../../src/core/descriptor.js').Descriptor }[], opts: Parameters<typeof exportArchive>[3] = {}) {
  const out = createWriteStream(path);
  const done = finished(out);
  await exportArchive(out, content, imgs, opts);
  await done;
}

describe('exportArchive', () => {
  it('round trip: export then import into a fresh namespace gives the same digests', async () => {
    const src = stores();
    await importArchive(createReadStream(multi.archivePath), src.content, { images: src.images, allPlatforms: true });
    const img = await src.images.get('docker.io/library/multi:1');
    const path = join(t.path, 'roundtrip.tar');
    await exportToFile(path, src.content, [img], { allPlatforms: true });

    const dst = stores();
    const r = await importArchive(createReadStream(path), dst.content, { images: dst.images, allPlatforms: true });
    expect(r.images.map((i) => [i.name, i.target.digest])).toEqual([['docker.io/library/multi:1', multi.target.digest]]);
    // Every blob of the image, plus the exported index.json (the root of the second import).
    expect(await digests(dst.content)).toEqual([...multi.blobs.keys(), r.index.digest].sort());
    expect(await labelsOf(dst.content, multi.target.digest)).toEqual(await labelsOf(src.content, multi.target.digest));
  });

  it('streams a large layer through import and export (back-pressure on both sides)', async () => {
    const big = randomBytes(24 << 20);
    const img = await buildImage(t.path, {
      name: 'docker.io/library/big:1',
      basename: 'big',
      platforms: [{ layers: [{ compression: 'none', entries: [{ path: 'big.bin', content: big }] }] }],
    });
    const src = stores();
    await importArchive(createReadStream(img.archivePath, { highWaterMark: 64 << 10 }), src.content, { images: src.images });
    const layer = img.manifests[0]!.layers[0]!.descriptor;
    expect((await src.content.info(layer.digest)).size).toBe(layer.size);
    const path = join(t.path, 'big-export.tar');
    await exportToFile(path, src.content, [await src.images.get('docker.io/library/big:1')]);
    const dst = stores();
    const r = await importArchive(createReadStream(path), dst.content);
    expect(r.images[0]!.target.digest).toBe(img.target.digest);
    expect(sha256(await readAll(dst.content, layer.digest))).toBe(layer.digest);
  });

  it('writes containerd layout: sorted entries, index.json annotations, manifest.json, host platform only by default', async () => {
    const src = stores();
    await importArchive(createReadStream(multi.archivePath), src.content, { images: src.images, allPlatforms: true });
    const img = await src.images.get('docker.io/library/multi:1');
    const path = join(t.path, 'layout.tar');
    await exportToFile(path, src.content, [img, { name: 'example.com/alias:v9', target: img.target }]);
    const files = await readTar(path);
    const names = [...files.keys()];
    expect(names).toEqual([...names].sort());
    const hostM = multi.manifests[1]!;
    const expectedBlobs = [multi.target.digest, hostM.descriptor.digest, hostM.config.descriptor.digest, ...hostM.layers.map((l) => l.descriptor.digest)];
    expect(names).toEqual(
      ['blobs/', 'blobs/sha256/', ...expectedBlobs.map((d) => `blobs/sha256/${d.slice(7)}`).sort(), 'index.json', 'manifest.json', 'oci-layout'],
    );
    for (const d of expectedBlobs) expect(sha256(files.get(`blobs/sha256/${d.slice(7)}`)!)).toBe(d);
    expect(JSON.parse(files.get('oci-layout')!.toString())).toEqual({ imageLayoutVersion: '1.0.0' });
    const index = JSON.parse(files.get('index.json')!.toString());
    expect(index).toEqual({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: MEDIA.ociIndex,
          digest: multi.target.digest,
          size: multi.target.size,
          annotations: { 'io.containerd.image.name': 'docker.io/library/multi:1', 'org.opencontainers.image.ref.name': '1' },
        },
        {
          mediaType: MEDIA.ociIndex,
          digest: multi.target.digest,
          size: multi.target.size,
          annotations: { 'io.containerd.image.name': 'example.com/alias:v9', 'org.opencontainers.image.ref.name': 'v9' },
        },
      ],
    });
    expect(JSON.parse(files.get('manifest.json')!.toString())).toEqual([
      {
        Config: `blobs/sha256/${hostM.config.descriptor.digest.slice(7)}`,
        RepoTags: ['multi:1', 'example.com/alias:v9'],
        Layers: hostM.layers.map((l) => `blobs/sha256/${l.descriptor.digest.slice(7)}`),
      },
    ]);
  });

  it('a chosen platform, all platforms, skipping manifest.json', async () => {
    const src = stores();
    await importArchive(createReadStream(multi.archivePath), src.content, { images: src.images, allPlatforms: true });
    const img = await src.images.get('docker.io/library/multi:1');
    const path = join(t.path, 'p.tar');
    await exportToFile(path, src.content, [img], { platform: others[1]!, skipDockerManifest: true });
    let names = [...(await readTar(path)).keys()];
    expect(names).toContain(`blobs/sha256/${multi.manifests[2]!.descriptor.digest.slice(7)}`);
    expect(names).not.toContain(`blobs/sha256/${multi.manifests[1]!.descriptor.digest.slice(7)}`);
    expect(names).not.toContain('manifest.json');
    await exportToFile(path, src.content, [img], { allPlatforms: true });
    names = [...(await readTar(path)).keys()];
    for (const d of multi.blobs.keys()) expect(names).toContain(`blobs/sha256/${d.slice(7)}`);
  });

  it('fails on a missing selected blob or a platform the index lacks, and destroys the output', async () => {
    const src = stores();
    await importArchive(createReadStream(multi.archivePath), src.content, { images: src.images });
    const img = await src.images.get('docker.io/library/multi:1');
    // Only the host platform was imported with labels, but every blob of the archive was stored; drop one.
    await src.content.delete(multi.manifests[1]!.layers[0]!.descriptor.digest);
    const out = new PassThrough();
    out.resume();
    expect(await kindOf(exportArchive(out, src.content, [img]))).toBe('not found');
    expect(out.destroyed).toBe(true);
    const out2 = new PassThrough();
    out2.resume();
    expect(await kindOf(exportArchive(out2, src.content, [img], { platform: { os: 'windows', architecture: 'amd64' } }))).toBe('not found');
    const cfg = multi.manifests[1]!.config.descriptor;
    expect(await kindOf(exportArchive(new PassThrough().resume(), src.content, [{ name: 'cfg', target: cfg }]))).toBe('invalid argument');
  });
});

describe('interop with a real containerd', () => {
  let c: StartedContainerd;
  let bb: BusyboxArchive;
  const ns = 'strata-archive';
  const run = (args: string[]) => ctrAt(c.address, args, ns);

  beforeAll(async () => {
    bb = await buildBusyboxArchive(t.path);
    c = await startContainerd();
  });
  afterAll(async () => {
    await c?.stop();
    await c?.dir.cleanup();
  });

  it('importArchive reads what `ctr image export` writes', async () => {
    let r = await run(['image', 'import', '--no-unpack', bb.archive]);
    expect(r.code, r.stderr).toBe(0);
    const out = join(t.path, 'from-containerd.tar');
    r = await run(['image', 'export', out, bb.name]);
    expect(r.code, r.stderr).toBe(0);
    const { content, images } = stores();
    const imp = await importArchive(createReadStream(out), content, { images });
    expect(imp.images.map((i) => [i.name, i.target.digest])).toEqual([[bb.name, bb.manifestDigest]]);
    for (const d of [bb.layerDigest, bb.configDigest, bb.manifestDigest]) expect((await content.info(d)).digest).toBe(d);
    expect(await labelsOf(content, bb.manifestDigest)).toEqual({
      'containerd.io/gc.ref.content.config': bb.configDigest,
      'containerd.io/gc.ref.content.l.0': bb.layerDigest,
    });
  });

  it('containerd imports (and unpacks) what exportArchive writes', async () => {
    const { content, images } = stores();
    await importArchive(createReadStream(bb.archive), content, { images });
    const img = await images.get(bb.name);
    const path = join(t.path, 'for-containerd.tar');
    await exportToFile(path, content, [{ name: 'docker.io/library/strata-export:1', target: img.target }]);
    const ns2 = 'strata-reimport';
    let r = await ctrAt(c.address, ['image', 'import', path], ns2);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/unpacking docker\.io\/library\/strata-export:1 \(sha256:[0-9a-f]{64}\)\.\.\.done/);
    r = await ctrAt(c.address, ['image', 'ls'], ns2);
    expect(r.code, r.stderr).toBe(0);
    const row = tableRows(r.stdout).find((x) => x[0] === 'docker.io/library/strata-export:1');
    expect(row, r.stdout).toBeDefined();
    expect(row![2]).toBe(bb.manifestDigest);
    expect(row![5]).toBe(formatPlatform({ ...defaultPlatform(), variant: undefined }));
    r = await ctrAt(c.address, ['image', 'check'], ns2);
    expect(r.stdout).toMatch(/strata-export:1\s+application\/vnd\.oci\.image\.manifest\.v1\+json\s+sha256:[0-9a-f]{64}\s+complete \(2\/2\)\s+[0-9.]+ \S+\/[0-9.]+ \S+\s+true/);
    await ctrAt(c.address, ['image', 'rm', '--sync', 'docker.io/library/strata-export:1'], ns2);
  });

  it('the same docker save archive gets the same manifest and index digests in containerd and Strata', async () => {
    const ds = await dockerSaveArchive(t.path, [
      { repoTags: ['interop-dsave:1'], layers: [[{ path: 'etc/', type: 'dir' }, { path: 'etc/x', content: 'x\n' }], [{ path: 'y', content: 'y' }]] },
    ], { basename: 'interop-dsave' });
    const r = await ctrAt(c.address, ['image', 'import', '--no-unpack', '--index-name', 'the-index', ds.archivePath], ns);
    expect(r.code, r.stderr).toBe(0);
    const ls = await run(['image', 'ls']);
    const rowOf = (name: string) => tableRows(ls.stdout).find((x) => x[0] === name);
    const { content } = stores();
    const imp = await importArchive(createReadStream(ds.archivePath), content, { indexName: 'the-index' });
    expect(rowOf('docker.io/library/interop-dsave:1')?.[2], ls.stdout).toBe(imp.images.find((i) => i.name === 'docker.io/library/interop-dsave:1')!.target.digest);
    expect(rowOf('the-index')?.[2], ls.stdout).toBe(imp.index.digest);
  });
});
