/**
 * The operations the crash walk (crash-points.test.ts) and the random kills (random-kills.test.ts) drive through
 * a real stratad, and the check each crash is followed by. Every operation can run again on what an earlier,
 * interrupted run of it left (that is the "retry to success" the tests assert) and checks that its data reads
 * back. The check after a crash is test/reliability/fsck.ts.
 */
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { chainIDs } from '../../src/images/manifest.js';
import type { StartedDaemon } from '../helpers/daemon.js';
import { sha256 } from '../helpers/data.js';
import { buildImage, type BuiltImage } from '../helpers/images.js';
import type { StartedRegistry } from '../helpers/registry.js';
import { pullImage } from '../helpers/transfer.js';

export const NS = 'crash-walk';
/** Everything the operations create is under this lease (so a collection the scheduler starts keeps it). */
export const LEASE = 'walk';
const SN = 'overlayfs';

export interface Fixture {
  registry: StartedRegistry;
  image: BuiltImage;
  ref: string;
  blob: Buffer;
}

export async function makeFixture(dir: string, registry: StartedRegistry): Promise<Fixture> {
  const image = await buildImage(dir, {
    basename: 'walk',
    platforms: [
      {
        layers: [
          {
            compression: 'gzip',
            entries: [
              { path: 'etc', type: 'dir' },
              { path: 'etc/base', content: 'base layer\n' },
              { path: 'data', type: 'dir' },
              ...Array.from({ length: 40 }, (_, i) => ({ path: `data/f${i}`, content: `file ${i} `.repeat(200 + i) })),
            ],
          },
          { entries: [{ path: 'etc/top', content: 'top layer\n' }, { path: 'etc/base', type: 'whiteout' as const }] },
        ],
      },
    ],
  });
  await registry.pushOciLayout(image.layoutDir, 'walk:1');
  const blob = Buffer.alloc(3 << 20);
  for (let i = 0; i < blob.length; i += 4) blob.writeUInt32LE((i * 2654435761) >>> 0, i);
  return { registry, image, ref: `${registry.host}/walk:1`, blob };
}

function kind(err: unknown): string | undefined {
  return (err as { kind?: string }).kind;
}

/** Runs p; an error of one of these kinds counts as done (what an interrupted earlier run already did). */
async function tolerate<T>(p: Promise<T>, ...kinds: string[]): Promise<T | undefined> {
  try {
    return await p;
  } catch (err) {
    if (kinds.includes(kind(err) ?? '')) return undefined;
    throw err;
  }
}

async function withClient<T>(d: StartedDaemon, lease: string | undefined, fn: (c: StrataClient) => Promise<T>): Promise<T> {
  const c = d.client(NS, lease);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

async function ensureLease(c: StrataClient, id: string): Promise<void> {
  await tolerate(c.call(c.leases, c.leases.create, { id, labels: {} }), 'already exists');
}

/** Writes part of an ingest and leaves it (the call is cancelled), as an interrupted upload does. */
async function partialIngest(c: StrataClient, ref: string): Promise<void> {
  const part = Buffer.alloc(64 << 10, 7);
  await c
    .writeBlob(
      (async function* () {
        yield part;
        throw new Error('upload interrupted');
      })(),
      { ref, total: 1 << 20 },
    )
    .then(
      () => {
        throw new Error('partial ingest committed');
      },
      (err: unknown) => {
        if ((err as Error).message !== 'upload interrupted') throw err;
      },
    );
  // The server closes its writer once it sees the cancellation: wait for the ingest to show.
  for (let i = 0; i < 100; i++) {
    const st = await tolerate(c.call(c.content, c.content.status, { ref }), 'not found');
    if (st?.status && st.status.offset > 0) return;
    await sleep(20);
  }
  throw new Error(`ingest ${ref} not found after an interrupted upload`);
}

async function readAll(c: StrataClient, digest: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of c.readBlob(digest)) parts.push(p);
  return Buffer.concat(parts);
}

/** Content: ingest and commit a blob, read it back, delete it; a partial ingest, aborted. */
export async function contentOperation(d: StartedDaemon, f: Fixture): Promise<void> {
  await withClient(d, undefined, (c) => ensureLease(c, LEASE));
  await withClient(d, LEASE, async (c) => {
    const expected = sha256(f.blob);
    const { digest } = await c.writeBlob([f.blob.subarray(0, 1 << 20), f.blob.subarray(1 << 20)], { ref: 'walk-blob', total: f.blob.length, expected });
    expect(digest).toBe(expected);
    expect(sha256(await readAll(c, digest))).toBe(expected);
    await tolerate(c.call(c.content, c.content.delete, { digest }), 'not found');
    expect(await tolerate(c.call(c.content, c.content.info, { digest }), 'not found')).toBeUndefined();
    await partialIngest(c, 'walk-abort');
    await c.call(c.content, c.content.abort, { ref: 'walk-abort' });
    expect(await tolerate(c.call(c.content, c.content.status, { ref: 'walk-abort' }), 'not found')).toBeUndefined();
  });
}

const sn = {
  remove: (c: StrataClient, key: string) => tolerate(c.call(c.snapshots, c.snapshots.remove, { snapshotter: SN, key }), 'not found'),
  prepare: (c: StrataClient, key: string, parent: string) => c.call(c.snapshots, c.snapshots.prepare, { snapshotter: SN, key, parent, labels: {} }),
  view: (c: StrataClient, key: string, parent: string) => c.call(c.snapshots, c.snapshots.view, { snapshotter: SN, key, parent, labels: {} }),
  commit: (c: StrataClient, name: string, key: string) => c.call(c.snapshots, c.snapshots.commit, { snapshotter: SN, name, key, labels: {} }),
};

