/**
 * The walking differ against real parts: the overlay snapshotter on a temp root, real overlay mounts, the
 * namespaced content store over the local store.
 *
 * Apply: gzip, zstd and plain layers through each target (a bind mount's source; an overlay upperdir with
 * whiteouts as 0/0 devices and opaque xattrs; anything else mounted on a temporary directory), errors, and
 * no mount left behind. Compare: a tree changed through a real overlay mount turned into a layer, both by the
 * overlay fast path and by the double walk, each applied onto a fresh snapshot of the same parent to give the
 * same tree; containerd's sameFile rules (mtime, whole-second mtimes, capabilities); the tar format itself.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, link, lstat, lutimes, mkdir, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { compress as zstdCompress } from 'zstd-napi';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ContentStore } from '../../src/content/types.js';
import { applyTarget, WalkingDiffer } from '../../src/diff/walking.js';
import { overlayUpperOf, withDiffTar } from '../../src/diff/compare.js';
import { walkChanges, type Change } from '../../src/diff/changes.js';
import { encodeHeader } from '../../src/diff/tar.js';
import { changesTar } from '../../src/diff/change-tar.js';
import { LABEL_UNCOMPRESSED } from '../../src/core/labels.js';
import type { MetadataStore } from '../../src/metadata/index.js';
import { withTempMount } from '../../src/mount/index.js';
import { openOverlaySnapshotter } from '../../src/snapshots/overlay/index.js';
import type { Snapshotter } from '../../src/snapshots/types.js';
import type { Mount } from '../../src/core/mount.js';
import { kindOf } from '../helpers/errors.js';
import { pseudoRandom } from '../helpers/data.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { contentStore, getxattr, listTar, mountsContaining, putBlob, readBlob, setxattr, snapshotTree, type Node } from './helpers.js';
import { makeTar } from '../helpers/tar.js';

const run = promisify(execFile);
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
const ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd';
const PLAIN = 'application/vnd.oci.image.layer.v1.tar';

let tmp: TempDir;
let content: ContentStore;
let md: MetadataStore;
let sn: Snapshotter;
const differ = new WalkingDiffer();

beforeAll(async () => {
  tmp = await tempDir('strata-walking-');
  ({ content, md } = await contentStore(tmp.path));
  sn = await openOverlaySnapshotter(join(tmp.path, 'overlay'));
});
afterAll(async () => {
  await sn?.close();
  md?.close();
  await tmp?.cleanup();
});
afterEach(async () => {
  // Nothing the differ mounted may outlive a call.
  expect(await mountsContaining('strata-diff-')).toEqual([]);
});

let n = 0;
const key = (what: string) => `${what}-${++n}`;
const upperdirOf = (mounts: Mount[]) => mounts[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);

async function layerBlob(entries: Parameters<typeof makeTar>[0], compression: 'gzip' | 'zstd' | 'none') {
  const tar = await makeTar(entries);
  const blob = compression === 'gzip' ? gzipSync(tar) : compression === 'zstd' ? zstdCompress(tar) : tar;
  const mediaType = compression === 'gzip' ? GZIP : compression === 'zstd' ? ZSTD : PLAIN;
  return { tar, desc: { mediaType, digest: await putBlob(content, blob), size: blob.length } };
}

const baseEntries = [
  { name: 'etc/', type: 'directory' as const, mode: 0o755 },
  { name: 'etc/hosts', body: 'hosts\n', mode: 0o644 },
  { name: 'etc/gone', body: 'gone' },
  { name: 'opq/', type: 'directory' as const, mode: 0o755 },
  { name: 'opq/old', body: 'old' },
  { name: 'opq/sub/', type: 'directory' as const, mode: 0o700 },
  { name: 'opq/sub/old2', body: 'old2' },
];
const topEntries = [
  { name: 'etc/', type: 'directory' as const, mode: 0o755 },
  { name: 'etc/.wh.gone', body: '' },
  { name: 'etc/new', body: 'new', mode: 0o600, uid: 123, gid: 456 },
  { name: 'opq/', type: 'directory' as const, mode: 0o711 },
  { name: 'opq/.wh..wh..opq', body: '' },
  { name: 'opq/fresh', body: 'fresh' },
];

describe('apply', () => {
  it('chooses containerd targets: overlay upperdir, writable bind source, else a temporary mount', () => {
    const ov: Mount = { type: 'overlay', source: 'overlay', options: ['index=off', 'userxattr', 'workdir=/w', 'upperdir=/u', 'lowerdir=/l'] };
    expect(applyTarget([ov])).toEqual({ kind: 'dir', dir: '/u', whiteouts: 'overlay', userxattr: true, parents: ['/l'] });
    expect(applyTarget([{ ...ov, options: ['upperdir=/u', 'lowerdir=/l2:/l1', 'workdir=/w'] }])).toMatchObject({ userxattr: false, parents: ['/l2', '/l1'] });
    expect(applyTarget([{ type: 'bind', source: '/s', options: ['rw', 'rbind'] }])).toEqual({ kind: 'dir', dir: '/s', whiteouts: 'delete', userxattr: false, parents: [] });
    expect(applyTarget([{ type: 'none', source: '/s', options: ['bind'] }])).toMatchObject({ kind: 'dir', dir: '/s' });
    expect(applyTarget([{ type: 'bind', source: '/s', options: ['ro', 'rbind'] }]).kind).toBe('mount');
    expect(applyTarget([{ type: 'overlay', source: 'overlay', options: ['lowerdir=/a:/b'] }]).kind).toBe('mount');
    expect(applyTarget([ov, ov]).kind).toBe('mount');
    expect(applyTarget([{ type: 'btrfs', source: '/dev/x', options: ['subvol=y'] }]).kind).toBe('mount');
  });

  it('applies a gzip layer into a bind mount (first layer), a zstd layer into an overlay upperdir with overlay whiteouts', async () => {
    const k1 = key('base');
    const m1 = await sn.prepare(k1, '');
    expect(m1[0]!.type).toBe('bind');
    const base = await layerBlob(baseEntries, 'gzip');
    const applied = await differ.apply(base.desc, m1, content);
    expect(applied).toEqual({ mediaType: PLAIN, digest: sha(base.tar), size: base.tar.length });
    expect(await readFile(join(m1[0]!.source, 'etc/hosts'), 'utf8')).toBe('hosts\n');
    const c1 = key('base-c');
    await sn.commit(c1, k1);

    const k2 = key('top');
    const m2 = await sn.prepare(k2, c1);
    expect(m2[0]!.type).toBe('overlay');
    const top = await layerBlob(topEntries, 'zstd');
    const res = await differ.apply(top.desc, m2, content);
    expect(res.digest).toBe(sha(top.tar));
    const upper = upperdirOf(m2);
    const wh = await lstat(join(upper, 'etc/gone'));
    expect(wh.isCharacterDevice()).toBe(true);
    expect(wh.rdev).toBe(0);
    expect((await getxattr(join(upper, 'opq'), 'trusted.overlay.opaque'))?.toString()).toBe('y');
    expect(existsSync(join(upper, 'opq/.wh..wh..opq'))).toBe(false);
    const st = await stat(join(upper, 'etc/new'));
    expect([st.mode & 0o7777, st.uid, st.gid]).toEqual([0o600, 123, 456]);

    const merged = await withTempMount(m2, (root) => snapshotTree(root));
    expect(merged.map((e) => e.path)).toEqual(['etc', 'etc/hosts', 'etc/new', 'opq', 'opq/fresh']);
    await sn.remove(k2);
  });

  it('gives an implied parent directory in an upperdir the attributes it has in the lower layers', async () => {
    const k1 = key('pbase');
    const m1 = await sn.prepare(k1, '');
    await mkdir(join(m1[0]!.source, 'srv/data'), { recursive: true });
    await chmod(join(m1[0]!.source, 'srv'), 0o750);
    await chown(join(m1[0]!.source, 'srv'), 42, 43);
    await chmod(join(m1[0]!.source, 'srv/data'), 0o700);
    const c1 = key('pbase-c');
    await sn.commit(c1, k1);
    const k2 = key('ptop');
    const m2 = await sn.prepare(k2, c1);
    // No entries for srv/ and srv/data/: they are implied by the file.
    await differ.apply((await layerBlob([{ name: 'srv/data/f', body: 'f' }], 'gzip')).desc, m2, content);
    const srv = await stat(join(upperdirOf(m2), 'srv'));
    expect([srv.mode & 0o7777, srv.uid, srv.gid]).toEqual([0o750, 42, 43]);
    expect((await stat(join(upperdirOf(m2), 'srv/data'))).mode & 0o7777).toBe(0o700);
    await sn.remove(k2);
  });

  it('mounts anything else on a temporary directory, applies with deleting whiteouts, and unmounts', async () => {
    const k1 = key('gbase');
    const m1 = await sn.prepare(k1, '');
    await differ.apply((await layerBlob(baseEntries, 'none')).desc, m1, content);
    const c1 = key('gbase-c');
    await sn.commit(c1, k1);
    const k2 = key('gtop');
    const m2 = await sn.prepare(k2, c1);
    // Two mounts (a tmpfs under the overlay) take no fast path: they are stacked on a temporary directory,
    // the layer goes through the overlay, and the kernel records the deletions in the upperdir.
    const stacked: Mount[] = [{ type: 'tmpfs', source: 'tmpfs', options: ['size=1m'] }, m2[0]!];
    expect(applyTarget(stacked).kind).toBe('mount');
    const top = await layerBlob(topEntries, 'none');
    expect((await differ.apply(top.desc, stacked, content)).digest).toBe(sha(top.tar));
    const upper = upperdirOf(m2);
    expect((await lstat(join(upper, 'etc/gone'))).isCharacterDevice()).toBe(true);
    expect(await readFile(join(upper, 'etc/new'), 'utf8')).toBe('new');
    const merged = await withTempMount(m2, (root) => snapshotTree(root));
    expect(merged.map((e) => e.path)).toEqual(['etc', 'etc/hosts', 'etc/new', 'opq', 'opq/fresh']);
    await sn.remove(k2);
  });

  it("sniffs the compression of Docker's plain rootfs type and reports progress", async () => {
    const tar = await makeTar([{ name: 'f', body: 'x'.repeat(50_000) }]);
    const digest = await putBlob(content, gzipSync(tar));
    const k = key('docker');
    const m = await sn.prepare(k, '');
    const seen: number[] = [];
    const res = await differ.apply(
      { mediaType: 'application/vnd.docker.image.rootfs.diff.tar', digest, size: 0 },
      m,
      content,
      { onProgress: (b) => seen.push(b) },
    );
    expect(res).toEqual({ mediaType: PLAIN, digest: sha(tar), size: tar.length });
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.at(-1)).toBe(tar.length);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
    await sn.remove(k);
  });

  it('rejects unknown media types, missing blobs, corrupt streams and hostile layers', async () => {
    const k = key('err');
    const m = await sn.prepare(k, '');
    const good = await layerBlob([{ name: 'f', body: 'f' }], 'gzip');
    expect(await kindOf(differ.apply({ ...good.desc, mediaType: 'application/vnd.oci.image.layer.v1.tar+encrypted' }, m, content))).toBe('invalid argument');
    expect(await kindOf(differ.apply({ ...good.desc, digest: sha(Buffer.from('nope')) }, m, content))).toBe('not found');
    const garbage = await putBlob(content, randomBytes(4096));
    expect(await kindOf(differ.apply({ mediaType: GZIP, digest: garbage, size: 4096 }, m, content))).toBe('invalid argument');
    expect(await kindOf(differ.apply({ mediaType: ZSTD, digest: garbage, size: 4096 }, m, content))).toBe('invalid argument');
    const truncated = await putBlob(content, gzipSync(await makeTar([{ name: 'big', body: randomBytes(100_000) }])).subarray(0, 2000));
    expect(await kindOf(differ.apply({ mediaType: GZIP, digest: truncated, size: 2000 }, m, content))).toBe('invalid argument');

    const tag = randomBytes(4).toString('hex');
    // A hardlink to a host file (`../` names are cleaned to stay inside, as containerd does, so not refused).
    const hostile = await layerBlob([{ name: `escape-${tag}`, type: 'link', linkname: '/etc/passwd' }], 'gzip');
    expect(await kindOf(differ.apply(hostile.desc, m, content))).toBe('invalid argument');
    // Through the temporary-mount path too, and the mount is gone afterwards (checked after each test).
    const stacked: Mount[] = [{ type: 'bind', source: m[0]!.source, options: ['rbind', 'rw'] }, { type: 'tmpfs', source: 'tmpfs', options: [] }];
    expect(await kindOf(differ.apply(hostile.desc, stacked, content))).toBe('invalid argument');
    expect(existsSync(join(tmp.path, `escape-${tag}`))).toBe(false);
    expect(existsSync(`/tmp/escape-${tag}`)).toBe(false);
    await sn.remove(k);
  });
});

/* ------------------------------------------------------------------------------------------------------------
 * Compare.
 * ---------------------------------------------------------------------------------------------------------- */

