/**
 * strata fsck on real stores: a store made in process (test/gc/harness.ts, stratad's layout) or by a real
 * stratad, closed, then damaged the way crashes and disk faults do. Each test asserts what fsck reports (a
 * violation or garbage), that --repair fixes it, that a second fsck is clean, and the exit statuses.
 */
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import Database from 'better-sqlite3';
import { mountAll, unmount } from '../../src/mount/index.js';
import { openStore, paths, writeBlob, startIngest, backendKeyOf, SNAPSHOTTER, type Store } from '../gc/harness.js';
import { fsckRoot, runFsck, type FsckReport } from '../helpers/fsck.js';
import { startDaemon, stopAll } from '../helpers/daemon.js';
import { sha256 } from '../helpers/data.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { makeBtrfs } from '../helpers/btrfs.js';

const dirs: TempDir[] = [];
let root: string;

beforeEach(async () => {
  const d = await tempDir('strata-fsck-');
  dirs.push(d);
  root = join(d.path, 'root');
});

afterAll(async () => {
  await stopAll();
  for (const d of dirs) {
    // Never remove through a mount a failed test may have left.
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8');
    for (const line of mounts.split('\n')) {
      const mp = line.split(' ')[4];
      if (mp?.startsWith(d.path + '/')) execFileSync('umount', ['-l', mp]);
    }
    await d.cleanup();
  }
});

interface Made {
  blob: string;
  other: string;
  imageTarget: string;
}

/** A small store: two labelled blobs, an image, a committed snapshot with an active child, a lease holding some of it. */
async function makeStore(s: Store): Promise<Made> {
  const c = s.content('ns1');
  const blob = await writeBlob(c, 'the first blob of the store', { 'containerd.io/gc.root': 'yes', app: 'one' });
  const other = await writeBlob(c, 'another blob', { app: 'two' });
  const imageTarget = await writeBlob(c, '{"manifest":true}', { [`containerd.io/gc.ref.content.l.0`]: blob });
  await s.images('ns1').create({ name: 'example.com/app:1', target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: imageTarget, size: 17 } });
  const sn = s.snapshots('ns1');
  const m = await sn.prepare('a', '', { labels: { purpose: 'base' } });
  await writeFile(join(m[0]!.source, 'file'), 'snapshot data');
  await sn.commit('base', 'a');
  s.md.leases.create('ns1', 'hold');
  await s.snapshots('ns1', 'hold').prepare('work', 'base');
  await writeBlob(s.content('ns1', 'hold'), 'held by the lease');
  return { blob, other, imageTarget };
}

async function made(): Promise<Made> {
  const s = await openStore(root);
  try {
    return await makeStore(s);
  } finally {
    await s.close();
  }
}

const kinds = (fs: { kind: string }[]) => fs.map((f) => f.kind).sort();

/** fsck, then fsck --repair, then fsck again: returns the three reports; the last must be clean. */
async function checkRepairCheck(): Promise<[FsckReport, FsckReport, FsckReport]> {
  const before = await runFsck(root, ['--json']);
  expect(before.code, before.stdout + before.stderr).toBe(1);
  const first = JSON.parse(before.stdout) as FsckReport;
  const repairRun = await runFsck(root, ['--json', '--repair']);
  expect(repairRun.code, repairRun.stdout + repairRun.stderr).toBe(0);
  const repaired = JSON.parse(repairRun.stdout) as FsckReport;
  expect(repaired.violations.every((v) => typeof v.repaired === 'string' && v.repaired.length > 0)).toBe(true);
  const after = await fsckRoot(root);
  expect(after.violations).toEqual([]);
  return [first, repaired, after];
}

