/**
 * Full disks: stratad's root (content store, metadata database, snapshotters) on a small ext4 filesystem on a
 * loop device, filled with a filler file while an ingest, a pull, an unpack, a snapshot commit or a metadata
 * write runs. Each case checks what the client sees (RESOURCE_EXHAUSTED, containerd's errdefs kind for ENOSPC,
 * with no host path in the message), that nothing half-written stays recorded, that the daemon keeps serving
 * meanwhile, and that the same operation succeeds with the right bytes once the filler is deleted.
 *
 * One daemon serves every case, in the order written (each frees what it filled); a case's namespace is its own.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { StrataError } from '../../src/core/errdefs.js';
import { withTempMount } from '../../src/mount/index.js';
import { Kind } from '../../src/api/gen/containerd/services/snapshots/v1/snapshots.js';
import { ctr, run } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { fsckRoot } from '../helpers/fsck.js';
import { buildImage, type BuiltImage } from '../helpers/images.js';
import { makeLoopFs, type LoopFs } from '../helpers/loopfs.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { collectProgress, listContent, listSnapshots, pullImage } from '../helpers/transfer.js';

const MiB = 1 << 20;

let fs: LoopFs;
let d: StartedDaemon;
/** Files the tests feed to clients, off the small filesystem. */
let scratch: TempDir;

let reg: StartedRegistry;
/** Images on the registry, each with one gzip layer of random bytes (big.bin) and a small file. */
const images: Record<string, BuiltImage> = {};

beforeAll(async () => {
  scratch = await tempDir('strata-full-disk-');
  reg = await startRegistry();
  for (const [name, size] of [['fetch', 20], ['unpack', 20], ['apply', 16], ['ctr', 12]] as const) {
    images[name] = await buildImage(scratch.path, {
      basename: name,
      platforms: [{ layers: [{ entries: [{ path: 'big.bin', content: randomBytes(size * MiB) }, { path: 'etc/small.txt', content: `${name}\n` }] }] }],
    });
    await reg.pushOciLayout(images[name]!.layoutDir, `${name}:latest`);
  }
  fs = await makeLoopFs('ext4', 256 * MiB);
  d = await startDaemon({ dir: { path: fs.path, cleanup: async () => undefined } });
});

// After each case (its fault and its recovery): the stores keep their invariants, by strata fsck on the stopped root.
afterEach(async () => {
  await fs.free();
  await expectFsckClean();
});

afterAll(async () => {
  await stopAll();
  await stopAllRegistries();
  await fs?.cleanup();
  await scratch?.cleanup();
});

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function* chunks(b: Buffer, size = MiB): Generator<Buffer> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

/** The error a call failed with, as a StrataError (fails the test if the call succeeded). */
async function failure(p: Promise<unknown>): Promise<StrataError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'the call succeeded on a full disk').toBeInstanceOf(StrataError);
  return err as StrataError;
}

/** A full-disk error as the client must see it: RESOURCE_EXHAUSTED, saying so, and naming no host path. */
function expectNoSpace(err: StrataError): void {
  expect(err.kind, err.message).toBe('resource exhausted');
  expect(err.message).toMatch(/no space left on device|disk is full/i);
  expect(err.message).not.toContain(fs.path);
  expect(err.message).not.toContain('/tmp/');
}

/** The daemon still answers: its process lives and read calls succeed. */
async function expectServing(c: StrataClient): Promise<void> {
  expect(d.proc.exitCode).toBeNull();
  const v = await c.call(c.version, c.version.version, {});
  expect(v.version).not.toBe('');
  await c.call(c.namespaces, c.namespaces.list, { filter: '' });
}

/** Stops the daemon, asserts `strata fsck` finds no violation in its root, and starts it again. */
async function expectFsckClean(): Promise<void> {
  await d.stop();
  let report: Awaited<ReturnType<typeof fsckRoot>>;
  try {
    report = await fsckRoot(d);
  } finally {
    // Restarted whatever fsck found, so one violation fails one case, not every case after it.
    d = await d.restart();
  }
  expect(report.violations, `fsck found violations: ${JSON.stringify(report.violations)}`).toEqual([]);
}

async function ingests(c: StrataClient) {
  return (await c.call(c.content, c.content.listStatuses, { filters: [] })).statuses;
}