const T0 = new Date(1_650_000_000_000);

/** The parent tree, written straight into a first (bind-mounted) snapshot. */
async function populateBase(root: string): Promise<void> {
  const file = async (p: string, body: string | Buffer, mode = 0o644) => {
    await mkdir(join(root, p, '..'), { recursive: true });
    await writeFile(join(root, p), body);
    await chmod(join(root, p), mode);
  };
  await file('etc/hosts', 'hosts\n');
  await file('etc/gone', 'gone');
  await file('etc/touched', 'same');
  await file('etc/copyup', 'same', 0o640);
  await file('opq/a', 'a');
  await file('opq/sub/c', 'c');
  await file('dir2file/x', 'x');
  await file('file2dir', 'f');
  await file('deldir/sub/f', 'f');
  await file('links/a', 'hl');
  await link(join(root, 'links/a'), join(root, 'links/b'));
  await mkdir(join(root, 'usr/lib'), { recursive: true });
  await file('usr/lib/libc.so', 'libc');
  await symlink('usr/lib', join(root, 'lib'));
  await file('big', Buffer.concat([...pseudoRandom(3 << 20, 1 << 20, 7)]));
  await mkdir(join(root, 'moddir'), { mode: 0o755 });
  await file('moddir/keep', 'keep');
  await file('owned', 'owned');
  await chown(join(root, 'owned'), 1000, 1000);
  await file('caps', 'caps binary', 0o755);
  const all = await snapshotTree(root);
  for (const e of all) if (e.type !== 'symlink') await utimes(join(root, e.path), T0, T0);
}

