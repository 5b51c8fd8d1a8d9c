/**
 * The layer limits ([plugins."io.containerd.differ.v1.walking"]) on a real stratad configured with small
 * values: a layer over each limit fails Apply with INVALID_ARGUMENT naming the limit and its value, writes no
 * more than the limit, and once its snapshot is removed nothing is left on disk. A layer within the limits
 * applies. The config's values are checked.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { StrataError } from '../../src/core/errdefs.js';
import { differDefaults, limitsFromConfig } from '../../src/diff/limits.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage } from '../helpers/images.js';
import { startRegistry, stopAllRegistries } from '../helpers/registry.js';
import { makeTar, type TarEntry } from '../helpers/tar.js';
import { collectProgress, listContent, listSnapshots, pullImage } from '../helpers/transfer.js';
import { encodeHeader, endOfArchive, padding } from '../../src/diff/tar.js';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';

let d: StartedDaemon;
let c: StrataClient;

beforeAll(async () => {
  d = await startDaemon({
    config: [
      '[plugins."io.containerd.differ.v1.walking"]',
      'max_layer_size = 1048576',
      'max_expansion_ratio = 50',
      'expansion_ratio_min_size = 262144',
      'max_entries = 20',
      'max_path_length = 200',
      'max_path_depth = 8',
      'max_xattrs = 4',
      'max_xattr_size = 1024',
      'max_layer_xattr_size = 4096',
      'max_pax_header_size = 8192',
      // The collector runs only when a test asks (GC service), never on its own in the middle of one.
      '[plugins."io.containerd.gc.v1.scheduler"]',
      'mutation_threshold = 0',
      'startup_delay = "0s"',
    ].join('\n'),
    gc: true,
  });
  // Everything the tests make directly is held by a lease: collections run after deletions.
  const c0 = d.client();
  await c0.call(c0.leases, c0.leases.create, { id: 'limits-test', labels: {} });
  c0.close();
  c = d.client('default', 'limits-test');
});
afterAll(async () => {
  c?.close();
  await stopAll();
  await stopAllRegistries();
  await d?.dir.cleanup();
});

const snapshotsDir = () => join(d.root, 'io.containerd.snapshotter.v1.overlayfs', 'snapshots');

/** Bytes of the regular files under dir. */
async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await bytesUnder(p);
    else if (e.isFile()) total += (await stat(p)).size;
  }
  return total;
}

let n = 0;
/**
 * Applies a layer (the tar, gzipped) onto a fresh snapshot; returns the error (undefined on success) and the
 * bytes written into the snapshot, then removes the snapshot and checks that nothing is left of it.
 */
async function applyLayer(tar: Buffer): Promise<{ err: StrataError | undefined; written: number }> {
  const blob = gzipSync(tar);
  const digest = sha(blob);
  await c.writeBlob([blob], { ref: `up-${digest}`, expected: digest, total: blob.length });
  const key = `limits-${++n}`;
  const { mounts } = await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: 'overlayfs', key, parent: '', labels: {} });
  const err = await c
    .call(c.diff, c.diff.apply, { mounts, payloads: {}, diff: { mediaType: GZIP, digest, size: blob.length, annotations: {} } })
    .then(
      () => undefined,
      (e: unknown) => e as StrataError,
    );
  const [dir] = await readdir(snapshotsDir());
  const written = await bytesUnder(join(snapshotsDir(), dir!));
  await c.call(c.snapshots, c.snapshots.remove, { snapshotter: 'overlayfs', key });
  // Remove leaves the data to the background (containerd leaves it to its GC); Cleanup waits for it.
  await c.call(c.snapshots, c.snapshots.cleanup, { snapshotter: 'overlayfs' });
  expect(await readdir(snapshotsDir())).toEqual([]);
  return { err, written };
}

function expectLimit(err: StrataError | undefined, text: string): void {
  expect(err).toBeInstanceOf(StrataError);
  expect(err!.kind).toBe('invalid argument');
  expect(err!.message).toContain(text);
  expect(err!.message).toContain('plugins."io.containerd.differ.v1.walking"');
  expect(err!.message).not.toContain(d.dir.path);
}

