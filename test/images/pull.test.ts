/**
 * Pull (and unpack) through stratad's transfer service from a real docker-registry on loopback, with images
 * built by the tests. Everything real: registry, daemon, overlay snapshots, mounts.
 */
import { existsSync } from 'node:fs';
import { readFile, readdir, stat, writeFile, lstat, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { chainIDs } from '../../src/images/manifest.js';
import { withTempMount } from '../../src/mount/index.js';
import { mountFromPb } from '../../src/api/convert.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, busyboxPlatform, hostileLayer, hostPlatform, type BuiltImage } from '../helpers/images.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { kindOf } from '../helpers/errors.js';
import { listContent, listSnapshots, pullImage } from '../helpers/transfer.js';

let reg: StartedRegistry;
let d: StartedDaemon;
let dir: TempDir;

beforeAll(async () => {
  dir = await tempDir();
  reg = await startRegistry();
  d = await startDaemon();
});

afterAll(async () => {
  await stopAll();
  await stopAllRegistries();
  await dir.cleanup();
});

/** The root file system of an unpacked image: a view of the top chainID, mounted for `fn`. */
async function withRootfs<T>(c: StrataClient, img: BuiltImage, fn: (root: string) => Promise<T>, m = 0): Promise<T> {
  const ids = img.manifests[m]!.layers.map((l) => l.diffID);
  const top = chainIDs(ids).at(-1)!;
  const key = `view-${Math.random()}`;
  const { mounts } = await c.call(c.snapshots, c.snapshots.view, { snapshotter: 'overlayfs', key, parent: top, labels: {} });
  try {
    return await withTempMount(mounts.map(mountFromPb), fn);
  } finally {
    await c.call(c.snapshots, c.snapshots.remove, { snapshotter: 'overlayfs', key });
  }
}

describe('pull', () => {
  let busybox: BuiltImage;
  let layered: BuiltImage;

  beforeAll(async () => {
    busybox = await buildImage(dir.path, { basename: 'busybox', platforms: [await busyboxPlatform({ compression: 'gzip' })] });
    await reg.pushOciLayout(busybox.layoutDir, 'busybox:latest');
    layered = await buildImage(dir.path, {
      basename: 'layered',
      platforms: [
        {
          layers: [
            {
              entries: [
                { path: 'etc', type: 'dir' },
                { path: 'etc/keep', content: 'keep' },
                { path: 'etc/gone', content: 'gone' },
                { path: 'data', type: 'dir', mode: 0o700 },
                { path: 'data/old', content: 'old' },
                { path: 'tmp', type: 'dir', mode: 0o1777 },
                { path: 'bin', type: 'dir' },
                { path: 'bin/tool', content: '#!/bin/sh\n', mode: 0o755 },
              ],
            },
            {
              compression: 'zstd',
              entries: [
                { path: 'etc/gone', type: 'whiteout' },
                { path: 'data', type: 'opaque' },
                { path: 'data/new', content: 'new' },
                { path: 'tmp/x', content: 'x' },
                // Hardlinks point into their own layer (a layer writer never links to a lower layer's file).
                { path: 'bin/tool2', content: '#!/bin/sh\necho 2\n', mode: 0o755 },
                { path: 'bin/alias', type: 'hardlink', linkname: 'bin/tool2' },
                { path: 'bin/link', type: 'symlink', linkname: 'tool' },
              ],
            },
            { compression: 'none', entries: [{ path: 'etc/third', content: '3' }] },
          ],
        },
      ],
    });
    await reg.pushOciLayout(layered.layoutDir, 'layered:v1');
  });

  it('pulls and unpacks an image: image record, labelled blobs, the snapshot chain, the files', async () => {
    const c = d.client('pull-basic');
    const progress = await pullImage(c, `${reg.host}/busybox:latest`);
    const name = `${reg.host}/busybox:latest`;
    expect(progress.at(-1)).toMatchObject({ kind: 'image', status: 'pulled', ref: name, detail: busybox.target.digest });

    const { image } = await c.call(c.images, c.images.get, { name });
    expect(image!.target).toMatchObject({ digest: busybox.target.digest, mediaType: busybox.target.mediaType, size: busybox.target.size });

    const m = busybox.manifests[0]!;
    const content = new Map((await listContent(c)).map((i) => [i.digest, i]));
    const manifestInfo = content.get(m.descriptor.digest)!;
    expect(manifestInfo.labels['containerd.io/gc.ref.content.config']).toBe(m.config.descriptor.digest);
    expect(manifestInfo.labels['containerd.io/gc.ref.content.l.0']).toBe(m.layers[0]!.descriptor.digest);
    // containerd keys the label by the host without its port.
    expect(manifestInfo.labels['containerd.io/distribution.source.127.0.0.1']).toBe('busybox');
    const layerInfo = content.get(m.layers[0]!.descriptor.digest)!;
    expect(layerInfo.labels['containerd.io/uncompressed']).toBe(m.layers[0]!.diffID);
    const top = chainIDs([m.layers[0]!.diffID]).at(-1)!;
    expect(content.get(m.config.descriptor.digest)!.labels['containerd.io/gc.ref.snapshot.overlayfs']).toBe(top);

    const snaps = await listSnapshots(c);
    expect(snaps.map((s) => [s.name, s.kind])).toEqual([[top, 3 /* COMMITTED */]]);
    // No transfer lease is left behind.
    expect((await c.call(c.leases, c.leases.list, { filters: [] })).leases).toEqual([]);

    await withRootfs(c, busybox, async (root) => {
      expect((await stat(join(root, 'bin/busybox'))).mode & 0o777).toBe(0o755);
      expect(await readlink(join(root, 'bin/sh'))).toBe('busybox');
      expect((await stat(join(root, 'tmp'))).mode & 0o7777).toBe(0o1777);
    });
  });

  it('unpacks whiteouts, opaque directories, hardlinks and symlinks across layers (gzip, zstd, plain)', async () => {
    const c = d.client('pull-layers');
    await pullImage(c, `${reg.host}/layered:v1`);
    const ids = layered.manifests[0]!.layers.map((l) => l.diffID);
    const chain = chainIDs(ids);
    const snaps = await listSnapshots(c);
    expect(snaps.map((s) => s.name).sort()).toEqual([...chain].sort());
    // Each committed layer's parent is the previous chainID.
    for (let i = 1; i < chain.length; i++) expect(snaps.find((s) => s.name === chain[i])!.parent).toBe(chain[i - 1]);

    await withRootfs(c, layered, async (root) => {
      expect(await readFile(join(root, 'etc/keep'), 'utf8')).toBe('keep');
      expect(existsSync(join(root, 'etc/gone'))).toBe(false);
      expect((await readdir(join(root, 'data'))).sort()).toEqual(['new']);
      expect((await stat(join(root, 'data'))).mode & 0o777).toBe(0o700);
      // The second layer adds tmp/x without a tmp entry: tmp keeps the lower layer's 1777.
      expect((await stat(join(root, 'tmp'))).mode & 0o7777).toBe(0o1777);
      const [tool, alias] = await Promise.all([stat(join(root, 'bin/tool2')), stat(join(root, 'bin/alias'))]);
      expect(alias.ino).toBe(tool.ino);
      expect(alias.nlink).toBe(2);
      expect((await lstat(join(root, 'bin/link'))).isSymbolicLink()).toBe(true);
      expect(await readlink(join(root, 'bin/link'))).toBe('tool');
      expect(await readFile(join(root, 'etc/third'), 'utf8')).toBe('3');
    });
  });

  it('pulls again without downloading or extracting anything', async () => {
    const c = d.client('pull-again');
    await pullImage(c, `${reg.host}/busybox:latest`);
    const second = await pullImage(c, `${reg.host}/busybox:latest`);
    const layer = busybox.manifests[0]!.layers[0]!.descriptor.digest;
    const statuses = second.filter((p) => p.ref === layer).map((p) => p.status);
    expect(statuses).toContain('exists');
    expect(statuses).not.toContain('downloading');
    expect(statuses).not.toContain('unpacking');
  });

  it('pulls by digest, and with --skip-unpack creates no snapshot', async () => {
    const c = d.client('pull-digest');
    const ref = `${reg.host}/busybox@${busybox.target.digest}`;
    await pullImage(c, ref, { unpack: false });
    const { image } = await c.call(c.images, c.images.get, { name: ref });
    expect(image!.target!.digest).toBe(busybox.target.digest);
    expect(await listSnapshots(c)).toEqual([]);
  });

  it('a missing tag is NOT_FOUND and creates nothing', async () => {
    const c = d.client('pull-missing');
    const err = pullImage(c, `${reg.host}/busybox:nope`);
    expect(await kindOf(err)).toBe('not found');
    expect((await c.call(c.images, c.images.list, { filters: [] })).images).toEqual([]);
  });
});

describe('pull of a multi-platform index', () => {
  let multi: BuiltImage;
  const other = { os: 'linux', architecture: hostPlatform().architecture === 'amd64' ? 'arm64' : 'amd64' };

  beforeAll(async () => {
    multi = await buildImage(dir.path, {
      basename: 'multi',
      platforms: [
        { layers: [{ entries: [{ path: 'which', content: 'host' }] }] },
        { platform: other, layers: [{ entries: [{ path: 'which', content: 'other' }] }] },
      ],
    });
    await reg.pushOciLayout(multi.layoutDir, 'multi:latest');
  });

  it('fetches only the host platform by default, and unpacks it', async () => {
    const c = d.client('multi-default');
    await pullImage(c, `${reg.host}/multi:latest`);
    const digests = new Set((await listContent(c)).map((i) => i.digest));
    expect(digests.has(multi.manifests[0]!.layers[0]!.descriptor.digest)).toBe(true);
    expect(digests.has(multi.manifests[1]!.layers[0]!.descriptor.digest)).toBe(false);
    expect(digests.has(multi.manifests[1]!.descriptor.digest)).toBe(false);
    const index = (await listContent(c)).find((i) => i.digest === multi.target.digest)!;
    expect(index.labels['containerd.io/gc.ref.content.m.0']).toBe(multi.manifests[0]!.descriptor.digest);
    await withRootfs(c, multi, async (root) => expect(await readFile(join(root, 'which'), 'utf8')).toBe('host'));
  });

  it('--platform selects another platform; --all-platforms fetches every one', async () => {
    const c = d.client('multi-other');
    await pullImage(c, `${reg.host}/multi:latest`, { platforms: [`${other.os}/${other.architecture}`], unpack: false });
    let digests = new Set((await listContent(c)).map((i) => i.digest));
    expect(digests.has(multi.manifests[1]!.layers[0]!.descriptor.digest)).toBe(true);
    expect(digests.has(multi.manifests[0]!.layers[0]!.descriptor.digest)).toBe(false);

    const all = d.client('multi-all');
    await pullImage(all, `${reg.host}/multi:latest`, { allPlatforms: true, unpack: false });
    digests = new Set((await listContent(all)).map((i) => i.digest));
    for (const m of multi.manifests) expect(digests.has(m.layers[0]!.descriptor.digest)).toBe(true);
  });

  it('a platform the index lacks is NOT_FOUND', async () => {
    const c = d.client('multi-none');
    const err = pullImage(c, `${reg.host}/multi:latest`, { platforms: ['windows/amd64'] });
    expect(await kindOf(err)).toBe('not found');
    await expect(err).rejects.toThrow(/no match for platform/);
  });
});

describe('pull failures leave nothing behind', () => {
  it('a missing blob: NOT_FOUND, no image, no layer', async () => {
    const img = await buildImage(dir.path, { basename: 'missing', platforms: [{ layers: [{ entries: [{ path: 'f', content: 'missing blob' }] }] }] });
    await reg.pushOciLayout(img.layoutDir, 'missing:latest');
    const layer = img.manifests[0]!.layers[0]!.descriptor.digest;
    const { rm } = await import('node:fs/promises');
    await rm(reg.blobPath(layer), { force: true });
    const c = d.client('fail-missing');
    const err = pullImage(c, `${reg.host}/missing:latest`);
    expect(await kindOf(err)).toBe('not found');
    expect((await c.call(c.images, c.images.list, { filters: [] })).images).toEqual([]);
    expect((await listContent(c)).some((i) => i.digest === layer)).toBe(false);
    expect(await listSnapshots(c)).toEqual([]);
  });

  it('a corrupt blob (same size, other bytes): FAILED_PRECONDITION, nothing committed, no ingest kept', async () => {
    const img = await buildImage(dir.path, { basename: 'corrupt', platforms: [{ layers: [{ entries: [{ path: 'f', content: 'x'.repeat(5000) }] }] }] });
    await reg.pushOciLayout(img.layoutDir, 'corrupt:latest');
    const layer = img.manifests[0]!.layers[0]!;
    const garbage = Buffer.alloc(layer.blob.length, 0x55);
    await writeFile(reg.blobPath(layer.descriptor.digest), garbage);
    const c = d.client('fail-corrupt');
    const err = pullImage(c, `${reg.host}/corrupt:latest`);
    expect(await kindOf(err)).toBe('failed precondition');
    expect((await listContent(c)).some((i) => i.digest === layer.descriptor.digest)).toBe(false);
    const { statuses } = await c.call(c.content, c.content.listStatuses, { filters: [] });
    expect(statuses).toEqual([]);
    expect((await c.call(c.images, c.images.list, { filters: [] })).images).toEqual([]);
  });

  for (const kind of ['hardlink-escape'] as const) {
    it(`a hostile layer (${kind}) is refused: INVALID_ARGUMENT, no snapshot, nothing written outside`, async () => {
      const img = await buildImage(dir.path, {
        basename: `hostile-${kind}`,
        platforms: [{ layers: [{ entries: [], tar: await hostileLayer(kind), compression: 'gzip' }] }],
      });
      await reg.pushOciLayout(img.layoutDir, `hostile-${kind}:latest`);
      const c = d.client(`hostile-${kind}`);
      const before = await readdir(join(d.root));
      const err = pullImage(c, `${reg.host}/hostile-${kind}:latest`);
      expect(await kindOf(err)).toBe('invalid argument');
      expect(await listSnapshots(c)).toEqual([]);
      expect(await readdir(join(d.root))).toEqual(before);
      for (const p of ['/tmp/strata-escape', '/tmp/strata-escape2']) expect(existsSync(p)).toBe(false);
      expect(await readFile('/etc/passwd', 'utf8')).toMatch(/^root:/);
    });
  }

  it('a traversal layer lands inside the snapshot (`../` names cleaned as containerd cleans them)', async () => {
    const img = await buildImage(dir.path, {
      basename: 'hostile-traversal',
      platforms: [{ layers: [{ entries: [], tar: await hostileLayer('traversal'), compression: 'gzip' }] }],
    });
    await reg.pushOciLayout(img.layoutDir, 'hostile-traversal:latest');
    const c = d.client('hostile-traversal');
    await pullImage(c, `${reg.host}/hostile-traversal:latest`);
    for (const p of ['/tmp/strata-escape', '/tmp/strata-escape2']) expect(existsSync(p)).toBe(false);
    // Not next to the snapshot's fs/ either (where ../ from the upperdir would go).
    const snapshots = join(d.root, 'io.containerd.snapshotter.v1.overlayfs', 'snapshots');
    for (const id of await readdir(snapshots)) expect((await readdir(join(snapshots, id))).filter((n) => n.startsWith('strata-escape'))).toEqual([]);
    await withRootfs(c, img, async (root) => {
      expect(await readFile(join(root, 'strata-escape'), 'utf8')).toBe('escaped');
      expect(await readFile(join(root, 'strata-escape2'), 'utf8')).toBe('escaped');
      expect(await readFile(join(root, 'ok'), 'utf8')).toBe('fine');
    });
  });

  it('a symlink-escape layer lands inside the snapshot (links resolve with the layer root as /)', async () => {
    const img = await buildImage(dir.path, {
      basename: 'hostile-symlink',
      platforms: [{ layers: [{ entries: [], tar: await hostileLayer('symlink-escape'), compression: 'gzip' }] }],
    });
    await reg.pushOciLayout(img.layoutDir, 'hostile-symlink:latest');
    const c = d.client('hostile-symlink');
    await pullImage(c, `${reg.host}/hostile-symlink:latest`);
    expect(existsSync('/tmp/strata-escape')).toBe(false);
    await withRootfs(c, img, async (root) => {
      expect(await readFile(join(root, 'tmp/strata-escape'), 'utf8')).toBe('escaped');
      expect(await readFile(join(root, 'strata-escape'), 'utf8')).toBe('escaped');
    });
  });
});

describe('pull with registry auth (htpasswd)', () => {
  let secure: StartedRegistry;
  beforeAll(async () => {
    secure = await startRegistry({ auth: { username: 'alice', password: 's3cret' } });
    const img = await buildImage(dir.path, { basename: 'private', platforms: [{ layers: [{ entries: [{ path: 'secret', content: 'ok' }] }] }] });
    await secure.pushOciLayout(img.layoutDir, 'private:latest');
  });

  it('anonymous is PERMISSION_DENIED; with credentials the pull works', async () => {
    const c = d.client('auth');
    const err = pullImage(c, `${secure.host}/private:latest`);
    expect(await kindOf(err)).toBe('permission denied');
    await pullImage(c, `${secure.host}/private:latest`, {
      registry: { plainHttp: false, username: 'alice', secret: 's3cret', hostsDir: '', maxConcurrent: 0 },
    });
    expect((await c.call(c.images, c.images.list, { filters: [] })).images.map((i) => i.name)).toEqual([`${secure.host}/private:latest`]);
  });
});