/** The changes, made through a mounted overlay as a container would. */
async function change(root: string): Promise<void> {
  await writeFile(join(root, 'etc/hosts'), 'hosts changed\n');
  await writeFile(join(root, 'etc/new'), 'new', { mode: 0o640 });
  await chown(join(root, 'etc/new'), 123, 456);
  await rm(join(root, 'etc/gone'));
  await utimes(join(root, 'etc/touched'), new Date(1_700_000_000_123), new Date(1_700_000_000_123));
  await chmod(join(root, 'etc/copyup'), 0o640); // a copy-up, nothing else
  await rm(join(root, 'opq'), { recursive: true });
  await mkdir(join(root, 'opq'), { mode: 0o711 });
  await writeFile(join(root, 'opq/new'), 'new');
  await rm(join(root, 'dir2file'), { recursive: true });
  await writeFile(join(root, 'dir2file'), 'now a file');
  await rm(join(root, 'file2dir'));
  await mkdir(join(root, 'file2dir'));
  await writeFile(join(root, 'file2dir/inner'), 'inner');
  await rm(join(root, 'deldir'), { recursive: true });
  await mkdir(join(root, 'new'));
  await writeFile(join(root, 'new/h1'), 'h');
  await link(join(root, 'new/h1'), join(root, 'new/h2'));
  await link(join(root, 'links/a'), join(root, 'new/la'));
  await symlink('../etc/hosts', join(root, 'new/sl'));
  await run('mknod', [join(root, 'new/fifo'), 'p']);
  await run('mknod', ['-m', '0666', join(root, 'new/null'), 'c', '1', '3']);
  const long = `new/${'d'.repeat(90)}/${'f'.repeat(120)}`;
  await mkdir(join(root, long, '..'), { recursive: true });
  await writeFile(join(root, long), 'long');
  await writeFile(join(root, 'new/ünï'), 'utf8 name');
  await chmod(join(root, 'moddir'), 0o700);
  await chown(join(root, 'owned'), 2000, 3000);
  await writeFile(join(root, 'new/big2'), Buffer.concat([...pseudoRandom(2 << 20, 1 << 20, 9)]));
  // cap_net_bind_service=ep (VFS_CAP_REVISION_2)
  await setxattr(join(root, 'caps'), 'security.capability', Buffer.from('0100000200040000000000000000000000000000', 'hex'));
}