describe('layer limits', () => {
  it('applies a layer within every limit', async () => {
    const entries: TarEntry[] = [{ name: 'a/', type: 'directory' }, { name: 'a/b/', type: 'directory' }];
    for (let i = 0; i < 10; i++) entries.push({ name: `a/b/f${i}`, body: randomBytes(1000) });
    const { err, written } = await applyLayer(await makeTar(entries));
    expect(err).toBeUndefined();
    expect(written).toBe(10_000);
  });

  it('max_layer_size: 2 MiB of incompressible data is refused, and no more than 1 MiB is written', async () => {
    const { err, written } = await applyLayer(await makeTar([{ name: 'big', body: randomBytes(2 << 20) }]));
    expectLimit(err, 'max_layer_size = 1048576');
    expect(written).toBeLessThanOrEqual(1 << 20);
  });

  it('max_expansion_ratio: 1 MiB of zeros (a few KB of gzip) is refused past the minimum size', async () => {
    const { err, written } = await applyLayer(await makeTar([{ name: 'zeros', body: Buffer.alloc(1 << 20) }]));
    expectLimit(err, 'max_expansion_ratio = 50');
    expect(err!.message).toContain('expansion_ratio_min_size = 262144');
    expect(written).toBeLessThan(1 << 20);
  });

  it('max_entries: the 21st entry is refused', async () => {
    const entries: TarEntry[] = [];
    for (let i = 0; i < 21; i++) entries.push({ name: `f${i}`, body: 'x' });
    const { err } = await applyLayer(await makeTar(entries));
    expectLimit(err, 'max_entries = 20');
  });

  it('max_path_length: a 300-byte name is refused', async () => {
    const { err } = await applyLayer(await makeTar([{ name: `${'p'.repeat(150)}/${'q'.repeat(149)}`, body: 'x' }]));
    expectLimit(err, 'max_path_length = 200');
    expect(err!.message).toContain('300 bytes');
  });

  it('max_path_length: a hardlink target of 300 bytes is refused', async () => {
    const { err } = await applyLayer(await makeTar([{ name: 'h', type: 'link', linkname: `${'p'.repeat(150)}/${'q'.repeat(149)}` }]));
    expectLimit(err, 'max_path_length = 200');
    expect(err!.message).toContain('link target of 300 bytes');
  });

  it('max_path_depth: a name 10 levels deep is refused, counted after cleaning', async () => {
    const { err } = await applyLayer(await makeTar([{ name: `${'d/'.repeat(9)}f`, body: 'x' }]));
    expectLimit(err, 'max_path_depth = 8');
    expect(err!.message).toContain('10 levels deep');
    const ok = await applyLayer(await makeTar([{ name: `${'d/../'.repeat(20)}${'d/'.repeat(7)}f`, body: 'x' }]));
    expect(ok.err).toBeUndefined();
  });
});

/** One PAX record, "<len> <key>=<value>\n" (len counting its own digits). */
function paxRecord(key: string, value: string): Buffer {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body) + 1;
  while (String(len).length + Buffer.byteLength(body) !== len) len++;
  return Buffer.from(`${len}${body}`);
}

/** A tar of one 1-byte file `f` behind one PAX extended header ('x') per record set, written block by block. */
function paxTar(sets: [string, string][][]): Buffer {
  const parts: Buffer[] = [];
  for (const records of sets) {
    const data = Buffer.concat(records.map(([k, v]) => paxRecord(k, v)));
    parts.push(encodeHeader({ name: 'PaxHeaders.0/f', type: 'x', mode: 0, uid: 0, gid: 0, size: data.length, mtime: 0n }));
    parts.push(data, Buffer.alloc(padding(data.length)));
  }
  parts.push(encodeHeader({ name: 'f', type: '0', mode: 0o644, uid: 0, gid: 0, size: 1, mtime: 0n }), Buffer.from('x'), Buffer.alloc(511));
  parts.push(endOfArchive());
  return Buffer.concat(parts);
}

/** `n` user xattrs as tar-stream PAX records, each value `size` bytes. */
const xattrs = (n: number, size = 8, prefix = 'a'): Record<string, string> =>
  Object.fromEntries(Array.from({ length: n }, (_, i) => [`SCHILY.xattr.user.${prefix}${i}`, 'v'.repeat(size)]));