/** Names in the content store's ingest directory that are not ingests (temporary or trash directories). */
async function ingestLeftovers(): Promise<string[]> {
  const names = await readdir(join(d.root, 'io.containerd.content.v1.content', 'ingest'));
  return names.filter((n) => !/^[0-9a-f]{64}$/.test(n));
}

async function readAll(c: StrataClient, digest: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of c.readBlob(digest)) parts.push(b);
  return Buffer.concat(parts);
}

describe('content ingest on a full disk', () => {
  it('an ingest that runs out of space fails with RESOURCE_EXHAUSTED, records no blob, and resumes to the right blob once space is freed', async () => {
    const c = d.client('ingest');
    const data = randomBytes(24 * MiB);
    const digest = sha256(data);
    await fs.fill(8 * MiB);
    try {
      const err = await failure(c.writeBlob(chunks(data), { ref: 'big', expected: digest, total: data.length }));
      expectNoSpace(err);
      // Nothing recorded under the digest; the ingest stays, short of its total, for a resume.
      expect((await listContent(c)).map((i) => i.digest)).not.toContain(digest);
      const [st] = await ingests(c);
      expect(st?.ref).toBe('big');
      expect(st!.offset).toBeGreaterThan(0);
      expect(st!.offset).toBeLessThan(data.length);
      expect(await ingestLeftovers()).toEqual([]);
      await expectServing(c);
      // Consistent on disk while still full, and the daemon starts again on the full disk.
      await expectFsckClean();
      expect((await ingests(c)).map((i) => i.ref)).toEqual(['big']);
    } finally {
      await fs.free();
    }
    const { digest: got, resumedAt } = await c.writeBlob(chunks(data), { ref: 'big', expected: digest, total: data.length });
    expect(got).toBe(digest);
    expect(resumedAt).toBeGreaterThan(0);
    expect(sha256(await readAll(c, digest))).toBe(digest);
    expect(await ingests(c)).toEqual([]);
    expect(await ingestLeftovers()).toEqual([]);
  });

  it('an ingest left short by a full disk can be aborted while the disk is still full, which gives its space back', async () => {
    const c = d.client('ingest-abort');
    const data = randomBytes(16 * MiB);
    await fs.fill(4 * MiB);
    try {
      expectNoSpace(await failure(c.writeBlob(chunks(data), { ref: 'abort-me', total: data.length })));
      const before = await fs.available();
      await c.call(c.content, c.content.abort, { ref: 'abort-me' });
      expect(await ingests(c)).toEqual([]);
      expect(await fs.available()).toBeGreaterThan(before + 2 * MiB);
      expect(await ingestLeftovers()).toEqual([]);
    } finally {
      await fs.free();
    }
  });

  it('ctr content ingest on a full disk reports the space exhausted without a host path, and succeeds once space is freed', async () => {
    const data = randomBytes(12 * MiB);
    const digest = sha256(data);
    await fs.fill(2 * MiB);
    try {
      const r = await ctr(d.address, ['content', 'ingest', '--expected-digest', digest, 'ctr-big'], { namespace: 'ctr-ingest', input: data });
      expect(r.code).not.toBe(0);
      // ctr 1.6's errdefs know no resource-exhausted kind: it prints the status text and ": unknown" after it.
      expect(r.stderr).toMatch(/no space left on device.*: resource exhausted/);
      expect(r.stderr).not.toContain(fs.path);
    } finally {
      await fs.free();
    }
    // ctr resumes the ingest the full disk left (it seeks its input to the offset: a file, not a pipe).
    const file = join(scratch.path, 'ctr-big');
    await writeFile(file, data);
    const ok = await run('sh', ['-c', `exec ctr --address "$1" --namespace ctr-ingest content ingest --expected-digest "$2" ctr-big < "$3"`, 'sh', d.address, digest, file]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    const c = d.client('ctr-ingest');
    expect(sha256(await readAll(c, digest))).toBe(digest);
  });
});

/** Reads a file of a committed snapshot through a view of it, mounted the way the daemon says. */
async function readFromSnapshot(c: StrataClient, parent: string, path: string, snapshotter = 'overlayfs'): Promise<Buffer> {
  const key = `read-${randomBytes(4).toString('hex')}`;
  const { mounts } = await c.call(c.snapshots, c.snapshots.view, { snapshotter, key, parent, labels: {} });
  try {
    return await withTempMount(
      mounts.map((m) => ({ type: m.type, source: m.source, options: m.options })),
      (root) => readFile(join(root, path)),
    );
  } finally {
    await c.call(c.snapshots, c.snapshots.remove, { snapshotter, key });
    // Remove drops the record at once and the backend data in the background: let that finish before a later
    // test fills the disk, which would leave this view's directory to the collector instead.
    if (snapshotter === 'overlayfs') await expectNoSnapshotLeftovers(c);
  }
}

/** The overlayfs backend's snapshot directories. */
async function overlayDirs(): Promise<string[]> {
  return readdir(join(d.root, 'io.containerd.snapshotter.v1.overlayfs', 'snapshots')).catch(() => []);
}

/** Snapshots recorded in every namespace. */
async function recordedSnapshots(c: StrataClient): Promise<number> {
  const { namespaces } = await c.call(c.namespaces, c.namespaces.list, { filter: '' });
  let n = 0;
  for (const ns of namespaces) n += (await listSnapshots(c.with({ namespace: ns.name }))).length;
  return n;
}

/** Waits (a few seconds at most) until the backend holds exactly the recorded snapshots: nothing half-made stays on disk. */
async function expectNoSnapshotLeftovers(c: StrataClient): Promise<void> {
  let dirs: string[] = [];
  let recorded = -1;
  for (let i = 0; i < 50; i++) {
    dirs = await overlayDirs();
    recorded = await recordedSnapshots(c);
    if (dirs.length === recorded) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (dirs.length !== recorded) console.log(d.logs.split('\n').filter((l) => /failed|error|warn/.test(l)).slice(-15).join('\n'));
  expect(dirs.length, `backend snapshot directories ${dirs.join(' ')} vs ${recorded} records`).toBe(recorded);
}

/**
 * While the disk is full: no committed snapshot in the namespace. An unpack's active snapshot may still be there
 * (its removal needs a write the full disk refuses, and is retried); after freeing, expectNoSnapshots.
 */
async function expectNoCommitted(c: StrataClient): Promise<void> {
  const snaps = await listSnapshots(c);
  expect(snaps.filter((s) => s.kind !== Kind.ACTIVE)).toEqual([]);
  for (const s of snaps) expect(s.name).toMatch(/^extract-/);
}

/** Once space is back, the failed unpack's snapshot goes (within a few seconds) and nothing stays on disk. */
async function expectNoSnapshots(c: StrataClient): Promise<void> {
  let snaps = await listSnapshots(c);
  for (let i = 0; i < 50 && snaps.length > 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    snaps = await listSnapshots(c);
  }
  expect(snaps).toEqual([]);
  await expectNoSnapshotLeftovers(c);
}

const plain = { plainHttp: true, username: '', secret: '', hostsDir: '', maxConcurrent: 0 };

async function imageNames(c: StrataClient): Promise<string[]> {
  return (await c.call(c.images, c.images.list, { filters: [] })).images.map((i) => i.name);
}

describe('pulls and unpacks on a full disk', () => {
  it('a pull whose layer does not fit fails with RESOURCE_EXHAUSTED, records no image, blob or snapshot, and succeeds once space is freed', async () => {
    const c = d.client('pull-fetch');
    const img = images.fetch!;
    const layer = img.manifests[0]!.layers[0]!;
    const ref = `${reg.host}/fetch:latest`;
    await fs.fill(8 * MiB);
    try {
      expectNoSpace(await failure(pullImage(c, ref, { registry: plain })));
      expect(await imageNames(c)).toEqual([]);
      expect((await listContent(c)).map((i) => i.digest)).not.toContain(layer.descriptor.digest);
      await expectNoCommitted(c);
      expect(await ingestLeftovers()).toEqual([]);
      await expectServing(c);
    } finally {
      await fs.free();
    }
    await expectNoSnapshots(c);
    await pullImage(c, ref, { registry: plain });
    expect(await imageNames(c)).toEqual([ref]);
    expect(await ingests(c)).toEqual([]);
    const big = await readFromSnapshot(c, layer.diffID, 'big.bin');
    expect(sha256(big)).toBe(sha256(extract(layer, 'big.bin')));
  });

  it('a pull whose layer fits but whose unpack does not fails with RESOURCE_EXHAUSTED, leaves no snapshot behind, and succeeds once space is freed', async () => {
    const c = d.client('pull-unpack');
    const img = images.unpack!;
    const layer = img.manifests[0]!.layers[0]!;
    const ref = `${reg.host}/unpack:latest`;
    // Room for the blob and a few MiB more: the 20 MiB file cannot be written out.
    await fs.fill(layer.descriptor.size + 6 * MiB);
    try {
      expectNoSpace(await failure(pullImage(c, ref, { registry: plain })));
      expect(await imageNames(c)).toEqual([]);
      await expectNoCommitted(c);
      await expectServing(c);
    } finally {
      await fs.free();
    }
    await expectNoSnapshots(c);
    await pullImage(c, ref, { registry: plain });
    expect(await imageNames(c)).toEqual([ref]);
    expect(sha256(await readFromSnapshot(c, layer.diffID, 'big.bin'))).toBe(sha256(extract(layer, 'big.bin')));
    expect((await readFromSnapshot(c, layer.diffID, 'etc/small.txt')).toString()).toBe('unpack\n');
  });

  it('an unpack of a pulled image that does not fit fails with RESOURCE_EXHAUSTED, leaves no snapshot behind, and succeeds once space is freed', async () => {
    const c = d.client('unpack');
    const img = images.apply!;
    const layer = img.manifests[0]!.layers[0]!;
    const ref = `${reg.host}/apply:latest`;
    await pullImage(c, ref, { registry: plain, unpack: false });
    expect(await listSnapshots(c)).toEqual([]);
    const unpack = () => collectProgress(c.transfer.unpack({ image: ref, snapshotter: '', platforms: [] }, c.metadata()) as unknown as AsyncIterable<unknown>);
    await fs.fill(4 * MiB);
    try {
      expectNoSpace(await failure(unpack()));
      await expectNoCommitted(c);
      await expectServing(c);
    } finally {
      await fs.free();
    }
    await expectNoSnapshots(c);
    await unpack();
    expect(sha256(await readFromSnapshot(c, layer.diffID, 'big.bin'))).toBe(sha256(extract(layer, 'big.bin')));
  });
});

describe('ctr image pull (the client unpacks through the Diff service) on a full disk', () => {
  it('ctr image pull whose unpack does not fit fails with the space exhausted, commits no snapshot, and pulls the right files once space is freed', async () => {
    const ns = 'ctr-pull';
    const c = d.client(ns);
    const img = images.ctr!;
    const layer = img.manifests[0]!.layers[0]!;
    const ref = `${reg.host}/ctr:latest`;
    const pull = () => run('ctr', ['--address', d.address, '--namespace', ns, 'image', 'pull', '--plain-http', ref], { timeoutMs: 60_000 });
    await fs.fill(layer.descriptor.size + 2 * MiB);
    try {
      const r = await pull();
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/no space left on device.*resource exhausted/);
      expect(r.stderr).not.toContain(fs.path);
      // ctr removes its active snapshot itself (if the full disk let it, else it is an unreferenced active one).
      await expectNoCommitted(c);
      await expectServing(c);
    } finally {
      await fs.free();
    }
    const ok = await pull();
    expect(ok.code, ok.stderr).toBe(0);
    const committed = (await listSnapshots(c)).filter((s) => s.kind === Kind.COMMITTED).map((s) => s.name);
    expect(committed).toEqual([layer.diffID]);
    expect(sha256(await readFromSnapshot(c, layer.diffID, 'big.bin'))).toBe(sha256(extract(layer, 'big.bin')));
    expect((await readFromSnapshot(c, layer.diffID, 'etc/small.txt')).toString()).toBe('ctr\n');
  });
});

describe('a btrfs snapshotter on its own small file system (the content store elsewhere)', () => {
  it('a pull unpacking into a full btrfs fails with RESOURCE_EXHAUSTED, leaves no snapshot behind, and unpacks the right files once space is freed', async () => {
    const bfs = await makeLoopFs('btrfs', 256 * MiB);
    let bd: StartedDaemon | undefined;
    try {
      bd = await startDaemon({ config: `[plugins."io.containerd.snapshotter.v1.btrfs"]\nroot_path = ${JSON.stringify(join(bfs.path, 'sn'))}\n` });
      const c = bd.client('btrfs');
      const img = images.unpack!;
      const layer = img.manifests[0]!.layers[0]!;
      const ref = `${reg.host}/unpack:latest`;
      await bfs.fill(4 * MiB);
      try {
        const err = await failure(pullImage(c, ref, { registry: plain, snapshotter: 'btrfs' }));
        expect(err.kind, err.message).toBe('resource exhausted');
        expect(err.message).toMatch(/no space left on device/i);
        expect(err.message).not.toContain(bfs.path);
        // The daemon lives on (it died of SIGBUS here before: SQLite's mapped WAL index on a full copy-on-write fs).
        await new Promise((r) => setTimeout(r, 500));
        expect([bd.proc.exitCode, bd.proc.signalCode]).toEqual([null, null]);
        expect((await listSnapshots(c, 'btrfs')).filter((s) => s.kind !== Kind.ACTIVE)).toEqual([]);
        await c.call(c.version, c.version.version, {});
      } finally {
        await bfs.free();
      }
      let snaps = await listSnapshots(c, 'btrfs');
      for (let i = 0; i < 50 && snaps.length > 0; i++) {
        await new Promise((r) => setTimeout(r, 100));
        snaps = await listSnapshots(c, 'btrfs');
      }
      expect(snaps).toEqual([]);
      await pullImage(c, ref, { registry: plain, snapshotter: 'btrfs' });
      expect(sha256(await readFromSnapshot(c, layer.diffID, 'big.bin', 'btrfs'))).toBe(sha256(extract(layer, 'big.bin')));
      await bd.stop();
      expect((await fsckRoot(bd)).violations).toEqual([]);
    } finally {
      await bd?.stop();
      await bfs.cleanup();
    }
  });
});

/** A file's bytes from a built layer's tar (the test images hold regular files only). */
function extract(layer: { tar: Buffer }, name: string): Buffer {
  const tar = layer.tar;
  for (let off = 0; off + 512 <= tar.length; ) {
    const header = tar.subarray(off, off + 512);
    if (header.every((b) => b === 0)) break;
    const entry = header.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
    const size = parseInt(header.subarray(124, 136).toString('utf8').replace(/\0.*$/s, '').trim() || '0', 8);
    if (entry === name || entry === `./${name}`) return tar.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  throw new Error(`${name} not in the layer`);
}

/** n labels of about 4000 bytes each (containerd's limit is 4096 per key and value). */
function bigLabels(tag: string, n: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < n; i++) out[`test/${tag}/${i}`] = randomBytes(1990).toString('hex');
  return out;
}

/** PRAGMA integrity_check and foreign_key_check of a SQLite file, read beside the running daemon. */
function checkDatabase(path: string): { integrity: string; foreignKeys: unknown[] } {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return {
      integrity: db.pragma('integrity_check', { simple: true }) as string,
      foreignKeys: db.pragma('foreign_key_check') as unknown[],
    };
  } finally {
    db.close();
  }
}

