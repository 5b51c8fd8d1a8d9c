/**
 * The snapshotter conformance suite: the behaviours of containerd's snapshotter test suite (containerd 1.6,
 * snapshots/testsuite with the continuity fstest appliers and directory comparison), written anew for vitest,
 * plus Strata's own cases: exact error kinds, opaque keys, label limits, mounts/usage, special files, cleanup,
 * concurrency, close/reopen, and a 500-layer chain.
 *
 * It takes any Snapshotter, however it is obtained: a backend opened in this process, a gRPC client of the
 * daemon, a proxy plugin. Each case gets a fresh snapshotter from the factory, works in a private scratch
 * directory (mount points, "flat" reference trees), unmounts everything it mounted, then closes the
 * snapshotter and calls the factory's cleanup.
 *
 *   snapshotterSuite('overlayfs', async () => { ...; return { sn, root, cleanup } }, { expectedFailures: [...] });
 *
 * Case names (SUITE_CASES) are what `skip` and `expectedFailures` refer to; an unknown name is an error, and an
 * expected failure that passes fails the run (so fixed bugs get their marker removed).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmod,
  chown,
  copyFile,
  lchown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ErrorKind } from '../../src/core/errdefs.js';
import { mountAll, unmount } from '../../src/mount/index.js';
import type { Info, Kind, Snapshotter } from '../../src/snapshots/types.js';
import type { Mount } from '../../src/core/mount.js';

/** What the factory hands the suite for one case. */
export interface SnapshotterUnderTest {
  sn: Snapshotter;
  /**
   * The snapshotter's root directory. The opaque-key case checks that nothing appears beside it, so make it a
   * subdirectory of a directory that belongs to this instance alone (e.g. `<mkdtemp>/root`).
   */
  root: string;
  /** Removes whatever the instance left; called after the suite closed the snapshotter. */
  cleanup(): Promise<void>;
  /**
   * Opens a new snapshotter on the same root. The suite closes the previous one first and closes the new one
   * at the end. Without it, the close/reopen case is skipped.
   */
  reopen?(): Promise<Snapshotter>;
}

export type SnapshotterFactory = () => Promise<SnapshotterUnderTest>;

export interface SuiteOptions {
  /** Cases not run at all (e.g. a behaviour the backend cannot have). */
  skip?: string[];
  /** Cases expected to fail (known bugs, each with a `// BUG:` comment where the option is given). */
  expectedFailures?: string[];
  /**
   * A committed snapshot is stored as one file (EROFS: its image), so its usage counts one inode, as
   * containerd's EROFS snapshotter counts it, instead of one per file it holds.
   */
  committedIsOneFile?: boolean;
  /**
   * Multiplies the cases' own timeouts (the long ones: 128 layers, 500-layer chain): the VM tier's guest runs
   * under QEMU's software emulation, 3-4x slower than the host, and a zfs layer there costs a dataset
   * snapshot and clone.
   */
  timeoutFactor?: number;
}

export const SUITE_CASES = [
  'basic',
  'stat active',
  'stat committed',
  'transitivity',
  'prepare and view failures',
  'commit failures',
  'empty keys',
  'opaque keys',
  'bad labels',
  'update',
  'remove',
  'walk',
  'stat in walk',
  'mounts',
  'usage',
  'layer file update',
  'remove directory in lower layer',
  'chown',
  'directory permission on commit',
  'remove intermediate snapshot',
  'deleted files in child snapshot',
  'move file from lower layer',
  'rename',
  'links',
  'special files',
  'sockets',
  'view readonly',
  'view of parent',
  'root permission',
  'cleanup keeps owned snapshots',
  'concurrent operations',
  'close twice',
  'close and reopen',
  '128 layers mount',
  '500 layer chain',
] as const;

export type SuiteCase = (typeof SUITE_CASES)[number];

/* ------------------------------------------------------------------------------------------------------------
 * File appliers and directory comparison (the parts of continuity's fstest the suite needs).
 * ---------------------------------------------------------------------------------------------------------- */

type Applier = (root: string) => Promise<void>;

const at = (root: string, name: string) => join(root, name);

function createFile(name: string, content: string | Buffer, perm: number): Applier {
  return async (root) => {
    const p = at(root, name);
    // Open with O_TRUNC like os.OpenFile: an existing file keeps its inode.
    await writeFile(p, content, { mode: perm, flag: 'w' });
    await chmod(p, perm);
  };
}

function createDir(name: string, perm: number): Applier {
  return async (root) => {
    const p = at(root, name);
    await mkdir(p, { recursive: true, mode: perm });
    await chmod(p, perm);
  };
}

const removeAll =
  (name: string): Applier =>
  (root) =>
    rm(at(root, name), { recursive: true, force: true });

const chownTo =
  (name: string, uid: number, gid: number): Applier =>
  (root) =>
    chown(at(root, name), uid, gid);

const hardLink =
  (existing: string, name: string): Applier =>
  (root) =>
    link(at(root, existing), at(root, name));

const symLink =
  (target: string, name: string): Applier =>
  (root) =>
    symlink(target, at(root, name));