describe('limits on extended attributes and PAX headers', () => {
  it('max_xattrs: an entry with 5 extended attributes is refused before anything of it is written', async () => {
    const { err, written } = await applyLayer(await makeTar([{ name: 'f', body: 'data', pax: xattrs(5) }]));
    expectLimit(err, 'max_xattrs = 4');
    expect(err!.message).toContain('tar entry "f": 5 extended attributes');
    expect(written).toBe(0);
  });

  it('max_xattr_size: an entry with 2,000 bytes of extended attribute values is refused', async () => {
    const { err, written } = await applyLayer(await makeTar([{ name: 'f', body: 'data', pax: xattrs(1, 2000) }]));
    expectLimit(err, 'max_xattr_size = 1024');
    expect(err!.message).toContain('2007 bytes of extended attributes'); // "user.a0" (7) + 2000
    expect(written).toBe(0);
  });

  it('an entry with 4 small extended attributes applies', async () => {
    const { err, written } = await applyLayer(await makeTar([{ name: 'f', body: 'data', pax: xattrs(4) }]));
    expect(err).toBeUndefined();
    expect(written).toBe(4);
  });

  it('a directory named again keeps one value per attribute: the same 3 ten times apply, 2 more names are refused', async () => {
    const same: TarEntry[] = Array.from({ length: 10 }, () => ({ name: 'd/', type: 'directory' as const, pax: xattrs(3) }));
    expect((await applyLayer(await makeTar(same))).err).toBeUndefined();
    const more: TarEntry[] = [...same.slice(0, 2), { name: 'd/', type: 'directory', pax: xattrs(2, 8, 'b') }];
    const { err } = await applyLayer(await makeTar(more));
    expectLimit(err, 'max_xattrs = 4');
    expect(err!.message).toContain('tar entry "d/": 5 extended attributes');
  });

  it('max_layer_xattr_size: the entry that takes the layer past 4096 bytes of extended attributes is refused', async () => {
    const entries: TarEntry[] = Array.from({ length: 10 }, (_, i) => ({ name: `f${i}`, body: 'x', pax: xattrs(1, 500) }));
    const { err, written } = await applyLayer(await makeTar(entries));
    expectLimit(err, 'max_layer_xattr_size = 4096');
    // 507 bytes each ("user.a0" and 500): 8 fit, the 9th does not, and is not created.
    expect(err!.message).toContain('tar entry "f8": more than 4096 bytes of extended attributes in the layer');
    expect(written).toBe(8);
  });

  it('max_pax_header_size: a 10,000-byte PAX record set is refused before it is read', async () => {
    const { err, written } = await applyLayer(paxTar([[['comment', 'c'.repeat(10_000)]]]));
    expectLimit(err, 'max_pax_header_size = 8192');
    expect(err!.message).toContain('10015 bytes of extended headers');
    expect(written).toBe(0);
  });

  it('max_pax_header_size: three PAX headers of 3,000 bytes in front of one entry count together', async () => {
    const set: [string, string][] = [['comment', 'c'.repeat(2986)]];
    const two = await applyLayer(paxTar([set, set]));
    expect(two.err).toBeUndefined();
    expect(two.written).toBe(1);
    const { err, written } = await applyLayer(paxTar([set, set, set]));
    expectLimit(err, 'max_pax_header_size = 8192');
    expect(err!.message).toContain('9000 bytes of extended headers');
    expect(written).toBe(0);
  });
});