describe('strata fsck', () => {
  it('finds no violation and no garbage in a store that was used and closed cleanly, and exits 0', async () => {
    await made();
    const r = await runFsck(root);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/0 violations, 0 garbage/);
    const report = await fsckRoot(root);
    expect(report.violations).toEqual([]);
    expect(report.garbage).toEqual([]);
    expect(report.checked).toMatchObject({ blobs: 4, contentRecords: 4, snapshots: 2, backendSnapshots: 2, leaseResources: 2, images: 1, mounts: 0 });
  });

  it('reports a flipped byte in a blob, moves the blob to lost+found with --repair and removes its record', async () => {
    const m = await made();
    const blobPath = join(paths(root).blobs, 'sha256', m.other.slice('sha256:'.length));
    const fh = await open(blobPath, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, 3);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, 3);
    await fh.close();

    const [first, repaired] = await checkRepairCheck();
    expect(first.violations).toHaveLength(1);
    expect(first.violations[0]).toMatchObject({ kind: 'blob-digest-mismatch', object: `blob ${m.other}` });
    expect(first.violations[0]!.detail).not.toContain(root);
    expect(first.garbage).toEqual([]);
    expect(repaired.violations[0]!.repaired).toContain('lost+found/blobs/sha256/');
    expect(existsSync(blobPath)).toBe(false);
    expect(readFileSync(join(root, 'lost+found', 'blobs', 'sha256', m.other.slice('sha256:'.length)))).toHaveLength('another blob'.length);
    const s = await openStore(root);
    try {
      await expect(s.content('ns1').info(m.other)).rejects.toThrow(/not found/);
      expect((await s.content('ns1').info(m.blob)).labels).toEqual({ 'containerd.io/gc.root': 'yes', app: 'one' });
    } finally {
      await s.close();
    }
  });

  it('reports a deleted blob file as a record without data and removes the record with --repair', async () => {
    const m = await made();
    await unlink(join(paths(root).blobs, 'sha256', m.other.slice('sha256:'.length)));
    const [first, repaired] = await checkRepairCheck();
    expect(first.violations.map((v) => [v.kind, v.object])).toEqual([['blob-missing', `content ns1/${m.other}`]]);
    expect(first.garbage).toEqual([]);
    expect(repaired.violations[0]!.repaired).toMatch(/removed the record/);
    const s = await openStore(root);
    try {
      expect((await s.content('ns1').list()).map((i) => i.digest)).not.toContain(m.other);
    } finally {
      await s.close();
    }
  });

  it('reports a deleted snapshot directory and removes that snapshot and the one above it with --repair', async () => {
    await made();
    let bkey: string;
    let s = await openStore(root);
    try {
      bkey = backendKeyOf(s, 'ns1', 'base')!;
    } finally {
      await s.close();
    }
    // The committed base's directory: the backend's id of its key names it.
    const db = new Database(join(paths(root).overlay, 'metadata.db'), { readonly: true });
    const { id } = db.prepare('SELECT id FROM snapshots WHERE key = ?').get(bkey) as { id: number };
    db.close();
    await rm(join(paths(root).snapshotDirs, String(id)), { recursive: true });

    const [first, repaired] = await checkRepairCheck();
    expect(first.violations.map((v) => [v.kind, v.object])).toEqual([['snapshot-dir-missing', `backend snapshot ${SNAPSHOTTER} ${bkey}`]]);
    expect(first.violations[0]!.detail).toMatch(/committed data directory io\.containerd\.snapshotter\.v1\.overlayfs\/snapshots\/\d+/);
    expect(first.garbage).toEqual([]);
    expect(repaired.violations[0]!.repaired).toMatch(/and the 1 below it.*ns1\/base.*ns1\/work|and the 1 below it.*ns1\/work.*ns1\/base/);
    // The child's directory and both layer links are data without a record now: garbage for the collector.
    const leftover = ['snapshot-dir-orphan', 'snapshot-link-orphan', 'snapshot-link-orphan'];
    expect(kinds(repaired.garbage)).toEqual(leftover);
    const after = await fsckRoot(root);
    expect(kinds(after.garbage)).toEqual(leftover);
    s = await openStore(root);
    try {
      await expect(s.snapshots('ns1').stat('base')).rejects.toThrow(/not found/);
      await expect(s.snapshots('ns1').stat('work')).rejects.toThrow(/not found/);
      expect((await s.md.leases.listResources('ns1', 'hold')).map((r) => r.type)).toEqual(['content']);
      // The collector finishes the job: nothing left over.
      await s.collector.collect();
    } finally {
      await s.close();
    }
    const final = await fsckRoot(root);
    expect(final.violations).toEqual([]);
    expect(final.garbage).toEqual([]);
  });

  it('finishes a Commit killed between its backend commit and its record with --repair', async () => {
    await made();
    let s = await openStore(root);
    try {
      const m = await s.snapshots('ns1', 'hold').prepare('next', 'base');
      await writeFile(join(m[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length), 'f'), 'layer two');
      // What the namespaced Commit does before its record transaction: the backend commits under a new key.
      await s.backend.commit('ns1/4242/layer-two', backendKeyOf(s, 'ns1', 'next')!);
    } finally {
      await s.close();
    }
    const [first, repaired] = await checkRepairCheck();
    expect(first.violations.map((v) => [v.kind, v.object])).toEqual([['snapshot-commit-interrupted', `snapshot ${SNAPSHOTTER} ns1/next`]]);
    expect(first.garbage).toEqual([]);
    expect(repaired.violations[0]!.repaired).toBe('finished the commit: the record is now the committed snapshot layer-two');
    s = await openStore(root);
    try {
      expect(await s.snapshots('ns1').stat('layer-two')).toMatchObject({ kind: 'committed', parent: 'base' });
      await expect(s.snapshots('ns1').stat('next')).rejects.toThrow(/not found/);
      expect((await s.md.leases.listResources('ns1', 'hold')).filter((r) => r.type.startsWith('snapshots/')).map((r) => r.id).sort()).toEqual(['layer-two', 'work']);
      // The committed layer is usable: a child of it mounts and sees its file.
      const target = join(root, '..', 'look');
      await mkdir(target);
      await mountAll(await s.snapshots('ns1').view('look', 'layer-two'), target);
      try {
        expect(readFileSync(join(target, 'f'), 'utf8')).toBe('layer two');
        expect(readFileSync(join(target, 'file'), 'utf8')).toBe('snapshot data');
      } finally {
        await unmount(target);
      }
    } finally {
      await s.close();
    }
  });

  it('reports a mount left under the root and unmounts it with --repair', async () => {
    await made();
    const s = await openStore(root);
    const target = join(paths(root).overlay, 'leftover-mount');
    await mkdir(target);
    // And one of Strata's temporary mounts (src/mount withTempMount) a killed daemon left in the temp directory.
    const temp = await mkdtemp(join(tmpdir(), 'strata-mount-'));
    try {
      await mountAll(await s.snapshots('ns1').mounts('work'), target);
      await mountAll(await s.snapshots('ns1').mounts('work'), temp);
    } finally {
      await s.close();
    }
    try {
      const [first, repaired] = await checkRepairCheck();
      expect(first.violations.map((v) => [v.kind, v.object]).sort()).toEqual([
        ['mount-left-behind', 'mount io.containerd.snapshotter.v1.overlayfs/leftover-mount'],
        ['mount-left-behind', `mount <tmp>/${basename(temp)}`],
      ].sort());
      expect(first.violations[0]!.detail).toMatch(/overlay mount/);
      expect(repaired.violations.map((v) => v.repaired)).toEqual(['unmounted it (lazily)', 'unmounted it (lazily)']);
      const mountinfo = readFileSync('/proc/self/mountinfo', 'utf8');
      expect(mountinfo).not.toContain(target);
      expect(mountinfo).not.toContain(temp);
      // The mount points themselves are no store's entries: nothing else is reported.
      expect(kinds(first.garbage)).toEqual([]);
    } finally {
      if (readFileSync('/proc/self/mountinfo', 'utf8').includes(temp)) execFileSync('umount', ['-l', temp]);
      await rm(temp, { recursive: true, force: true });
    }
  });

  it('reports lease resources naming nothing and drops only those with --repair', async () => {
    await made();
    let s = await openStore(root);
    try {
      s.md.leases.addResource('ns1', 'hold', { type: 'content', id: sha256('never written') });
      s.md.leases.addResource('ns1', 'hold', { type: 'snapshots/overlayfs', id: 'no-such-snapshot' });
      s.md.leases.addResource('ns1', 'hold', { type: 'ingests', id: 'no-such-upload' });
    } finally {
      await s.close();
    }
    const [first] = await checkRepairCheck();
    expect(first.violations.map((v) => [v.kind, v.object]).sort()).toEqual(
      [
        ['lease-resource-dangling', `lease ns1/hold resource content ${sha256('never written')}`],
        ['lease-resource-dangling', 'lease ns1/hold resource ingests no-such-upload'],
        ['lease-resource-dangling', 'lease ns1/hold resource snapshots/overlayfs no-such-snapshot'],
      ].sort(),
    );
    s = await openStore(root);
    try {
      expect((await s.md.leases.listResources('ns1', 'hold')).map((r) => `${r.type} ${r.id}`).sort()).toEqual([
        `content ${sha256('held by the lease')}`,
        'snapshots/overlayfs work',
      ]);
    } finally {
      await s.close();
    }
  });

  it('reports labels corrupted in SQLite and keeps every label that still reads with --repair', async () => {
    const m = await made();
    const db = new Database(paths(root).db);
    // Truncated JSON (a torn write), and a value that is not a string.
    db.prepare("UPDATE content SET labels = ? WHERE namespace = 'ns1' AND digest = ?").run('{"containerd.io/gc.root":"yes","app":"on', m.blob);
    db.prepare("UPDATE snapshots SET labels = ? WHERE namespace = 'ns1' AND key = 'base'").run('{"purpose":7}');
    // Over containerd's size rule (key + value at most 4096 bytes), next to a label that is fine.
    db.prepare("UPDATE leases SET labels = ? WHERE namespace = 'ns1' AND id = 'hold'").run(JSON.stringify({ big: 'x'.repeat(5000), small: 'ok' }));
    db.close();

    const [first, repaired] = await checkRepairCheck();
    expect(first.violations.map((v) => [v.kind, v.object]).sort()).toEqual(
      [
        ['label-invalid', `content ns1/${m.blob}`],
        ['label-invalid', 'lease ns1/hold'],
        ['label-invalid', `snapshot ns1/${SNAPSHOTTER}/base`],
      ].sort(),
    );
    expect(repaired.violations.map((v) => v.repaired).join('\n')).toMatch(/lost\+found\/labels\//);
    const s = await openStore(root);
    try {
      expect((await s.content('ns1').info(m.blob)).labels).toEqual({ 'containerd.io/gc.root': 'yes' });
      expect((await s.snapshots('ns1').stat('base')).labels).toEqual({});
      expect(s.md.leases.get('ns1', 'hold').labels).toEqual({ small: 'ok' });
    } finally {
      await s.close();
    }
    const saved = await readdir(join(root, 'lost+found', 'labels'));
    expect(saved).toHaveLength(3);
  });

  it('reports a metadata database with damaged pages, which --repair cannot fix (exit 1), and calls no blob garbage', async () => {
    await made();
    const fh = await open(paths(root).db, 'r+');
    const { size } = await fh.stat();
    expect(size).toBeGreaterThan(8192);
    // Every page but the first (the header and the schema) overwritten: a disk fault under the file.
    await fh.write(Buffer.alloc(size - 4096, 0xa5), 0, size - 4096, 4096);
    await fh.close();
    for (const args of [['--json'], ['--json', '--repair']]) {
      const r = await runFsck(root, args);
      expect(r.code, r.stderr).toBe(1);
      const report = JSON.parse(r.stdout) as FsckReport;
      expect(report.violations.map((v) => [v.kind, v.object, v.repaired])).toEqual([
        ['sqlite-integrity', 'database io.containerd.metadata.v1.sqlite/meta.db', undefined],
      ]);
      expect(report.violations[0]!.detail).not.toContain(root);
      // Without records nothing can be called garbage; the blobs' bytes are still checked.
      expect(report.garbage).toEqual([]);
      expect(report.checked.blobs).toBe(4);
    }
  });

  it('reports what crashes leave (an orphan ingest dir, a backend snapshot without a record, an orphan blob) as garbage, not violations, and leaves it', async () => {
    await made();
    const s = await openStore(root);
    let orphanBlob: string;
    try {
      await startIngest(s.content('ns1'), 'upload-1', 'half an upload');
      await s.backend.prepare('ns9/1/unrecorded', '');
      orphanBlob = await writeBlob(s.content('ns2'), 'an orphan');
      s.md.db.prepare("DELETE FROM content WHERE namespace = 'ns2'").run();
    } finally {
      await s.close();
    }
    // An ingest directory whose record is gone (a crash between the two).
    const dir = join(paths(root).ingest, 'a'.repeat(64));
    await mkdir(dir);
    await writeFile(join(dir, 'ref'), 'ns1/77/lost');
    await writeFile(join(dir, 'data'), 'bytes');

    const r = await runFsck(root, ['--json']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as FsckReport;
    expect(report.violations).toEqual([]);
    expect(report.garbage.map((g) => [g.kind, g.object]).sort()).toEqual(
      [
        ['blob-unreferenced', `blob ${orphanBlob}`],
        ['ingest-dir-orphan', `ingest dir io.containerd.content.v1.content/ingest/${'a'.repeat(64)}`],
        ['snapshot-unrecorded', 'backend snapshot overlayfs ns9/1/unrecorded'],
      ].sort(),
    );
    const human = await runFsck(root, ['--repair']);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^garbage {3}ingest-dir-orphan: /m);
    expect(human.stdout).toMatch(/0 violations \(0 repaired\), 3 garbage \(left to the garbage collector/);
    expect(existsSync(dir)).toBe(true);
    expect((await fsckRoot(root)).garbage).toHaveLength(3);
  });

  it('finds no violation after stratad is killed, reports a blob deleted afterwards, and the restarted daemon serves the repaired store', async () => {
    const d = await startDaemon();
    const c = d.client('ns1');
    const a = await c.writeBlob([Buffer.from('blob a')], { ref: 'a' });
    const b = await c.writeBlob([Buffer.from('blob b')], { ref: 'b' });
    c.close();
    await d.kill9();
    expect((await fsckRoot(d)).violations).toEqual([]);
    await unlink(join(d.root, 'io.containerd.content.v1.content', 'blobs', 'sha256', b.digest.slice('sha256:'.length)));
    const found = await fsckRoot(d);
    expect(found.violations.map((v) => [v.kind, v.object])).toEqual([['blob-missing', `content ns1/${b.digest}`]]);
    expect((await fsckRoot(d, ['--repair'])).violations[0]!.repaired).toMatch(/removed the record/);
    expect((await fsckRoot(d)).violations).toEqual([]);
    const again = await d.restart();
    const c2 = again.client('ns1');
    try {
      const listed = await c2.collect(c2.content.list({ filters: [] }, c2.metadata()));
      expect(listed.flatMap((r) => r.info.map((i) => i.digest))).toEqual([a.digest]);
    } finally {
      c2.close();
    }
  });

  it('checks the native and btrfs snapshotters (btrfs on its own file system via root_path): a deleted directory and a deleted subvolume', async () => {
    const fs = await makeBtrfs();
    try {
      const d = await startDaemon({ config: `[plugins."io.containerd.snapshotter.v1.btrfs"]\nroot_path = ${JSON.stringify(join(fs.path, 'sn'))}\n` });
      const c = d.client('ns1');
      try {
        for (const snapshotter of ['native', 'btrfs']) {
          await c.call(c.snapshots, c.snapshots.prepare, { snapshotter, key: 'a', parent: '', labels: {} });
          await c.call(c.snapshots, c.snapshots.commit, { snapshotter, name: 'base', key: 'a', labels: {} });
          await c.call(c.snapshots, c.snapshots.prepare, { snapshotter, key: 'work', parent: 'base', labels: {} });
        }
      } finally {
        c.close();
      }
      await d.stop();
      const clean = await fsckRoot(d);
      expect(clean.violations).toEqual([]);
      expect(clean.garbage).toEqual([]);
      expect(clean.checked.backendSnapshots).toBe(4);

      const idOf = (dbPath: string, kind: string) => {
        const db = new Database(dbPath, { readonly: true });
        try {
          return (db.prepare('SELECT id FROM snapshots WHERE kind = ?').get(kind) as { id: number }).id;
        } finally {
          db.close();
        }
      };
      const native = join(d.root, 'io.containerd.snapshotter.v1.native');
      await rm(join(native, 'snapshots', String(idOf(join(native, 'metadata.db'), 'committed'))), { recursive: true });
      const btrfsRoot = join(fs.path, 'sn');
      execFileSync('btrfs', ['subvolume', 'delete', join(btrfsRoot, 'active', String(idOf(join(btrfsRoot, 'metadata.db'), 'active')))], { stdio: 'ignore' });

      const found = await runFsck(d, ['--json']);
      expect(found.code).toBe(1);
      const report = JSON.parse(found.stdout) as FsckReport;
      expect(report.violations.map((v) => [v.kind, v.object.replace(/ ns1\/\d+\//, ' ns1/N/')]).sort()).toEqual([
        ['snapshot-dir-missing', 'backend snapshot btrfs ns1/N/work'],
        ['snapshot-dir-missing', 'backend snapshot native ns1/N/base'],
      ]);
      expect(report.garbage).toEqual([]);
      // The btrfs root is not under the daemon root and its file system is not a leftover mount.
      expect(report.violations.map((v) => v.detail).join('\n')).not.toContain(fs.path);
      expect((await fsckRoot(d, ['--repair'])).violations.every((v) => v.repaired)).toBe(true);
      const after = await fsckRoot(d);
      expect(after.violations).toEqual([]);
      // native's work directory (a child of the removed base) is left to the collector.
      expect(after.garbage.map((g) => g.kind)).toEqual(['snapshot-dir-orphan']);

      const again = await d.restart();
      const c2 = again.client('ns1');
      try {
        const st = (snapshotter: string, key: string) => c2.call(c2.snapshots, c2.snapshots.stat, { snapshotter, key }).then(
          () => 'found',
          (e: Error) => e.message,
        );
        expect(await st('native', 'base')).toMatch(/not found/);
        expect(await st('native', 'work')).toMatch(/not found/);
        expect(await st('btrfs', 'base')).toBe('found');
        expect(await st('btrfs', 'work')).toMatch(/not found/);
      } finally {
        c2.close();
      }
      await again.stop();
    } finally {
      await stopAll();
      await fs.cleanup();
    }
  });

  it('refuses with exit 2 while a daemon serves the root, and checks it once the daemon stopped', async () => {
    const d = await startDaemon();
    const c = d.client('ns1');
    await c.writeBlob([Buffer.from('through the daemon')], { ref: 'r1' });
    c.close();
    const refused = await runFsck(d, ['--json']);
    expect(refused.code).toBe(2);
    expect(refused.stdout).toBe('');
    expect(refused.stderr).toMatch(/a daemon is serving this root.*stop it/);
    expect(refused.stderr).not.toContain(d.root);
    // Also when the socket is not the one the daemon serves: it holds the root's databases open.
    const byRoot = await runFsck(d.root, ['--json']);
    expect(byRoot.code).toBe(2);
    expect(byRoot.stderr).toMatch(/holds this root's databases open/);
    await d.stop();
    const report = await fsckRoot(d);
    expect(report.violations).toEqual([]);
    expect(report.checked.blobs).toBe(1);
  });

  it('exits 2 on a usage error or a root that does not exist, and 0 with --help', async () => {
    await made();
    const bad = await runFsck(root, ['--frobnicate']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/usage: strata fsck/);
    const missing = await runFsck(join(root, 'nowhere'), []);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/the root does not exist/);
    const help = await runFsck(root, ['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Exit status: 0 no violation left, 1 violations left, 2 could not run/);
  });
});