describe('compare', () => {
  let parent: string;
  let expected: Node[];
  let work: string;
  let workMounts: Mount[];

  beforeAll(async () => {
    const k = key('cbase');
    const m = await sn.prepare(k, '');
    await populateBase(m[0]!.source);
    parent = key('cparent');
    await sn.commit(parent, k);
    work = key('cwork');
    workMounts = await sn.prepare(work, parent);
    expected = await withTempMount(workMounts, async (root) => {
      await change(root);
      return snapshotTree(root, { dirMtimes: true });
    });
  });

  /** Applies a layer onto a fresh child of the parent and returns the merged tree. */
  async function applyFresh(desc: { mediaType: string; digest: string; size: number }): Promise<Node[]> {
    const k = key('fresh');
    const m = await sn.prepare(k, parent);
    await differ.apply(desc, m, content);
    const tree = await withTempMount(m, (root) => snapshotTree(root, { dirMtimes: true }));
    await sn.remove(k);
    return tree;
  }

  it('takes the overlay fast path for an active overlay over exactly the lower layers', async () => {
    const v = key('view');
    const lower = await sn.view(v, parent);
    expect(await overlayUpperOf(lower, workMounts)).toEqual({ upperdir: upperdirOf(workMounts), userxattr: workMounts[0]!.options.includes('userxattr') });
    expect(await overlayUpperOf([], workMounts)).toBeNull();
    expect(await overlayUpperOf(lower, [{ ...workMounts[0]!, options: [...workMounts[0]!.options, 'metacopy=on'] }])).toBeNull();
    const methods: string[] = [];
    await withDiffTar(lower, workMounts, async (tar, method) => {
      methods.push(method);
      for await (const _ of tar);
    });
    await sn.remove(v);
    expect(methods).toEqual(['overlay']);
  });

  it('overlay fast path: the layer recreates the tree on a fresh snapshot of the parent', async () => {
    const v = key('view');
    const lower = await sn.view(v, parent);
    const desc = await differ.compare(lower, workMounts, content);
    await sn.remove(v);
    expect(desc.mediaType).toBe(GZIP);
    const blob = await readBlob(content, desc.digest);
    expect(sha(blob)).toBe(desc.digest);
    expect(desc.size).toBe(blob.length);
    const entries = await listTar(blob);
    const names = entries.map((e) => e.name);
    const info = await content.info(desc.digest);
    const uncompressed = (await import('node:zlib')).gunzipSync(blob);
    expect(info.labels[LABEL_UNCOMPRESSED]).toBe(sha(uncompressed));

    // What the layer holds, and what it leaves out.
    expect(names).toContain('etc/.wh.gone');
    expect(names).toContain('opq/.wh..wh..opq');
    expect(names).toContain('.wh.deldir');
    expect(names).toContain('etc/touched'); // only its mtime changed: still a change, as in containerd
    expect(names).not.toContain('etc/copyup'); // copied up, unchanged
    expect(names).not.toContain('big');
    expect(names).not.toContain('usr/lib/libc.so');
    expect(names.filter((x) => x.startsWith('deldir/'))).toEqual([]);
    expect(names.indexOf('etc/')).toBeLessThan(names.indexOf('etc/hosts'));
    expect(names.indexOf('opq/')).toBeLessThan(names.indexOf('opq/.wh..wh..opq'));
    expect(names).toEqual([...new Set(names)]);
    const byName = new Map(entries.map((e) => [e.name, e]));
    expect(byName.get('new/h2')).toMatchObject({ type: 'link', linkname: 'new/h1' });
    expect(byName.get('links/a')).toMatchObject({ type: 'link', linkname: 'new/la' });
    expect(byName.get('new/null')).toMatchObject({ type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 });
    expect(byName.get('new/sl')).toMatchObject({ type: 'symlink', linkname: '../etc/hosts' });
    expect(byName.get('owned')).toMatchObject({ uid: 2000, gid: 3000 });
    expect(byName.get('etc/new')).toMatchObject({ uid: 123, gid: 456, mode: 0o640 });
    expect(byName.get('caps')?.pax?.['SCHILY.xattr.security.capability']).toBeDefined();

    const tree = await applyFresh(desc);
    expect(tree).toEqual(expected);
    const k = key('capcheck');
    const m = await sn.prepare(k, parent);
    await differ.apply(desc, m, content);
    expect((await getxattr(join(upperdirOf(m), 'caps'), 'security.capability'))?.toString('hex')).toBe('0100000200040000000000000000000000000000');
    await sn.remove(k);
  });

  it('double walk (no fast path): the layer recreates the same tree', async () => {
    // A committed copy of the work, seen through a view: an overlay without upperdir, so no fast path.
    const snap = key('work-copy');
    const m = await sn.prepare(snap, parent);
    await withTempMount(m, (root) => change(root));
    const committed = key('work-c');
    await sn.commit(committed, snap);
    const lv = key('lview');
    const uv = key('uview');
    const lower = await sn.view(lv, parent);
    const upper = await sn.view(uv, committed);
    expect(await overlayUpperOf(lower, upper)).toBeNull();
    const methods: string[] = [];
    const entries = await withDiffTar(lower, upper, async (tar, method) => {
      methods.push(method);
      const chunks: Buffer[] = [];
      for await (const c of tar) chunks.push(c);
      return listTar(Buffer.concat(chunks));
    });
    expect(methods).toEqual(['walk']);
    const names = entries.map((e) => e.name);
    // No opaque marker here: the double walk whites out each old child instead.
    expect(names).toEqual(expect.arrayContaining(['opq/.wh.a', 'opq/.wh.sub', 'etc/.wh.gone', '.wh.deldir', 'etc/touched', 'dir2file', 'file2dir/', 'file2dir/inner']));
    expect(names).not.toContain('opq/sub/.wh.c');
    expect(names).not.toContain('etc/copyup');
    expect(names).not.toContain('big');

    const desc = await differ.compare(lower, upper, content, { mediaType: PLAIN });
    await sn.remove(lv);
    await sn.remove(uv);
    expect(desc.mediaType).toBe(PLAIN);
    // An uncompressed layer is not labelled with its diffID (its own digest), as in containerd's walking differ.
    expect((await content.info(desc.digest)).labels[LABEL_UNCOMPRESSED]).toBeUndefined();
    const tree = await applyFresh(desc);
    // Times differ from the other copy (made later), so compare without them.
    const noTimes = (t: Node[]) => t.map(({ mtime: _m, ...rest }) => rest);
    expect(noTimes(tree)).toEqual(noTimes(expected));
  });

  it('a first layer (no lower mounts) holds the whole tree', async () => {
    const k = key('first');
    const m = await sn.prepare(k, '');
    await writeFile(join(m[0]!.source, 'a'), 'a');
    await mkdir(join(m[0]!.source, 'd'));
    await writeFile(join(m[0]!.source, 'd/b'), 'b');
    const desc = await differ.compare([], m, content, { ref: 'first-layer', labels: { 'com.example': 'x' } });
    const entries = await listTar(await readBlob(content, desc.digest));
    expect(entries.map((e) => [e.name, e.type])).toEqual([
      ['a', 'file'],
      ['d/', 'directory'],
      ['d/b', 'file'],
    ]);
    expect((await content.info(desc.digest)).labels).toMatchObject({ 'com.example': 'x', [LABEL_UNCOMPRESSED]: expect.stringMatching(/^sha256:/) });
    // The same diff again: the blob exists already, which is fine.
    const again = await differ.compare([], m, content, { ref: 'first-layer' });
    expect(again).toEqual(desc);
    expect(await content.listStatuses()).toEqual([]);
    await sn.remove(k);
  });

  it('refuses media types it cannot produce, and leaves no ingest behind on failure', async () => {
    const k = key('mt');
    const m = await sn.prepare(k, '');
    expect(await kindOf(differ.compare([], m, content, { mediaType: ZSTD }))).toBe('not implemented');
    await expect(differ.compare([], [{ type: 'bind', source: join(tmp.path, 'does-not-exist'), options: ['rbind'] }], content)).rejects.toThrow(/ENOENT/);
    expect(await content.listStatuses()).toEqual([]);
    await sn.remove(k);
  });
});