const runCommand = (cmd: string, args: string[]) =>
  new Promise<void>((resolve, reject) => {
    execFile(cmd, args, (err, _out, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr || err.message}`));
      else resolve();
    });
  });

/** A fifo or a device node (mknod(1): Node has no mknod). */
function mknodAt(name: string, type: 'p' | 'c' | 'b', perm: number, major = 0, minor = 0): Applier {
  return async (root) => {
    const p = at(root, name);
    await runCommand('mknod', ['-m', perm.toString(8), p, type, ...(type === 'p' ? [] : [String(major), String(minor)])]);
    await chmod(p, perm);
  };
}

/** A unix socket file, left behind without a listener (Node unlinks a socket on close: a hard link keeps it). */
function createSocket(name: string, perm: number): Applier {
  return async (root) => {
    const p = at(root, name);
    const tmp = `${p}.listening`;
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(tmp, resolve);
    });
    try {
      await link(tmp, p);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(tmp, { force: true });
    }
    await chmod(p, perm);
  };
}

const chmodTo =
  (name: string, perm: number): Applier =>
  (root) =>
    chmod(at(root, name), perm);

/** Copies a tree keeping modes and owners (the fallback of mv(1) when rename(2) says EXDEV). */
async function copyTree(src: string, dst: string): Promise<void> {
  const st = await lstat(src);
  if (st.isDirectory()) {
    await mkdir(dst);
    for (const name of await readdir(src)) await copyTree(join(src, name), join(dst, name));
  } else if (st.isSymbolicLink()) {
    await symlink(await readlink(src), dst);
  } else if (st.isFile()) {
    await copyFile(src, dst);
  } else {
    throw new Error(`copyTree: unsupported file type at ${src}`);
  }
  await lchown(dst, st.uid, st.gid);
  if (!st.isSymbolicLink()) await chmod(dst, st.mode & 0o7777);
}

/**
 * Renames like a program would: rename(2), and for a directory that overlayfs without redirect_dir refuses
 * to move (EXDEV), the copy-and-delete that mv(1) falls back to. What is checked is the resulting tree.
 */
function renameTo(from: string, to: string): Applier {
  return async (root) => {
    try {
      await rename(at(root, from), at(root, to));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      await copyTree(at(root, from), at(root, to));
      await rm(at(root, from), { recursive: true });
    }
  };
}

function apply(...appliers: Applier[]): Applier {
  return async (root) => {
    for (const a of appliers) await a(root);
  };
}

interface Resource {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  digest?: string;
  target?: string;
  rdev?: number;
  /** All paths of a hardlinked regular file inside the tree. */
  links?: string[];
}

/** Every entry under root (root itself excluded), by path, with what continuity compares. */
async function manifest(root: string): Promise<Map<string, Resource>> {
  const out = new Map<string, Resource>();
  const inodes = new Map<string, string[]>();
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const name of (await readdir(dir)).sort()) {
      const abs = join(dir, name);
      const path = `${rel}/${name}`;
      const st = await lstat(abs);
      const r: Resource = { type: 'other', mode: st.mode, uid: st.uid, gid: st.gid };
      if (st.isFile()) {
        r.type = 'file';
        r.size = st.size;
        r.digest = createHash('sha256').update(await readFile(abs)).digest('hex');
        if (st.nlink > 1) {
          const id = `${st.dev}:${st.ino}`;
          inodes.set(id, [...(inodes.get(id) ?? []), path]);
          r.links = inodes.get(id);
        }
      } else if (st.isDirectory()) {
        r.type = 'dir';
      } else if (st.isSymbolicLink()) {
        r.type = 'symlink';
        r.target = await readlink(abs);
      } else if (st.isCharacterDevice() || st.isBlockDevice()) {
        r.type = st.isCharacterDevice() ? 'char' : 'block';
        r.rdev = st.rdev;
      } else if (st.isFIFO()) {
        r.type = 'fifo';
      } else if (st.isSocket()) {
        r.type = 'socket';
      }
      out.set(path, r);
      if (r.type === 'dir') await walk(abs, path);
    }
  };
  await walk(root, '');
  // Group hardlinks: each member lists the whole group (in-tree paths only).
  for (const paths of inodes.values()) {
    const group = [...paths].sort();
    for (const p of paths) out.get(p)!.links = group.length > 1 ? group : undefined;
  }
  return out;
}

const showResource = (r: Resource) =>
  `${r.type} mode=${r.mode.toString(8)} uid=${r.uid} gid=${r.gid}` +
  (r.size !== undefined ? ` size=${r.size} sha256=${r.digest!.slice(0, 12)}` : '') +
  (r.target !== undefined ? ` -> ${r.target}` : '') +
  (r.links ? ` links=[${r.links.join(' ')}]` : '');

/** Fails unless both trees hold the same entries with the same type, mode, owner, content and links. */
async function checkDirectoryEqual(expected: string, actual: string): Promise<void> {
  const [m1, m2] = await Promise.all([manifest(expected), manifest(actual)]);
  const lines: string[] = [];
  for (const [p, r1] of m1) {
    const r2 = m2.get(p);
    if (!r2) lines.push(`- ${p} (${showResource(r1)})`);
    else if (JSON.stringify(r1) !== JSON.stringify(r2)) lines.push(`~ ${p}: ${showResource(r1)} => ${showResource(r2)}`);
  }
  for (const [p, r2] of m2) if (!m1.has(p)) lines.push(`+ ${p} (${showResource(r2)})`);
  if (lines.length > 0) {
    throw new Error(`directory ${actual} differs from expected ${expected}:\n${lines.join('\n')}`);
  }
}

/** Mount points at or below dir, deepest first (from /proc/self/mounts, octal escapes decoded). */
async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/self/mounts', 'utf8');
  const decode = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split('\n')
    .map((line) => decode(line.split(' ')[1] ?? ''))
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

function detach(target: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('umount', ['-l', target], (err) => (err ? reject(err) : resolve()));
  });
}

/* ------------------------------------------------------------------------------------------------------------
 * Per-case context: the snapshotter, a scratch directory, and the mounts to undo.
 * ---------------------------------------------------------------------------------------------------------- */

class Case {
  sn: Snapshotter;
  private readonly mounted: string[] = [];
  private closed = false;

  constructor(
    readonly under: SnapshotterUnderTest,
    /** Scratch directory for mount points and reference trees. */
    readonly work: string,
    readonly options: SuiteOptions = {},
  ) {
    this.sn = under.sn;
  }

  dir(prefix: string): Promise<string> {
    return mkdtemp(join(this.work, `${prefix}-`));
  }

  /** Mounts what the snapshotter returned on a fresh directory, remembered for unmounting. */
  async mount(mounts: Mount[], prefix = 'mnt'): Promise<string> {
    expect(mounts.length, 'a snapshotter returns at least one mount').toBeGreaterThan(0);
    const target = await this.dir(prefix);
    await mountAll(mounts, target);
    this.mounted.push(target);
    return target;
  }

  async unmount(target: string): Promise<void> {
    await unmount(target);
    const i = this.mounted.lastIndexOf(target);
    if (i >= 0) this.mounted.splice(i, 1);
  }

  async withMount<T>(mounts: Mount[], fn: (dir: string) => Promise<T>): Promise<T> {
    const dir = await this.mount(mounts);
    try {
      return await fn(dir);
    } finally {
      await this.unmount(dir);
    }
  }

  /** Closes the current snapshotter and opens a new one on the same root. */
  async reopen(): Promise<void> {
    await this.sn.close();
    this.closed = true;
    this.sn = await this.under.reopen!();
    this.closed = false;
  }

  /** Undoes the mounts, closes the snapshotter, cleans up; the first error is rethrown. */
  async dispose(): Promise<void> {
    const errors: unknown[] = [];
    for (const target of this.mounted.reverse()) await unmount(target).catch((e: unknown) => errors.push(e));
    this.mounted.length = 0;
    if (!this.closed) await this.sn.close().catch((e: unknown) => errors.push(e));
    await this.under.cleanup().catch((e: unknown) => errors.push(e));
    // Whatever is still mounted under work (a mount that failed half-way) goes lazily; never rm through a mount.
    const left = await mountsUnder(this.work);
    for (const target of left) await detach(target).catch((e: unknown) => errors.push(e));
    if ((await mountsUnder(this.work)).length === 0) {
      await rm(this.work, { recursive: true, force: true }).catch((e: unknown) => errors.push(e));
    } else {
      errors.push(new Error(`mounts left under ${this.work}`));
    }
    if (errors.length > 0) throw errors[0];
  }
}

/* ------------------------------------------------------------------------------------------------------------
 * Assertion helpers.
 * ---------------------------------------------------------------------------------------------------------- */

/** The label containerd's suite puts on everything, so that a GC in front of the snapshotter keeps it all. */
const gcRoot = () => ({ 'containerd.io/gc.root': new Date().toISOString() });
const opts = () => ({ labels: gcRoot() });

async function expectKind(p: Promise<unknown>, kind: ErrorKind, what: string): Promise<void> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, `${what}: expected a '${kind}' error, it succeeded`).toBeDefined();
  const e = err as { kind?: unknown; message?: unknown };
  expect(e.kind, `${what}: expected '${kind}', got: ${String(e.message ?? err)}`).toBe(kind);
}

function expectInfo(info: Info, want: { kind: Kind; name: string; parent: string; labels?: Record<string, string> }) {
  expect({ kind: info.kind, name: info.name, parent: info.parent }, `info of ${want.name}`).toEqual({
    kind: want.kind,
    name: want.name,
    parent: want.parent,
  });
  if (want.labels) expect(info.labels, `labels of ${want.name}`).toEqual(want.labels);
}

/** The fields containerd's checkInfo compares. */
const infoKey = (i: Info) => ({
  kind: i.kind,
  name: i.name,
  parent: i.parent,
  labels: i.labels,
  created: i.created.getTime(),
  updated: i.updated.getTime(),
});

async function walkAll(sn: Snapshotter, filters?: string[]): Promise<Info[]> {
  const out: Info[] = [];
  await sn.walk((i) => {
    out.push(i);
  }, filters);
  return out;
}

const sortedNames = (infos: Info[]) => infos.map((i) => i.name).sort();

let uniq = 0;
const uniqueName = (prefix: string) => `${prefix}-${process.pid}-${++uniq}-${randomBytes(3).toString('hex')}`;

/* ------------------------------------------------------------------------------------------------------------
 * containerd's helpers: build a chain of snapshots from appliers and check each against a flat directory.
 * ---------------------------------------------------------------------------------------------------------- */

async function applyToMounts(c: Case, mounts: Mount[], a: Applier): Promise<void> {
  await c.withMount(mounts, a);
}

async function createSnapshot(c: Case, parent: string, a: Applier): Promise<string> {
  const name = uniqueName('layer');
  const key = `${name}-prepare`;
  const mounts = await c.sn.prepare(key, parent, opts());
  await applyToMounts(c, mounts, a);
  await c.sn.commit(name, key, opts());
  return name;
}

/** Views a committed snapshot, compares it with `expected`, removes the view. */
async function checkSnapshot(c: Case, name: string, expected: string): Promise<void> {
  const view = `${name}-view`;
  const mounts = await c.sn.view(view, name, opts());
  try {
    await c.withMount(mounts, (dir) => checkDirectoryEqual(expected, dir));
  } finally {
    await c.sn.remove(view);
  }
}

/** Commits one snapshot per applier, each on the previous, checking each against the appliers run in order. */
async function checkSnapshots(c: Case, ...appliers: Applier[]): Promise<void> {
  const flat = await c.dir('flat');
  let parent = '';
  for (const [i, a] of appliers.entries()) {
    const name = await createSnapshot(c, parent, a).catch((e: Error) => {
      throw new Error(`creating layer ${i + 1}: ${e.message}`, { cause: e });
    });
    await a(flat);
    await checkSnapshot(c, name, flat).catch((e: Error) => {
      throw new Error(`checking layer ${i + 1}: ${e.message}`, { cause: e });
    });
    parent = name;
  }
}

/** Prepares key on parent and mounts it. */
async function prepareMount(c: Case, key: string, parent: string): Promise<string> {
  const mounts = await c.sn.prepare(key, parent, opts());
  return c.mount(mounts, 'prepared');
}

/**
 * Writes one file into an active snapshot as cheaply as the mounts allow: into a bind mount's source, into an
 * overlay's upper directory, or else through a real mount.
 */
async function writeIntoActive(c: Case, mounts: Mount[], name: string, content: string): Promise<void> {
  if (mounts.length === 1) {
    const m = mounts[0]!;
    const isBind = m.type === 'bind' || m.options.includes('bind') || m.options.includes('rbind');
    if (isBind && !m.options.includes('ro')) {
      await writeFile(join(m.source, name), content);
      return;
    }
    const upper = m.type === 'overlay' ? m.options.find((o) => o.startsWith('upperdir=')) : undefined;
    if (upper && upper.slice('upperdir='.length).startsWith('/')) {
      await writeFile(join(upper.slice('upperdir='.length), name), content);
      return;
    }
  }
  await c.withMount(mounts, (dir) => writeFile(join(dir, name), content));
}

async function listing(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

/* ------------------------------------------------------------------------------------------------------------
 * The cases.
 * ---------------------------------------------------------------------------------------------------------- */

type CaseFn = (c: Case, ctx: { skip: (note?: string) => never; name: string }) => Promise<void>;

const cases: Record<SuiteCase, { fn: CaseFn; timeout?: number }> = {
  basic: {
    fn: async (c) => {
      const initial = apply(
        createFile('/foo', 'foo\n', 0o777),
        createDir('/a', 0o755),
        createDir('/a/b', 0o755),
        createDir('/a/b/c', 0o755),
      );
      const diff = apply(createFile('/bar', 'bar\n', 0o777), createFile('/foo', 'bar\n', 0o777), removeAll('/a/b'));
      // Path-like keys, as containerd's suite uses: keys are opaque names.
      const preparing = join(c.work, 'preparing');
      let dir = await prepareMount(c, preparing, '');
      await initial(dir);
      await c.unmount(dir);

      const committed = join(c.work, 'committed');
      await c.sn.commit(committed, preparing, opts());
      const si = await c.sn.stat(committed);
      expectInfo(si, { kind: 'committed', name: committed, parent: '' });
      await expectKind(c.sn.stat(preparing), 'not found', 'stat of the key after its commit');

      const next = join(c.work, 'nextlayer');
      dir = await prepareMount(c, next, committed);
      const expected = await c.dir('expected');
      await initial(expected);
      await checkDirectoryEqual(expected, dir);
      await diff(dir);
      await c.unmount(dir);

      expectInfo(await c.sn.stat(next), { kind: 'active', name: next, parent: committed });
      const nextCommitted = join(c.work, 'committed-next');
      await c.sn.commit(nextCommitted, next, opts());
      const si2 = await c.sn.stat(nextCommitted);
      expectInfo(si2, { kind: 'committed', name: nextCommitted, parent: committed });
      await expectKind(c.sn.stat(next), 'not found', 'stat of the key after its commit');

      const walked = new Map((await walkAll(c.sn)).map((i) => [i.name, i]));
      for (const want of [si, si2]) {
        expect(walked.has(want.name), `walk lists ${want.name}`).toBe(true);
        expect(infoKey(walked.get(want.name)!)).toEqual(infoKey(want));
      }

      const nextnext = join(c.work, 'nextnextlayer');
      const viewDir = await c.mount(await c.sn.view(nextnext, nextCommitted, opts()), 'view');
      await diff(expected);
      await checkDirectoryEqual(expected, viewDir);
      await c.unmount(viewDir);

      await c.sn.remove(nextnext);
      await expectKind(c.sn.remove(committed), 'failed precondition', 'remove of a committed snapshot with a child');
      await c.sn.remove(nextCommitted);
      await c.sn.remove(committed);
      expect(await walkAll(c.sn)).toEqual([]);
    },
  },

  'stat active': {
    fn: async (c) => {
      const preparing = join(c.work, 'preparing');
      const labels = gcRoot();
      const dir = await c.mount(await c.sn.prepare(preparing, '', { labels }));
      await writeFile(join(dir, 'foo'), 'foo\n', { mode: 0o777 });
      const si = await c.sn.stat(preparing);
      expectInfo(si, { kind: 'active', name: preparing, parent: '', labels });
      expect(si.created).toBeInstanceOf(Date);
      expect(si.updated.getTime()).toBe(si.created.getTime());
    },
  },

  'stat committed': {
    fn: async (c) => {
      const preparing = join(c.work, 'preparing');
      const dir = await prepareMount(c, preparing, '');
      await writeFile(join(dir, 'foo'), 'foo\n', { mode: 0o777 });
      await c.unmount(dir);
      const committed = join(c.work, 'committed');
      const labels = { ...gcRoot(), 'strata.test/committed': 'yes' };
      await c.sn.commit(committed, preparing, { labels });
      // The commit's labels replace the active snapshot's.
      expectInfo(await c.sn.stat(committed), { kind: 'committed', name: committed, parent: '', labels });
    },
  },

  transitivity: {
    fn: async (c) => {
      // A <- B <- C: each layer changes something; C's view is every change applied in order.
      const layers = [
        apply(createFile('/foo', 'foo\n', 0o777), createDir('/d', 0o755), createFile('/d/a', 'a\n', 0o644)),
        apply(createFile('/foo', 'foo bar\n', 0o777), createFile('/d/b', 'b\n', 0o644)),
        apply(createFile('/foo', 'foo bar baz\n', 0o777), removeAll('/d/a'), createFile('/c', 'c\n', 0o600)),
      ];
      const names = ['snapA', 'snapB', 'snapC'].map((n) => join(c.work, n));
      const flat = await c.dir('flat');
      let parent = '';
      for (const [i, layer] of layers.entries()) {
        const key = `${names[i]}-active`;
        const dir = await prepareMount(c, key, parent);
        await checkDirectoryEqual(flat, dir);
        await layer(dir);
        await layer(flat);
        await c.unmount(dir);
        await c.sn.commit(names[i]!, key, opts());
        parent = names[i]!;
      }
      const [a, b, cc] = await Promise.all(names.map((n) => c.sn.stat(n)));
      expect(a!.parent).toBe('');
      expect(b!.parent).toBe(names[0]);
      expect(cc!.parent).toBe(names[1]);
      expect((await c.sn.stat(b!.parent)).parent).toBe('');
      expect((await c.sn.stat((await c.sn.stat(cc!.parent)).parent)).name).toBe(names[0]);
      const top = await prepareMount(c, 'top', names[2]!);
      await checkDirectoryEqual(flat, top);
      expect(await readFile(join(top, 'foo'), 'utf8')).toBe('foo bar baz\n');
    },
  },

  'prepare and view failures': {
    fn: async (c) => {
      await c.sn.prepare('base-active', '', opts());
      await c.sn.commit('base', 'base-active', opts());

      // Same key twice, whichever of prepare and view comes first.
      await c.sn.prepare('new-layer', 'base', opts());
      await expectKind(c.sn.view('new-layer', 'base', opts()), 'already exists', 'view with the key of an active');
      await expectKind(c.sn.prepare('new-layer', 'base', opts()), 'already exists', 'prepare of an existing key');
      await expectKind(c.sn.prepare('new-layer', '', opts()), 'already exists', 'prepare of an existing key, no parent');
      await c.sn.view('view-layer', 'base', opts());
      await expectKind(c.sn.view('view-layer', 'base', opts()), 'already exists', 'view of an existing key');
      await expectKind(c.sn.prepare('view-layer', 'base', opts()), 'already exists', 'prepare with the key of a view');
      await expectKind(c.sn.prepare('base', '', opts()), 'already exists', 'prepare with the name of a committed');
      await expectKind(c.sn.view('base', '', opts()), 'already exists', 'view with the name of a committed');

      // Parents: must exist and be committed.
      await expectKind(c.sn.prepare('orphan', 'no-such-parent', opts()), 'not found', 'prepare on an unknown parent');
      await expectKind(c.sn.view('orphan-view', 'no-such-parent', opts()), 'not found', 'view of an unknown parent');
      await expectKind(c.sn.prepare('on-active', 'new-layer', opts()), 'invalid argument', 'prepare on an active parent');
      await expectKind(c.sn.view('view-on-active', 'new-layer', opts()), 'invalid argument', 'view of an active parent');
      await expectKind(c.sn.prepare('on-view', 'view-layer', opts()), 'invalid argument', 'prepare on a view parent');

      // Failed calls leave nothing behind.
      for (const k of ['orphan', 'orphan-view', 'on-active', 'view-on-active', 'on-view']) {
        await expectKind(c.sn.stat(k), 'not found', `stat of ${k} after its failed creation`);
      }
      expect(sortedNames(await walkAll(c.sn))).toEqual(['base', 'new-layer', 'view-layer']);
      expectInfo(await c.sn.stat('new-layer'), { kind: 'active', name: 'new-layer', parent: 'base' });
      expectInfo(await c.sn.stat('view-layer'), { kind: 'view', name: 'view-layer', parent: 'base' });
    },
  },

  'commit failures': {
    fn: async (c) => {
      await c.sn.prepare('a', '', opts());
      await c.sn.commit('c', 'a', opts());
      await c.sn.view('v', 'c', opts());
      const mounts = await c.sn.prepare('b', 'c', opts());
      await writeIntoActive(c, mounts, 'kept', 'kept\n');

      await expectKind(c.sn.commit('from-view', 'v', opts()), 'failed precondition', 'commit of a view');
      await expectKind(c.sn.commit('from-committed', 'c', opts()), 'failed precondition', 'commit of a committed');
      await expectKind(c.sn.commit('from-nothing', 'no-such-key', opts()), 'not found', 'commit of an unknown key');
      await expectKind(c.sn.commit('c', 'b', opts()), 'already exists', 'commit to an existing name');
      await expectKind(c.sn.commit('v', 'b', opts()), 'already exists', 'commit to the key of a view');
      await expectKind(c.sn.commit('b', 'b', opts()), 'already exists', 'commit to its own key');

      // Nothing changed: the active one still commits, with its content.
      expectInfo(await c.sn.stat('v'), { kind: 'view', name: 'v', parent: 'c' });
      expectInfo(await c.sn.stat('b'), { kind: 'active', name: 'b', parent: 'c' });
      for (const k of ['from-view', 'from-committed', 'from-nothing']) {
        await expectKind(c.sn.stat(k), 'not found', `stat of ${k} after a failed commit`);
      }
      await c.sn.commit('b-committed', 'b', opts());
      await c.withMount(await c.sn.view('check', 'b-committed', opts()), async (dir) => {
        expect(await readFile(join(dir, 'kept'), 'utf8')).toBe('kept\n');
      });
      await expectKind(c.sn.commit('again', 'b', opts()), 'not found', 'commit of a key already committed');
    },
  },

  'empty keys': {
    fn: async (c) => {
      await expectKind(c.sn.prepare('', '', opts()), 'invalid argument', 'prepare with an empty key');
      await expectKind(c.sn.view('', '', opts()), 'invalid argument', 'view with an empty key');
      await c.sn.prepare('a', '', opts());
      await expectKind(c.sn.commit('', 'a', opts()), 'invalid argument', 'commit to an empty name');
      expect(sortedNames(await walkAll(c.sn))).toEqual(['a']);
      expectInfo(await c.sn.stat('a'), { kind: 'active', name: 'a', parent: '' });
    },
  },

  'opaque keys': {
    fn: async (c) => {
      // Keys that would escape or collide if a backend used them as paths. A unique token in each lets the
      // check find anything created outside the root, even in shared directories like /tmp.
      const token = `strata-escape-${randomBytes(4).toString('hex')}`;
      const keys = [
        `a/b/${token}`,
        `../../${token}`,
        `../../../../../../../../tmp/${token}`,
        `/tmp/${token}-abs`,
        '..',
        '.',
        '/',
        `./${token}/../..`,
        `${token}\\..\\..`,
        `${'k'.repeat(300)}-${token}`,
        `ключ ${token} 鍵 \t\n`,
      ];
      const parentDir = dirname(c.under.root);
      const ancestors = [parentDir, dirname(parentDir), dirname(dirname(parentDir)), '/tmp'];
      const beside = await listing(parentDir);
      const before = new Map(await Promise.all(ancestors.map(async (d) => [d, await listing(d)] as const)));

      for (const [i, key] of keys.entries()) {
        const what = `key ${JSON.stringify(key.length > 40 ? `${key.slice(0, 40)}...` : key)}`;
        const mounts = await c.sn.prepare(key, '', opts());
        await c.withMount(mounts, (dir) => writeFile(join(dir, 'file'), `${i}\n`));
        expectInfo(await c.sn.stat(key), { kind: 'active', name: key, parent: '' });
        // The committed name is just as opaque.
        const name = `${key}/../committed`;
        await c.sn.commit(name, key, opts());
        expectInfo(await c.sn.stat(name), { kind: 'committed', name, parent: '' });
        const view = `../${key}/view`;
        await c.withMount(await c.sn.view(view, name, opts()), async (dir) => {
          expect(await readFile(join(dir, 'file'), 'utf8'), what).toBe(`${i}\n`);
        });
        expect((await walkAll(c.sn, [`parent==${JSON.stringify(name)}`])).map((x) => x.name), what).toEqual([view]);
      }
      expect((await walkAll(c.sn)).length).toBe(keys.length * 2);

      expect(await listing(parentDir), `entries beside the root ${c.under.root}`).toEqual(beside);
      for (const d of ancestors) {
        const added = (await listing(d)).filter((n) => !before.get(d)!.includes(n));
        expect(added.filter((n) => n.includes(token)), `entries created in ${d}`).toEqual([]);
      }
      for (const key of keys) {
        await c.sn.remove(`../${key}/view`);
        await c.sn.remove(`${key}/../committed`);
      }
      expect(await walkAll(c.sn)).toEqual([]);
    },
  },

  'bad labels': {
    fn: async (c) => {
      const tooLong = { k: 'v'.repeat(4096) };
      const justFits = { k: 'v'.repeat(4095) };
      await expectKind(c.sn.prepare('a', '', { labels: { '': 'x' } }), 'invalid argument', 'prepare with an empty label key');
      await expectKind(c.sn.prepare('a', '', { labels: tooLong }), 'invalid argument', 'prepare with a label over 4096 bytes');
      await expectKind(c.sn.view('v', '', { labels: tooLong }), 'invalid argument', 'view with a label over 4096 bytes');
      expect(await walkAll(c.sn), 'nothing created by the failed calls').toEqual([]);
      await c.sn.prepare('a', '', { labels: justFits });
      expectInfo(await c.sn.stat('a'), { kind: 'active', name: 'a', parent: '', labels: justFits });
      await expectKind(c.sn.commit('c', 'a', { labels: tooLong }), 'invalid argument', 'commit with a label over 4096 bytes');
      expectInfo(await c.sn.stat('a'), { kind: 'active', name: 'a', parent: '', labels: justFits });
      await expectKind(c.sn.update({ name: 'a', labels: tooLong }), 'invalid argument', 'update with a label over 4096 bytes');
      await expectKind(
        c.sn.update({ name: 'a', labels: { '': 'x' } }, ['labels']),
        'invalid argument',
        'update with an empty label key',
      );
      expectInfo(await c.sn.stat('a'), { kind: 'active', name: 'a', parent: '', labels: justFits });
    },
  },

  update: {
    fn: async (c) => {
      const t1 = Date.now();
      // c1 <- c2 <- a1, v1; a2 and v2 without parent.
      await c.sn.prepare('c1-a', '', opts());
      await c.sn.commit('c1', 'c1-a', opts());
      await c.sn.prepare('c2-a', 'c1', opts());
      await c.sn.commit('c2', 'c2-a', opts());
      await c.sn.prepare('a1', 'c2', opts());
      await c.sn.prepare('a2', '', opts());
      await c.sn.view('v1', 'c2', opts());
      await c.sn.view('v2', '', opts());
      const t2 = Date.now();

      const cases: { name: string; kind: Kind; parent: string }[] = [
        { name: 'c1', kind: 'committed', parent: '' },
        { name: 'c2', kind: 'committed', parent: 'c1' },
        { name: 'a1', kind: 'active', parent: 'c2' },
        { name: 'a2', kind: 'active', parent: '' },
        { name: 'v1', kind: 'view', parent: 'c2' },
        { name: 'v2', kind: 'view', parent: '' },
      ];
      for (const tc of cases) {
        let st = await c.sn.stat(tc.name);
        expect(st.created.getTime(), `${tc.name} created`).toBeGreaterThanOrEqual(t1);
        expect(st.created.getTime(), `${tc.name} created`).toBeLessThanOrEqual(t2);
        expect(st.updated.getTime(), `${tc.name} updated = created`).toBe(st.created.getTime());
        expectInfo(st, tc);
        const created = st.created.getTime();

        // No field paths: the labels are replaced; the parent cannot be changed this way.
        const root = new Date().toISOString();
        let expected: Record<string, string> = { l1: 'v1', l2: 'v2', l3: 'v3', 'containerd.io/gc.root': root };
        await new Promise((r) => setTimeout(r, 2));
        const u1 = Date.now();
        st = await c.sn.update({ ...st, parent: 'doesnotexist', labels: expected } as Info);
        const u2 = Date.now();
        expect(st.created.getTime(), `${tc.name} created after update`).toBe(created);
        expect(st.updated.getTime(), `${tc.name} updated`).toBeGreaterThanOrEqual(u1);
        expect(st.updated.getTime(), `${tc.name} updated`).toBeLessThanOrEqual(u2);
        expect(st.updated.getTime()).toBeGreaterThan(created);
        expectInfo(st, { ...tc, labels: expected });

        // labels.<key> paths: set one, delete one absent from the update, leave the rest.
        expected = { l1: 'updated', l3: 'v3', 'containerd.io/gc.root': root };
        st = await c.sn.update({ name: tc.name, labels: { l1: 'updated', l4: 'v4' } }, ['labels.l1', 'labels.l2']);
        expect(st.labels).toEqual(expected);

        // "labels": replace them all.
        expected = { l4: 'v4', 'containerd.io/gc.root': root };
        st = await c.sn.update({ name: tc.name, labels: expected }, ['labels']);
        expect(st.labels).toEqual(expected);

        // What update returned is what is stored.
        const again = await c.sn.stat(tc.name);
        expect(infoKey(again)).toEqual(infoKey(st));
        expectInfo(again, { ...tc, labels: expected });

        // Immutable fields.
        await expectKind(
          c.sn.update({ ...st, parent: 'doesnotexist' } as Info, ['parent']),
          'invalid argument',
          `update of ${tc.name}'s parent`,
        );
        expectInfo(await c.sn.stat(tc.name), { ...tc, labels: expected });
      }
      await expectKind(c.sn.update({ name: 'no-such', labels: {} }), 'not found', 'update of an unknown snapshot');
    },
  },

  remove: {
    fn: async (c) => {
      await c.sn.prepare('committed-a', '', opts());
      await c.sn.commit('committed-1', 'committed-a', opts());
      await c.sn.prepare('reuse-1', 'committed-1', opts());
      await expectKind(c.sn.remove('committed-1'), 'failed precondition', 'remove of a committed with an active child');
      await c.sn.remove('reuse-1');
      await expectKind(c.sn.stat('reuse-1'), 'not found', 'stat of a removed active');
      // The key is free again, for a view this time.
      await c.sn.view('reuse-1', 'committed-1', opts());
      await expectKind(c.sn.remove('committed-1'), 'failed precondition', 'remove of a committed with a view child');
      await c.sn.remove('reuse-1');
      await c.sn.prepare('reuse-1', '', opts());
      await c.sn.remove('committed-1');
      await expectKind(c.sn.stat('committed-1'), 'not found', 'stat of a removed committed');
      // The name of a removed committed snapshot can be committed to again.
      await c.sn.commit('committed-1', 'reuse-1', opts());
      expectInfo(await c.sn.stat('committed-1'), { kind: 'committed', name: 'committed-1', parent: '' });

      await expectKind(c.sn.remove('no-such'), 'not found', 'remove of an unknown key');
      await c.sn.remove('committed-1');
      await expectKind(c.sn.remove('committed-1'), 'not found', 'second remove');
      expect(await walkAll(c.sn)).toEqual([]);
    },
  },

  walk: {
    fn: async (c) => {
      const base = { 'containerd.io/gc.root': 'check-walk' };
      const o = { labels: base };
      await c.sn.prepare('a-np', '', o);
      await c.sn.prepare('p-tmp', '', o);
      await c.sn.commit('p', 'p-tmp', o);
      await c.sn.prepare('a', 'p', o);
      await c.sn.view('v', 'p', o);
      await c.sn.prepare('p-wl-tmp', '', o);
      await c.sn.commit('p-wl', 'p-wl-tmp', { labels: { ...base, l: '1' } });
      await c.sn.prepare('a-wl', 'p-wl', { labels: { ...base, l: '2' } });
      await c.sn.view('v-wl', 'p-wl', { labels: { ...base, l: '3' } });
      await c.sn.prepare('a-np-wl', '', { labels: { ...base, l: '2' } });

      const table: [string[], string[]][] = [
        [['a-np', 'p', 'a', 'v', 'p-wl', 'a-wl', 'v-wl', 'a-np-wl'], ['labels."containerd.io/gc.root"==check-walk']],
        [['a-np', 'a', 'a-wl', 'a-np-wl'], ['kind==active,labels."containerd.io/gc.root"==check-walk']],
        [['v', 'v-wl'], ['kind==view,labels."containerd.io/gc.root"==check-walk']],
        [['p', 'p-wl'], ['kind==committed,labels."containerd.io/gc.root"==check-walk']],
        [['p', 'a-np-wl'], ['name==p', 'name==a-np-wl']],
        [['a-wl'], ['name==a-wl,labels.l']],
        [['a', 'v'], ['parent==p']],
        [['a', 'v', 'a-wl', 'v-wl'], ['parent!="",labels."containerd.io/gc.root"==check-walk']],
        [['p-wl', 'a-wl', 'v-wl', 'a-np-wl'], ['labels.l']],
        [['a-wl', 'a-np-wl'], ['labels.l==2']],
        [['a', 'a-np', 'a-np-wl', 'a-wl'], ['kind==active']],
        [['v', 'v-wl', 'p'], ['kind==view', 'name==p']],
        [[], ['name==nothing']],
        [['a-np', 'p', 'a', 'v', 'p-wl', 'a-wl', 'v-wl', 'a-np-wl'], []],
      ];
      for (const [matches, filters] of table) {
        expect(sortedNames(await walkAll(c.sn, filters)), `walk ${JSON.stringify(filters)}`).toEqual([...matches].sort());
      }
      // What walk reports is what stat reports.
      for (const i of await walkAll(c.sn)) expect(infoKey(i)).toEqual(infoKey(await c.sn.stat(i.name)));
      // An error thrown by the callback ends the walk and comes back to the caller.
      let calls = 0;
      await expect(
        c.sn.walk(() => {
          calls++;
          throw new Error('stop here');
        }),
      ).rejects.toThrow('stop here');
      expect(calls).toBe(1);
    },
  },

  'stat in walk': {
    fn: async (c) => {
      const prefix = 'stats-in-walk-';
      await c.sn.prepare(`${prefix}c1-a`, '', opts());
      await c.sn.commit(`${prefix}c1`, `${prefix}c1-a`, opts());
      await c.sn.prepare(`${prefix}c2-a`, `${prefix}c1`, opts());
      await c.sn.commit(`${prefix}c2`, `${prefix}c2-a`, opts());
      await c.sn.prepare(`${prefix}a1`, `${prefix}c2`, opts());
      await c.sn.view(`${prefix}v1`, `${prefix}c2`, opts());
      let seen = 0;
      await c.sn.walk(async (si) => {
        if (!si.name.startsWith(prefix)) return;
        seen++;
        expect(infoKey(await c.sn.stat(si.name))).toEqual(infoKey(si));
      });
      expect(seen).toBe(4);
    },
  },

  mounts: {
    fn: async (c) => {
      const prepared = await c.sn.prepare('a', '', opts());
      // Compared on what a mount is, so that a client that fills absent fields with '' compares equal.
      const norm = (ms: Mount[]) => ms.map((m) => ({ type: m.type, source: m.source, target: m.target || '', options: m.options }));
      expect(norm(await c.sn.mounts('a'))).toEqual(norm(prepared));
      await writeIntoActive(c, prepared, 'f', 'f\n');
      await c.sn.commit('c', 'a', opts());
      const child = await c.sn.prepare('b', 'c', opts());
      expect(norm(await c.sn.mounts('b'))).toEqual(norm(child));
      const view = await c.sn.view('v', 'c', opts());
      expect(norm(await c.sn.mounts('v'))).toEqual(norm(view));
      // The mounts from mounts() are usable: the parent's file shows.
      await c.withMount(await c.sn.mounts('b'), async (dir) => {
        expect(await readFile(join(dir, 'f'), 'utf8')).toBe('f\n');
      });
      await c.withMount(await c.sn.mounts('v'), async (dir) => {
        expect(await readFile(join(dir, 'f'), 'utf8')).toBe('f\n');
      });
      await expectKind(c.sn.mounts('no-such'), 'not found', 'mounts of an unknown key');
      await c.sn.remove('b');
      await expectKind(c.sn.mounts('b'), 'not found', 'mounts of a removed key');
    },
  },

  usage: {
    fn: async (c) => {
      const MiB = 1 << 20;
      const mounts = await c.sn.prepare('a', '', opts());
      const empty = await c.sn.usage('a');
      expect(empty.size).toBeGreaterThanOrEqual(0);
      expect(empty.inodes).toBeGreaterThanOrEqual(0);
      await c.withMount(mounts, async (dir) => {
        await writeFile(join(dir, 'big'), randomBytes(MiB));
        await mkdir(join(dir, 'd'));
        await writeFile(join(dir, 'd', 'small'), 'x');
      });
      const active = await c.sn.usage('a');
      expect(active.size, 'usage of an active snapshot holding 1 MiB').toBeGreaterThanOrEqual(MiB);
      expect(active.inodes, 'inodes of an active snapshot holding 3 entries').toBeGreaterThanOrEqual(3);
      await c.sn.commit('c', 'a', opts());
      const committed = await c.sn.usage('c');
      expect(committed.size, 'usage of the committed snapshot').toBeGreaterThanOrEqual(MiB);
      if (c.options.committedIsOneFile) expect(committed.inodes, 'inodes of a committed snapshot stored as one image file').toBe(1);
      else expect(committed.inodes).toBeGreaterThanOrEqual(3);
      await c.sn.view('v', 'c', opts());
      const view = await c.sn.usage('v');
      expect(view.size).toBeGreaterThanOrEqual(0);
      await expectKind(c.sn.usage('no-such'), 'not found', 'usage of an unknown key');
    },
  },

  'layer file update': {
    fn: async (c) => {
      const l1 = apply(
        createDir('/etc', 0o700),
        createFile('/etc/hosts', 'mydomain 10.0.0.1', 0o644),
        createFile('/etc/profile', 'PATH=/usr/bin', 0o644),
      );
      const l2 = apply(
        createFile('/etc/hosts', 'mydomain 10.0.0.2', 0o644),
        createFile('/etc/profile', 'PATH=/usr/bin', 0o666),
        createDir('/root', 0o700),
        createFile('/root/.bashrc', 'PATH=/usr/sbin:/usr/bin', 0o644),
      );
      // Twice, the second run in another second (the original bug depended on mtimes at second granularity).
      for (let i = 0; i < 2; i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 5));
        await checkSnapshots(c, l1, l2);
      }
    },
  },

  'remove directory in lower layer': {
    fn: (c) =>
      checkSnapshots(
        c,
        apply(createDir('/lib', 0o700), createFile('/lib/hidden', '', 0o644)),
        apply(removeAll('/lib'), createDir('/lib', 0o700), createFile('/lib/not-hidden', '', 0o644)),
        apply(createFile('/lib/newfile', '', 0o644)),
      ),
  },

  chown: {
    fn: (c) =>
      checkSnapshots(
        c,
        apply(
          createDir('/opt', 0o700),
          createDir('/opt/a', 0o700),
          createDir('/opt/a/b', 0o700),
          createFile('/opt/a/b/file.txt', 'hello', 0o644),
        ),
        apply(
          chownTo('/opt', 1, 1),
          chownTo('/opt/a', 1, 1),
          chownTo('/opt/a/b', 1, 1),
          chownTo('/opt/a/b/file.txt', 1, 1),
        ),
      ),
  },

  'directory permission on commit': {
    fn: (c) =>
      checkSnapshots(
        c,
        apply(
          createDir('/dir1', 0o700),
          createDir('/dir2', 0o700),
          createDir('/dir3', 0o700),
          createDir('/dir4', 0o700),
          createFile('/dir4/f1', '...', 0o644),
          createDir('/dir5', 0o700),
          createFile('/dir5/f1', '...', 0o644),
          chownTo('/dir1', 1, 1),
          chownTo('/dir2', 1, 1),
          chownTo('/dir3', 1, 1),
          chownTo('/dir5', 1, 1),
          chownTo('/dir5/f1', 1, 1),
        ),
        apply(chownTo('/dir2', 0, 0), removeAll('/dir3'), chownTo('/dir4', 1, 1), chownTo('/dir4/f1', 1, 1)),
        apply(
          createDir('/dir3', 0o700),
          chownTo('/dir3', 1, 1),
          removeAll('/dir5'),
          createDir('/dir5', 0o700),
          chownTo('/dir5', 1, 1),
        ),
        // Strata: modes other than 0700 survive too, including the special bits.
        apply(createDir('/modes', 0o750), createDir('/modes/sticky', 0o1777), createDir('/modes/setgid', 0o2755)),
        apply(createFile('/modes/f', 'x', 0o4755), createDir('/modes/late', 0o711)),
      ),
  },

  'remove intermediate snapshot': {
    fn: async (c) => {
      const base = await prepareMount(c, join(c.work, 'base'), '');
      const committedBase = join(c.work, 'committed-base');
      await c.sn.commit(committedBase, join(c.work, 'base'), opts());
      const intermediate = join(c.work, 'intermediate');
      await c.sn.prepare(intermediate, committedBase, opts());
      const committedInter = join(c.work, 'committed-inter');
      await c.sn.commit(committedInter, intermediate, opts());
      const top = join(c.work, 'toplayer');
      await c.sn.prepare(top, committedInter, opts());

      await expectKind(c.sn.remove(committedInter), 'failed precondition', 'remove of an intermediate snapshot');
      await expectKind(c.sn.remove(committedBase), 'failed precondition', 'remove of the base snapshot');
      expectInfo(await c.sn.stat(committedInter), { kind: 'committed', name: committedInter, parent: committedBase });
      await c.sn.remove(top);
      await c.sn.remove(committedInter);
      await c.unmount(base);
      await c.sn.remove(committedBase);
      expect(await walkAll(c.sn)).toEqual([]);
    },
  },

  'deleted files in child snapshot': {
    fn: (c) =>
      checkSnapshots(
        c,
        apply(createFile('/foo', 'foo\n', 0o777), createFile('/foobar', 'foobar\n', 0o777)),
        apply(removeAll('/foobar')),
        apply(),
      ),
  },

  'move file from lower layer': {
    fn: (c) =>
      checkSnapshots(
        c,
        apply(
          createDir('/dir1', 0o700),
          createFile('/dir1/f1', 'Hello', 0o644),
          createDir('dir2', 0o700),
          createFile('dir2/f2', '...', 0o644),
        ),
        apply(
          createDir('/dir3', 0o700),
          createFile('/dir3/f1', 'Hello', 0o644),
          removeAll('/dir1'),
          hardLink('dir2/f2', 'dir3/f2'),
          removeAll('dir2/f2'),
        ),
      ),
  },

  rename: {
    fn: (c) =>
      checkSnapshots(
        c,
        apply(
          createDir('/dir1', 0o700),
          createDir('/somefiles', 0o700),
          createFile('/somefiles/f1', 'was here first!', 0o644),
          createFile('/somefiles/f2', 'nothing interesting', 0o644),
          // Strata: a directory with content, renamed below.
          createDir('/tree/sub', 0o755),
          createFile('/tree/sub/leaf', 'leaf', 0o640),
          chownTo('/tree/sub/leaf', 1, 2),
        ),
        apply(
          renameTo('/dir1', '/dir2'),
          createFile('/somefiles/f1-overwrite', 'new content 1', 0o644),
          renameTo('/somefiles/f1-overwrite', '/somefiles/f1'),
          renameTo('/somefiles/f2', '/somefiles/f3'),
          renameTo('/tree', '/moved'),
        ),
        // The old names stay gone in the next layer, and can come back.
        apply(createDir('/tree', 0o700), createFile('/tree/new', 'new', 0o600)),
      ),
  },

  links: {
    fn: (c) =>
      checkSnapshots(
        c,
        apply(
          createFile('/target', 'target', 0o644),
          symLink('target', '/rel-link'),
          symLink('/target', '/abs-link'),
          symLink('missing', '/dangling'),
          createFile('/hard', 'hard', 0o600),
          hardLink('/hard', '/hard2'),
        ),
        apply(
          removeAll('/rel-link'),
          symLink('hard', '/rel-link'),
          removeAll('/hard2'),
          hardLink('/target', '/target2'),
          createDir('/d', 0o755),
          symLink('..', '/d/up'),
        ),
      ),
  },

  'special files': {
    fn: (c) =>
      checkSnapshots(
        c,
        apply(
          createDir('/dev', 0o755),
          mknodAt('/dev/fifo', 'p', 0o644),
          mknodAt('/dev/null', 'c', 0o666, 1, 3),
          mknodAt('/dev/loop200', 'b', 0o660, 7, 200),
          mknodAt('/dev/gone', 'c', 0o600, 1, 5),
        ),
        apply(
          removeAll('/dev/fifo'),
          createFile('/dev/fifo', 'now a file', 0o644),
          chmodTo('/dev/null', 0o600),
          chownTo('/dev/loop200', 0, 6),
          removeAll('/dev/gone'),
          mknodAt('/newfifo', 'p', 0o600),
        ),
        apply(removeAll('/dev/null'), mknodAt('/dev/null', 'c', 0o666, 1, 7)),
      ),
  },

  sockets: {
    fn: (c) =>
      checkSnapshots(
        c,
        apply(createDir('/run', 0o755), createSocket('/run/app.sock', 0o660)),
        apply(chownTo('/run/app.sock', 1, 1), createSocket('/run/other.sock', 0o600)),
      ),
  },

  'view readonly': {
    fn: async (c) => {
      const preparing = join(c.work, 'preparing');
      const mounts = await c.sn.prepare(preparing, '', opts());
      await writeIntoActive(c, mounts, 'existing', 'existing\n');
      const committed = join(c.work, 'committed');
      await c.sn.commit(committed, preparing, opts());
      const view = join(c.work, 'view');
      // A real mount: the mount options alone are not enough (containerd #1368).
      const dir = await c.mount(await c.sn.view(view, committed, opts()), 'view');
      const codeOf = (p: Promise<unknown>) =>
        p.then(
          () => 'succeeded',
          (e: NodeJS.ErrnoException) => e.code,
        );
      expect(await codeOf(writeFile(join(dir, 'testfile'), 'testcontent')), 'creating a file in a view').toBe('EROFS');
      expect(await codeOf(writeFile(join(dir, 'existing'), 'x', { flag: 'a' })), 'appending in a view').toBe('EROFS');
      expect(await codeOf(mkdir(join(dir, 'd'))), 'mkdir in a view').toBe('EROFS');
      expect(await codeOf(rm(join(dir, 'existing'))), 'unlink in a view').toBe('EROFS');
      expect(await readFile(join(dir, 'existing'), 'utf8')).toBe('existing\n');
      await c.unmount(dir);
      // A view without a parent is read-only too.
      await c.withMount(await c.sn.view('empty-view', '', opts()), async (d) => {
        expect(await codeOf(writeFile(join(d, 'testfile'), 'x')), 'creating a file in a view without parent').toBe('EROFS');
      });
      await c.sn.remove(view);
      await c.sn.remove('empty-view');
      await c.sn.remove(committed);
    },
  },

  'view of parent': {
    fn: async (c) => {
      const layer = apply(createDir('/etc', 0o755), createFile('/etc/motd', 'hi\n', 0o644), symLink('etc/motd', '/motd'));
      const flat = await c.dir('flat');
      await layer(flat);
      const name = await createSnapshot(c, '', layer);
      const viewMounts = await c.sn.view('v', name, opts());
      expectInfo(await c.sn.stat('v'), { kind: 'view', name: 'v', parent: name });
      // Changes in a sibling active snapshot don't reach the view or the parent.
      const sibling = await prepareMount(c, 'sibling', name);
      await writeFile(join(sibling, 'etc', 'motd'), 'changed\n');
      await writeFile(join(sibling, 'new'), 'new\n');
      await rm(join(sibling, 'motd'));
      const viewDir = await c.mount(viewMounts, 'view');
      await checkDirectoryEqual(flat, viewDir);
      await c.unmount(viewDir);
      await c.unmount(sibling);
      await checkSnapshot(c, name, flat);
      // A view without a parent is empty.
      await c.withMount(await c.sn.view('empty', '', opts()), async (dir) => {
        expect(await readdir(dir)).toEqual([]);
      });
    },
  },

  'root permission': {
    fn: async (c) => {
      const dir = await prepareMount(c, join(c.work, 'preparing'), '');
      expect(((await stat(dir)).mode & 0o7777).toString(8), 'mode of a new snapshot root').toBe('755');
      await c.unmount(dir);
      await c.sn.commit('c', join(c.work, 'preparing'), opts());
      const child = await prepareMount(c, 'child', 'c');
      expect(((await stat(child)).mode & 0o7777).toString(8), 'mode of a child snapshot root').toBe('755');
    },
  },

  'cleanup keeps owned snapshots': {
    fn: async (c) => {
      const flat = await c.dir('flat');
      const layer = apply(createFile('/kept', 'kept\n', 0o644), createDir('/d', 0o700));
      await layer(flat);
      const name = await createSnapshot(c, '', layer);
      const active = await c.sn.prepare('active', name, opts());
      await writeIntoActive(c, active, 'mine', 'mine\n');
      await c.sn.view('view', name, opts());
      // Something removed just before, whose data the cleanup may collect.
      await c.sn.prepare('gone', name, opts());
      await c.sn.remove('gone');
      await c.sn.cleanup();
      await c.sn.cleanup();
      expect(sortedNames(await walkAll(c.sn))).toEqual(['active', 'view', name].sort());
      await checkSnapshot(c, name, flat);
      await c.withMount(await c.sn.mounts('active'), async (dir) => {
        expect(await readFile(join(dir, 'mine'), 'utf8')).toBe('mine\n');
        expect(await readFile(join(dir, 'kept'), 'utf8')).toBe('kept\n');
      });
      await c.withMount(await c.sn.mounts('view'), (dir) => checkDirectoryEqual(flat, dir));
    },
  },

  'concurrent operations': {
    fn: async (c) => {
      await c.sn.prepare('base-a', '', opts());
      await c.sn.commit('base', 'base-a', opts());
      const settle = async (ps: Promise<unknown>[], okKinds: ErrorKind[], what: string) => {
        const rs = await Promise.allSettled(ps);
        for (const r of rs) {
          if (r.status === 'rejected') {
            const e = r.reason as { kind?: unknown; message?: unknown };
            expect(okKinds, `${what}: ${String(e.message ?? r.reason)}`).toContain(e.kind);
          }
        }
        return rs.filter((r) => r.status === 'fulfilled').length;
      };
      // Different keys at once all succeed.
      const keys = Array.from({ length: 8 }, (_, i) => `k${i}`);
      await Promise.all(keys.map((k, i) => (i % 2 ? c.sn.prepare(k, 'base', opts()) : c.sn.view(k, 'base', opts()))));
      // The same key at once: one wins.
      const same = Array.from({ length: 6 }, (_, i) =>
        i % 2 ? c.sn.prepare('same', 'base', opts()) : c.sn.view('same', 'base', opts()),
      );
      expect(await settle(same, ['already exists'], 'parallel creation of one key'), 'creations of one key that succeed').toBe(1);
      if ((await c.sn.stat('same')).kind === 'view') {
        await c.sn.remove('same');
        await c.sn.prepare('same', 'base', opts());
      }
      // One active committed under several names at once: one commit.
      const commits = ['n1', 'n2', 'n3'].map((n) => c.sn.commit(n, 'same', opts()));
      expect(await settle(commits, ['not found', 'failed precondition'], 'parallel commits'), 'commits that succeed').toBe(1);
      const committed = await walkAll(c.sn, ['kind==committed']);
      expect(sortedNames(committed).filter((n) => n !== 'base')).toHaveLength(1);
      // Removing one key several times at once: one removal.
      const removes = Array.from({ length: 4 }, () => c.sn.remove('k1'));
      expect(await settle(removes, ['not found'], 'parallel removals'), 'removals that succeed').toBe(1);
      // Everything left is whole.
      const winner = sortedNames(committed).filter((n) => n !== 'base');
      expect(sortedNames(await walkAll(c.sn))).toEqual(['base', ...keys.filter((k) => k !== 'k1'), ...winner].sort());
      await Promise.all(
        ['k0', 'k3'].map(async (k) => c.withMount(await c.sn.mounts(k), async (dir) => expect(await readdir(dir)).toEqual([]))),
      );
    },
  },

  'close twice': {
    fn: async (c) => {
      const n = uniqueName('closeTwice');
      await c.sn.prepare(`${n}-prepare`, '', opts());
      await c.sn.commit(n, `${n}-prepare`, opts());
      await c.sn.remove(n);
      await c.sn.close();
      await c.sn.close();
    },
  },

  'close and reopen': {
    fn: async (c, ctx) => {
      if (!c.under.reopen) ctx.skip('the factory cannot reopen a root');
      const flat = await c.dir('flat');
      const layer = apply(createFile('/a', 'a\n', 0o644), createDir('/d', 0o711));
      await layer(flat);
      const name = await createSnapshot(c, '', layer);
      const labels = { ...gcRoot(), mine: 'yes' };
      const active = await c.sn.prepare('active', name, { labels });
      await writeIntoActive(c, active, 'written-before-close', 'x\n');
      await c.sn.view('view', name, opts());
      await c.sn.update({ name, labels: { changed: 'later' } }, ['labels.changed']);
      const before = (await walkAll(c.sn)).map(infoKey).sort((x, y) => x.name.localeCompare(y.name));

      await c.reopen();
      const after = (await walkAll(c.sn)).map(infoKey).sort((x, y) => x.name.localeCompare(y.name));
      expect(after).toEqual(before);
      expectInfo(await c.sn.stat('active'), { kind: 'active', name: 'active', parent: name, labels });
      await c.withMount(await c.sn.mounts('active'), async (dir) => {
        expect(await readFile(join(dir, 'written-before-close'), 'utf8')).toBe('x\n');
        expect(await readFile(join(dir, 'a'), 'utf8')).toBe('a\n');
      });
      await c.withMount(await c.sn.mounts('view'), (dir) => checkDirectoryEqual(flat, dir));
      // Keeps working: commit, prepare on top, and no key reuse confusion.
      await c.sn.commit('active-committed', 'active', opts());
      await expectKind(c.sn.prepare('view', '', opts()), 'already exists', 'prepare with a key from before the reopen');
      const top = await c.sn.prepare('top', 'active-committed', opts());
      await c.withMount(top, async (dir) => {
        expect(await readFile(join(dir, 'written-before-close'), 'utf8')).toBe('x\n');
      });
      await c.sn.remove('top');
      await expectKind(c.sn.remove(name), 'failed precondition', 'remove of a parent after reopen');
    },
  },

  '128 layers mount': {
    timeout: 180_000,
    fn: async (c) => {
      const appliers: Applier[] = [
        apply(
          createFile('/bottom', 'way at the bottom\n', 0o777),
          createFile('/overwriteme', 'FIRST!\n', 0o777),
          createDir('/ADDHERE', 0o755),
          createDir('/ONLYME', 0o755),
          createFile('/ONLYME/bottom', 'bye!\n', 0o777),
        ),
      ];
      for (let i = 1; i <= 127; i++) {
        appliers.push(
          apply(
            createFile('/overwriteme', `${i} WAS HERE!\n`, 0o777),
            createFile(`/ADDHERE/file-${i}`, 'same\n', 0o755),
            removeAll('/ONLYME'),
            createDir('/ONLYME', 0o755),
            createFile(`/ONLYME/file-${i}`, 'only me!\n', 0o777),
          ),
        );
      }
      const flat = await c.dir('flat');
      let parent = '';
      for (const [i, a] of appliers.entries()) {
        const key = `prepare-layer-${i}`;
        const dir = await prepareMount(c, key, parent);
        await checkDirectoryEqual(flat, dir).catch((e: Error) => {
          throw new Error(`layer ${i}, before applying: ${e.message}`);
        });
        await a(flat);
        await a(dir);
        // What was written is checked through the next layer's prepare (and the final view), after the commit.
        await c.unmount(dir);
        parent = `committed-${i}`;
        await c.sn.commit(parent, key, opts());
      }
      await c.withMount(await c.sn.view('fullview', parent, opts()), (dir) => checkDirectoryEqual(flat, dir));
    },
  },

  '500 layer chain': {
    timeout: 600_000,
    fn: async (c, ctx) => {
      const N = 500;
      const started = Date.now();
      let parent = '';
      const spent = { prepare: 0, write: 0, commit: 0 };
      const timed = async <T>(phase: keyof typeof spent, p: Promise<T>): Promise<T> => {
        const t = performance.now();
        try {
          return await p;
        } finally {
          spent[phase] += performance.now() - t;
        }
      };
      for (let i = 1; i <= N; i++) {
        const key = `layer-${i}-active`;
        const mounts = await timed('prepare', c.sn.prepare(key, parent, opts()));
        await timed('write', writeIntoActive(c, mounts, `file-${i}`, `layer ${i}\n`));
        await timed('commit', c.sn.commit(`layer-${i}`, key, opts()));
        parent = `layer-${i}`;
      }
      const built = Date.now();
      const expected = Array.from({ length: N }, (_, i) => `file-${i + 1}`).sort();
      const checkTree = async (dir: string) => {
        expect((await readdir(dir)).sort()).toEqual(expected);
        for (const i of [1, 2, N / 2, N / 2 + 1, N - 1, N]) {
          expect(await readFile(join(dir, `file-${i}`), 'utf8'), `file-${i}`).toBe(`layer ${i}\n`);
        }
      };
      // On top: an active snapshot over all 500, mounted for real, and written to.
      const top = await prepareMount(c, 'top', parent);
      await checkTree(top);
      await writeFile(join(top, 'file-1'), 'overwritten on top\n');
      await rm(join(top, `file-${N}`));
      expect(await readFile(join(top, 'file-1'), 'utf8')).toBe('overwritten on top\n');
      await c.unmount(top);
      // A read-only view of the last layer still sees the layers untouched.
      await c.withMount(await c.sn.view('top-view', parent, opts()), checkTree);
      const done = Date.now();
      expect(sortedNames(await walkAll(c.sn, ['kind==committed'])).length).toBe(N);
      const phases = Object.entries(spent).map(([k, v]) => `${k} ${Math.round(v)}`).join(', ');
      const report =
        `${ctx.name}: ${N} layers built in ${built - started} ms (${phases}), ` +
        `top mounted and checked in ${done - built} ms, total ${done - started} ms`;
      console.log(report);
    },
  },
};