describe('layer limits in an import through the daemon', () => {
  const cases: { limit: string; text: string; layer: () => Promise<Buffer> }[] = [
    { limit: 'max_entries', text: 'max_entries = 20', layer: () => makeTar(Array.from({ length: 30 }, (_, i) => ({ name: `f${i}`, body: 'x' }))) },
    { limit: 'max_path_length', text: 'max_path_length = 200', layer: () => makeTar([{ name: `${'p'.repeat(150)}/${'q'.repeat(149)}`, body: 'x' }]) },
    { limit: 'max_path_depth', text: 'max_path_depth = 8', layer: () => makeTar([{ name: `${'d/'.repeat(12)}f`, body: 'x' }]) },
    { limit: 'max_xattrs', text: 'max_xattrs = 4', layer: () => makeTar([{ name: 'f', body: 'data', pax: xattrs(50) }]) },
    { limit: 'max_xattr_size', text: 'max_xattr_size = 1024', layer: () => makeTar([{ name: 'f', body: 'data', pax: xattrs(1, 3000) }]) },
    {
      limit: 'max_layer_xattr_size',
      text: 'max_layer_xattr_size = 4096',
      layer: () => makeTar(Array.from({ length: 10 }, (_, i) => ({ name: `f${i}`, body: 'x', pax: xattrs(1, 900) }))),
    },
    { limit: 'max_pax_header_size', text: 'max_pax_header_size = 8192', layer: async () => paxTar([[['comment', 'c'.repeat(10_000)]]]) },
  ];

  it.each(cases)('an image with a layer over $limit fails the import naming the limit; once the image is deleted and collected nothing is left', async ({ limit, text, layer }) => {
    const name = `docker.io/library/${limit.replaceAll('_', '-')}:latest`;
    const img = await buildImage(d.dir.path, {
      basename: limit,
      name,
      platforms: [
        {
          layers: [
            { entries: [], tar: await makeTar([{ name: 'ok', body: 'fine' }]), compression: 'gzip' },
            { entries: [], tar: await layer(), compression: 'gzip' },
          ],
        },
      ],
    });
    const cl = d.client(`import-${limit.replaceAll('_', '-')}`);
    try {
      const err = await collectProgress(
        cl.transfer.import({ path: img.archivePath, indexName: '', platforms: [], allPlatforms: false, unpack: true, snapshotter: 'overlayfs' }, cl.metadata()) as unknown as AsyncIterable<unknown>,
      ).then(
        () => undefined,
        (e: unknown) => e as StrataError,
      );
      expectLimit(err, text);
      // The first layer's snapshot was committed before the second failed; no active snapshot of the failed
      // layer is left, and the snapshotter holds a directory for each snapshot recorded, no more.
      const left = await listSnapshots(cl);
      expect(left.filter((s) => s.kind !== 3 /* committed */)).toEqual([]);
      await cl.call(cl.gc, cl.gc.collect, { dryRun: false });
      await cl.call(cl.snapshots, cl.snapshots.cleanup, { snapshotter: 'overlayfs' });
      expect((await readdir(snapshotsDir())).length).toBe((await listSnapshots(cl)).length);
      // Without the image (if the import recorded it), a collection leaves nothing at all.
      await cl.call(cl.images, cl.images.delete, { name, sync: false }).catch(() => undefined);
      await cl.call(cl.gc, cl.gc.collect, { dryRun: false });
      await cl.call(cl.snapshots, cl.snapshots.cleanup, { snapshotter: 'overlayfs' });
      expect(await listSnapshots(cl)).toEqual([]);
      expect(await readdir(snapshotsDir())).toEqual([]);
      expect(await listContent(cl)).toEqual([]);
    } finally {
      cl.close();
    }
  });
});

describe('layer limits in a pull', () => {
  it('a layer over max_layer_size fails the unpack with the limit named, and leaves no snapshot or directory', async () => {
    const reg = await startRegistry();
    const img = await buildImage(d.dir.path, {
      basename: 'over-limit',
      platforms: [{ layers: [{ entries: [], tar: await makeTar([{ name: 'big', body: randomBytes(2 << 20) }]), compression: 'gzip' }] }],
    });
    await reg.pushOciLayout(img.layoutDir, 'over-limit:latest');
    const cl = d.client('over-limit');
    try {
      const err = await pullImage(cl, `${reg.host}/over-limit:latest`).then(
        () => undefined,
        (e: unknown) => e as StrataError,
      );
      expectLimit(err, 'max_layer_size = 1048576');
      expect(await listSnapshots(cl)).toEqual([]);
      await cl.call(cl.snapshots, cl.snapshots.cleanup, { snapshotter: 'overlayfs' });
      expect(await readdir(snapshotsDir())).toEqual([]);
    } finally {
      cl.close();
    }
  });
});

describe('the limits config', () => {
  it('defaults to values real images never reach, and 0 turns a limit off', () => {
    expect(limitsFromConfig({})).toEqual(differDefaults());
    expect(differDefaults().max_layer_size).toBe(64 * 2 ** 30);
    expect(limitsFromConfig({ max_entries: 0 }).max_entries).toBe(0);
  });

  it('refuses a value that is not a whole number of 0 or more, naming the key', () => {
    for (const bad of [-1, 1.5, 'many', true]) {
      expect(() => limitsFromConfig({ max_entries: bad })).toThrow(/max_entries must be a whole number/);
    }
  });
});