describe("sameFile, as continuity's", () => {
  let lowerDir: string;
  let upperDir: string;
  beforeEach(async () => {
    lowerDir = join(tmp.path, `l-${++n}`);
    upperDir = join(tmp.path, `u-${n}`);
    await mkdir(lowerDir);
    await mkdir(upperDir);
  });
  const changed = async () => {
    const out: string[] = [];
    for await (const c of walkChanges(lowerDir, upperDir)) out.push(`${c.kind} ${c.path}`);
    return out;
  };
  const both = async (name: string, a: string, b: string, ta: Date, tb: Date) => {
    await writeFile(join(lowerDir, name), a);
    await writeFile(join(upperDir, name), b);
    await utimes(join(lowerDir, name), ta, ta);
    await utimes(join(upperDir, name), tb, tb);
  };

  it('same size and same nanosecond mtime: unchanged without reading; a different mtime: changed', async () => {
    const t = new Date(1_600_000_000_500);
    await both('same', 'aaaa', 'bbbb', t, t); // same size, same sub-second mtime: taken as unchanged
    await both('touched', 'same', 'same', t, new Date(1_600_000_001_500));
    await both('subsec', 'same', 'same', t, new Date(1_600_000_000_600));
    await both('resized', 'a', 'ab', t, t);
    expect(await changed()).toEqual(['modify resized', 'modify subsec', 'modify touched']);
  });

  it('whole-second mtimes on both sides: contents decide', async () => {
    const t = new Date(1_600_000_000_000);
    await both('eq', 'x'.repeat(200_000), 'x'.repeat(200_000), t, t);
    await both('ne', `${'x'.repeat(199_999)}a`, `${'x'.repeat(199_999)}b`, t, t);
    await symlink('a', join(lowerDir, 'sl'));
    await symlink('b', join(upperDir, 'sl'));
    await symlink('same', join(lowerDir, 'sl2'));
    await symlink('same', join(upperDir, 'sl2'));
    for (const d of [lowerDir, upperDir]) for (const l of ['sl', 'sl2']) await lutimes(join(d, l), t, t);
    expect(await changed()).toEqual(['modify ne', 'modify sl']);
  });

  it('mode, owner and capabilities are compared; directory mtimes are not', async () => {
    const t = new Date(1_600_000_000_500);
    await both('mode', 'm', 'm', t, t);
    await chmod(join(upperDir, 'mode'), 0o600);
    await both('owner', 'o', 'o', t, t);
    await chown(join(upperDir, 'owner'), 7, 7);
    await both('cap', 'c', 'c', t, t);
    await setxattr(join(upperDir, 'cap'), 'security.capability', Buffer.from('0100000200040000000000000000000000000000', 'hex'));
    await utimes(join(upperDir, 'cap'), t, t);
    await mkdir(join(lowerDir, 'd'));
    await mkdir(join(upperDir, 'd'));
    await utimes(join(lowerDir, 'd'), t, t);
    expect(await changed()).toEqual(['modify cap', 'modify mode', 'modify owner']);
  });

  it('deletions stop at the deleted directory; a directory replaced by a file hides its old children', async () => {
    await mkdir(join(lowerDir, 'gone/sub'), { recursive: true });
    await writeFile(join(lowerDir, 'gone/sub/f'), 'f');
    await mkdir(join(lowerDir, 'd2f'));
    await writeFile(join(lowerDir, 'd2f/x'), 'x');
    await writeFile(join(upperDir, 'd2f'), 'file');
    await writeFile(join(upperDir, 'added'), 'a');
    expect(await changed()).toEqual(['add added', 'modify d2f', 'delete gone']);
  });
});