/* ------------------------------------------------------------------------------------------------------------
 * The suite.
 * ---------------------------------------------------------------------------------------------------------- */

export function snapshotterSuite(name: string, make: SnapshotterFactory, options: SuiteOptions = {}): void {
  const known = new Set<string>(SUITE_CASES);
  for (const n of [...(options.skip ?? []), ...(options.expectedFailures ?? [])]) {
    if (!known.has(n)) throw new Error(`snapshotterSuite(${name}): no case named ${JSON.stringify(n)}`);
  }

  describe(name, () => {
    // containerd runs its suite with umask 0, so modes come only from what backends and appliers ask for.
    let savedUmask: number | undefined;
    beforeAll(() => {
      try {
        savedUmask = process.umask(0);
      } catch {
        savedUmask = undefined; // worker threads cannot change it
      }
    });
    afterAll(() => {
      if (savedUmask !== undefined) process.umask(savedUmask);
    });

    for (const caseName of SUITE_CASES) {
      const { fn, timeout } = cases[caseName];
      it(
        caseName,
        {
          skip: options.skip?.includes(caseName) ?? false,
          fails: options.expectedFailures?.includes(caseName) ?? false,
          ...(timeout !== undefined ? { timeout: timeout * (options.timeoutFactor ?? 1) } : {}),
        },
        async (ctx) => {
          const under = await make();
          let work: string;
          try {
            work = await mkdtemp(join(tmpdir(), `strata-suite-${name.replace(/[^\w.-]+/g, '_')}-`));
          } catch (err) {
            await under.sn.close().catch(() => undefined);
            await under.cleanup();
            throw err;
          }
          const c = new Case(under, work, options);
          let failed = true;
          try {
            await fn(c, { skip: (note?: string) => ctx.skip(note), name: `${name} ${caseName}` });
            failed = false;
          } finally {
            // After a failure, the original error matters more than one from tidying up.
            if (failed) await c.dispose().catch(() => undefined);
            else await c.dispose();
          }
        },
      );
    }
  });
}