const upperOf = (m: { source: string; options: string[] }) => m.options.find((o) => o.startsWith('upperdir='))?.slice('upperdir='.length) ?? m.source;
const lowersOf = (m: { options: string[] }) => m.options.find((o) => o.startsWith('lowerdir='))?.slice('lowerdir='.length).split(':') ?? [];

/**
 * Snapshots: prepare, write, commit (twice, a chain), a view, a diff of the view (the double walk through a
 * temporary mount), then remove everything. What an interrupted run left is removed first.
 */
export async function snapshotOperation(d: StartedDaemon): Promise<void> {
  await withClient(d, undefined, (c) => ensureLease(c, LEASE));
  await withClient(d, LEASE, async (c) => {
    const keys = ['walk-view', 'walk-b', 'walk-top', 'walk-a', 'walk-base'];
    for (const k of keys) await sn.remove(c, k);
    const a = await sn.prepare(c, 'walk-a', '');
    await writeFile(join(upperOf(a.mounts[0]!), 'a.txt'), 'first layer');
    await sn.commit(c, 'walk-base', 'walk-a');
    const b = await sn.prepare(c, 'walk-b', 'walk-base');
    await writeFile(join(upperOf(b.mounts[0]!), 'b.txt'), 'second layer');
    await sn.commit(c, 'walk-top', 'walk-b');
    const v = await sn.view(c, 'walk-view', 'walk-top');
    const lowers = lowersOf(v.mounts[0]!);
    expect(lowers.length).toBe(2);
    // Relative lowerdirs (compacted options) resolve against the snapshotter's snapshots directory.
    const abs = (p: string) => (p.startsWith('/') ? p : join(d.root, `io.containerd.snapshotter.v1.${SN}`, 'snapshots', p));
    expect(readFileSync(join(abs(lowers[0]!), 'b.txt'), 'utf8')).toBe('second layer');
    expect(readFileSync(join(abs(lowers[1]!), 'a.txt'), 'utf8')).toBe('first layer');
    const diff = await c.call(c.diff, c.diff.diff, { left: [], right: v.mounts, mediaType: '', ref: '', labels: {} });
    expect(diff.diff?.size).toBeGreaterThan(0);
    for (const k of ['walk-view', 'walk-top', 'walk-base']) await sn.remove(c, k);
    const left = (await c.collect(c.snapshots.list({ snapshotter: SN, filters: [] }, c.metadata()))).flatMap((r) => r.info).map((i) => i.name);
    expect(left.filter((n) => keys.includes(n))).toEqual([]);
  });
}

/**
 * Images and GC: pull and unpack from the registry, read the unpacked files through a view, delete the image
 * with a synchronous collection (blobs and snapshots go), and collect a leased partial ingest.
 */
export async function imageOperation(d: StartedDaemon, f: Fixture): Promise<void> {
  await withClient(d, undefined, async (c) => {
    // Leases an interrupted pull left (they keep what it fetched until they expire, as containerd's do).
    for (const l of (await c.call(c.leases, c.leases.list, { filters: [] })).leases) {
      if (l.id !== LEASE) await tolerate(c.call(c.leases, c.leases.delete, { id: l.id, sync: false }), 'not found');
    }
    await pullImage(c, f.ref);
    const img = await c.call(c.images, c.images.get, { name: f.ref });
    expect(img.image?.target?.digest).toBe(f.image.target.digest);
    const top = chainIDs(f.image.manifests[0]!.layers.map((l) => l.diffID)).at(-1)!;
    await ensureLease(c, LEASE);
    await withClient(d, LEASE, async (lc) => {
      await sn.remove(lc, 'walk-rootfs');
      const v = await sn.view(lc, 'walk-rootfs', top);
      const lowers = lowersOf(v.mounts[0]!);
      const abs = (p: string) => (p.startsWith('/') ? p : join(d.root, `io.containerd.snapshotter.v1.${SN}`, 'snapshots', p));
      expect(readFileSync(join(abs(lowers[0]!), 'etc', 'top'), 'utf8')).toBe('top layer\n');
      expect(readFileSync(join(abs(lowers[1]!), 'data', 'f3'), 'utf8')).toBe('file 3 '.repeat(203));
      await sn.remove(lc, 'walk-rootfs');
    });
    await tolerate(c.call(c.images, c.images.delete, { name: f.ref, sync: true }), 'not found');
    for (const l of f.image.manifests[0]!.layers) {
      expect(await tolerate(c.call(c.content, c.content.info, { digest: l.descriptor.digest }), 'not found'), 'a layer blob after the image went').toBeUndefined();
    }
    expect(await tolerate(c.call(c.snapshots, c.snapshots.stat, { snapshotter: SN, key: top }), 'not found'), 'the top layer snapshot').toBeUndefined();
    // A partial ingest that only a lease keeps: a synchronous lease delete collects its data.
    await ensureLease(c, 'walk-gc');
    await withClient(d, 'walk-gc', (gc) => partialIngest(gc, 'walk-gc-ingest'));
    await tolerate(c.call(c.leases, c.leases.delete, { id: 'walk-gc', sync: true }), 'not found');
    expect(await tolerate(c.call(c.content, c.content.status, { ref: 'walk-gc-ingest' }), 'not found')).toBeUndefined();
  });
}