const metaDb = () => join(d.root, 'io.containerd.metadata.v1.sqlite', 'meta.db');
const overlayDb = () => join(d.root, 'io.containerd.snapshotter.v1.overlayfs', 'metadata.db');

/**
 * Fills the disk completely, then creates leases with large labels until the metadata database cannot take
 * another (its WAL and file can no longer grow): returns the ids created and the errors of the refused ones.
 */
async function exhaustMetadata(c: StrataClient, tag: string): Promise<{ created: string[]; refused: StrataError[] }> {
  await fs.fill(0);
  const created: string[] = [];
  const refused: StrataError[] = [];
  for (let i = 0; i < 200 && refused.length < 3; i++) {
    const id = `${tag}-${i}`;
    try {
      await c.call(c.leases, c.leases.create, { id, labels: bigLabels(id, 60) });
      created.push(id);
    } catch (err) {
      refused.push(err as StrataError);
    }
  }
  return { created, refused };
}

const toMounts = (ms: { type: string; source: string; options: string[] }[]) => ms.map((m) => ({ type: m.type, source: m.source, options: m.options }));

describe('the metadata database and snapshot commits on a full disk', () => {
  it('mutating calls a full disk refuses fail with RESOURCE_EXHAUSTED, record nothing, leave the databases intact, and succeed once space is freed', async () => {
    const c = d.client('meta');
    try {
      const { created, refused } = await exhaustMetadata(c, 'lease');
      expect(refused.length).toBeGreaterThan(0);
      for (const err of refused) expectNoSpace(err);
      // Exactly the leases that were answered exist, each whole.
      const { leases } = await c.call(c.leases, c.leases.list, { filters: [] });
      expect(leases.map((l) => l.id).sort()).toEqual([...created].sort());
      for (const l of leases) expect(Object.keys(l.labels)).toHaveLength(60);
      expect(checkDatabase(metaDb())).toEqual({ integrity: 'ok', foreignKeys: [] });
      expect(checkDatabase(overlayDb())).toEqual({ integrity: 'ok', foreignKeys: [] });
      await expectServing(c);
    } finally {
      await fs.free();
    }
    const after = bigLabels('after', 60);
    await c.call(c.leases, c.leases.create, { id: 'after', labels: after });
    const { leases } = await c.call(c.leases, c.leases.list, { filters: ['id==after'] });
    expect(leases[0]?.labels).toEqual(after);
    for (const l of (await c.call(c.leases, c.leases.list, { filters: [] })).leases) await c.call(c.leases, c.leases.delete, { id: l.id, sync: false });
    expect(checkDatabase(metaDb())).toEqual({ integrity: 'ok', foreignKeys: [] });
  });

  it('a native snapshot prepare whose copy of the parent does not fit fails with RESOURCE_EXHAUSTED, leaves no partial copy, and prepares the parent\'s files once space is freed', async () => {
    const c = d.client('native');
    const sn = 'native';
    const nativeDirs = () => readdir(join(d.root, 'io.containerd.snapshotter.v1.native', 'snapshots'));
    const { mounts } = await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: sn, key: 'base-work', parent: '', labels: {} });
    const data = randomBytes(12 * MiB);
    await withTempMount(toMounts(mounts), (root) => writeFile(join(root, 'data.bin'), data));
    await c.call(c.snapshots, c.snapshots.commit, { snapshotter: sn, name: 'base', key: 'base-work', labels: {}, parent: '' });
    const before = await nativeDirs();
    await fs.fill(4 * MiB);
    try {
      const err = await failure(c.call(c.snapshots, c.snapshots.prepare, { snapshotter: sn, key: 'child', parent: 'base', labels: {} }));
      expectNoSpace(err);
      expect(err.message).toMatch(/^copying of parent failed: /);
      const snaps = await listSnapshots(c, sn);
      expect(snaps.map((s) => s.name)).toEqual(['base']);
      expect(await nativeDirs()).toEqual(before);
      await expectServing(c);
    } finally {
      await fs.free();
    }
    const child = await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: sn, key: 'child', parent: 'base', labels: {} });
    expect(sha256(await withTempMount(toMounts(child.mounts), (root) => readFile(join(root, 'data.bin'))))).toBe(sha256(data));
    await c.call(c.snapshots, c.snapshots.remove, { snapshotter: sn, key: 'child' });
    await c.call(c.snapshots, c.snapshots.remove, { snapshotter: sn, key: 'base' });
  });

  it('a content commit whose record a full disk refuses fails with RESOURCE_EXHAUSTED, records no blob, and commits the right bytes once space is freed', async () => {
    const c = d.client('content-commit');
    const data = randomBytes(4 * MiB);
    const digest = sha256(data);
    // Every byte is written while there is room; the disk fills (metadata included) before the COMMIT is sent.
    async function* thenFill(): AsyncGenerator<Buffer> {
      yield* chunks(data);
      const { refused } = await exhaustMetadata(c, 'content-filler');
      expect(refused.length).toBeGreaterThan(0);
    }
    // The commit carries more label bytes than the leases the full disk refused: a failed transaction can leave
    // the WAL file grown by part of its frames, which a smaller commit would then fit in, so a bare record
    // could still be written (it was, once in 30 runs).
    const labels = bigLabels('commit-me', 80);
    try {
      expectNoSpace(await failure(c.writeBlob(thenFill(), { ref: 'commit-me', expected: digest, total: data.length, labels })));
      expect((await listContent(c)).map((i) => i.digest)).not.toContain(digest);
      await expectServing(c);
    } finally {
      await fs.free();
    }
    expect((await c.writeBlob(chunks(data), { ref: 'commit-me', expected: digest, total: data.length })).digest).toBe(digest);
    expect((await listContent(c)).map((i) => i.digest)).toContain(digest);
    expect(sha256(await readAll(c, digest))).toBe(digest);
    expect(await ingests(c)).toEqual([]);
    for (const l of (await c.call(c.leases, c.leases.list, { filters: [] })).leases) await c.call(c.leases, c.leases.delete, { id: l.id, sync: false });
  });

  it('a snapshot commit whose records a full disk refuses fails with RESOURCE_EXHAUSTED, keeps the snapshot active, and commits with its files once space is freed', async () => {
    const c = d.client('commit');
    const sn = 'overlayfs';
    const { mounts } = await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: sn, key: 'work', parent: '', labels: {} });
    const data = randomBytes(2 * MiB);
    await withTempMount(toMounts(mounts), (root) => writeFile(join(root, 'data.bin'), data));
    const labels = bigLabels('commit', 60);
    // Grow the overlay backend's own WAL (prepare and remove snapshots with large inherited labels) so it still
    // has room when the metadata database has none: the backend commit then succeeds and the records cannot be
    // written, the order a commit must survive (before the fix, the active record named a backend snapshot that
    // was gone and a second Commit answered NOT_FOUND).
    for (let i = 0; i < 40; i++) {
      const key = `churn-${i}`;
      await c.call(c.snapshots, c.snapshots.prepare, { snapshotter: sn, key, parent: '', labels: Object.fromEntries(Object.entries(bigLabels(key, 20)).map(([k, v]) => [`containerd.io/snapshot/${k}`, v])) });
      await c.call(c.snapshots, c.snapshots.remove, { snapshotter: sn, key });
    }
    await expectNoSnapshotLeftovers(c);
    try {
      await exhaustMetadata(c, 'commit-filler');
      expectNoSpace(await failure(c.call(c.snapshots, c.snapshots.commit, { snapshotter: sn, name: 'done', key: 'work', labels, parent: '' })));
      // Still recorded as the active snapshot it was; no committed one under the name.
      const snaps = await listSnapshots(c);
      expect(snaps.map((s) => [s.name, s.kind])).toEqual([['work', Kind.ACTIVE]]);
      // When the backend committed it before the records were refused (the usual order here), Mounts says what to
      // do; when the backend's own write was refused first, the snapshot is untouched and mounts as before.
      const again = await c.call(c.snapshots, c.snapshots.mounts, { snapshotter: sn, key: 'work' }).then(
        (r) => r.mounts,
        (e: Error) => e.message,
      );
      if (typeof again === 'string') expect(again).toBe('snapshot work is committed but its record waits for disk space: commit it again or remove it: failed precondition');
      else expect(again).toEqual(mounts);
      expect(checkDatabase(metaDb())).toEqual({ integrity: 'ok', foreignKeys: [] });
      expect(checkDatabase(overlayDb())).toEqual({ integrity: 'ok', foreignKeys: [] });
      await expectServing(c);
    } finally {
      await fs.free();
    }
    await c.call(c.snapshots, c.snapshots.commit, { snapshotter: sn, name: 'done', key: 'work', labels, parent: '' });
    const info = await c.call(c.snapshots, c.snapshots.stat, { snapshotter: sn, key: 'done' });
    expect(info.info?.kind).toBe(Kind.COMMITTED);
    expect(info.info?.labels).toEqual(labels);
    expect(sha256(await readFromSnapshot(c, 'done', 'data.bin'))).toBe(sha256(data));
    for (const l of (await c.call(c.leases, c.leases.list, { filters: [] })).leases) await c.call(c.leases, c.leases.delete, { id: l.id, sync: false });
    await expectNoSnapshotLeftovers(c);
  });
});