describe('tar format', () => {
  it('writes PAX records for long and non-ASCII names, big ids and binary xattrs; python tarfile reads them back', async () => {
    const cap = Buffer.from([1, 0, 0, 2, 0xff, 0x80, 0, 0]);
    const longName = `${'a'.repeat(150)}/é-${'b'.repeat(20)}`;
    const blocks = Buffer.concat([
      encodeHeader({ name: longName, type: '0', mode: 0o4755, uid: 3_000_000, gid: 5, size: 3, mtime: 1_234_567_890n, pax: [['SCHILY.xattr.security.capability', cap]] }),
      Buffer.from('abc'),
      Buffer.alloc(509),
      encodeHeader({ name: 'l', type: '2', mode: 0o777, uid: 0, gid: 0, size: 0, mtime: -5n, linkname: 't'.repeat(120) }),
      Buffer.alloc(1024),
    ]);
    const file = join(tmp.path, `fmt-${++n}.tar`);
    await writeFile(file, blocks);
    const { stdout } = await run('python3', [
      '-c',
      `import tarfile,sys,json
out=[]
for m in tarfile.open(sys.argv[1], encoding='utf-8', errors='surrogateescape'):
    cap=m.pax_headers.get('SCHILY.xattr.security.capability')
    out.append([m.name, m.type.decode(), oct(m.mode), m.uid, m.gid, m.size, m.mtime, m.linkname,
      cap.encode('utf-8','surrogateescape').hex() if cap is not None else None])
print(json.dumps(out))`,
      file,
    ]);
    expect(JSON.parse(stdout)).toEqual([
      [longName, '0', '0o4755', 3_000_000, 5, 3, 1_234_567_890, '', cap.toString('hex')],
      ['l', '2', '0o777', 0, 0, 0, -5, 't'.repeat(120), null],
    ]);
    const gnu = await run('tar', ['-tvf', file, '--numeric-owner']);
    expect(gnu.stdout).toContain(longName);
  });

  it('changesTar writes parents first, once, whiteouts as empty files, and skips sockets', async () => {
    const root = join(tmp.path, `tw-${++n}`);
    await mkdir(join(root, 'a/b'), { recursive: true });
    await writeFile(join(root, 'a/b/f'), 'f');
    const st = async (p: string) => lstat(join(root, p), { bigint: true });
    async function* changes(): AsyncGenerator<Change> {
      yield { kind: 'add', path: 'a/b/f', stat: await st('a/b/f') };
      yield { kind: 'delete', path: 'a/b/g' };
      yield { kind: 'delete', path: 'top' };
    }
    const chunks: Buffer[] = [];
    for await (const c of changesTar(changes(), root)) chunks.push(c);
    const entries = await listTar(Buffer.concat(chunks));
    expect(entries.map((e) => [e.name, e.type, e.size])).toEqual([
      ['a/', 'directory', 0],
      ['a/b/', 'directory', 0],
      ['a/b/f', 'file', 1],
      ['a/b/.wh.g', 'file', 0],
      ['.wh.top', 'file', 0],
    ]);
  });
});
