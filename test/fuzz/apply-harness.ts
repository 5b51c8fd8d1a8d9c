/**
 * Runs generated tar cases (./tar-gen.ts) through the real walking differ onto real snapshots, and checks what
 * the applier promises. Shared by test/fuzz/apply.test.ts (a bounded number of seeds in CI) and bench/fuzz.ts
 * (the long run by hand).
 *
 * The world of one harness, in a temp dir:
 *   sentinel/            a small tree nothing may touch (names, symlinks and hardlinks aim at it)
 *   sn/overlay, sn/native  an overlayfs and a native snapshotter, each with a committed base layer holding
 *                        symlinks out of the root (`/`, `../..`, the sentinel's absolute path), loops and a
 *                        1777 tmp/
 *   content/, meta.db    the content store the layer blobs go in
 * and, outside it, the host's `/` (checked for names starting with HOST_ESCAPE_PREFIX) and the process's cwd.
 *
 * Per case: the blob is stored, a snapshot prepared on one target (an overlay upperdir over the base, with
 * overlay whiteouts; a first overlay layer, i.e. a bind mount with deleting whiteouts; a native snapshot with a
 * copy of the base), every file outside the target listed (type, mode, size, mtime, inode), the layer applied,
 * and then: the call settled; a failure is a StrataError of one of containerd's kinds with no host path in a
 * short message; a success has the diffID of the bytes (when the wrapper was intact); nothing outside the target
 * changed; no temporary mount is left; the snapshot removed and the snapshotter cleaned up leave nothing of it.
 */
import { lstatSync, readdirSync, readFileSync, readlinkSync, symlinkSync } from 'node:fs';
import { chmod, mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type { ContentStore } from '../../src/content/types.js';
import { StrataError, type ErrorKind } from '../../src/core/errdefs.js';
import type { Mount } from '../../src/core/mount.js';
import { WalkingDiffer } from '../../src/diff/walking.js';
import type { MetadataStore } from '../../src/metadata/index.js';
import { openNativeSnapshotter } from '../../src/snapshots/native/index.js';
import { openOverlaySnapshotter } from '../../src/snapshots/overlay/index.js';
import type { Snapshotter } from '../../src/snapshots/types.js';
import { contentStore, putBlob } from '../diff/helpers.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { generateCase, HOST_ESCAPE_PREFIX, Rng, type FuzzCase } from './tar-gen.js';

export const KINDS: readonly ErrorKind[] = [
  'unknown',
  'invalid argument',
  'not found',
  'already exists',
  'failed precondition',
  'unavailable',
  'not implemented',
  'out of range',
  'canceled',
  'deadline exceeded',
  'permission denied',
];

export type TargetKind = 'overlay-child' | 'overlay-first' | 'native-child' | 'tmpfs-mount';

export interface CaseResult {
  seed: number;
  gentle: boolean;
  target: TargetKind;
  /** 'ok' or the error's kind. */
  outcome: string;
  message?: string;
  /** What broke a promise: empty when the case passed. */
  problems: string[];
  ms: number;
  summary: string[];
}

/** How long one apply may take before the case counts as a hang. */
const CASE_TIMEOUT_MS = 30_000;

export class ApplyFuzzer {
  private n = 0;
  private readonly unhandled: unknown[] = [];
  private readonly onUnhandled = (err: unknown) => this.unhandled.push(err);

  private constructor(
    readonly tmp: TempDir,
    private readonly content: ContentStore,
    private readonly md: MetadataStore,
    private readonly overlay: Snapshotter,
    private readonly native: Snapshotter,
    readonly differ: WalkingDiffer,
  ) {
    process.on('unhandledRejection', this.onUnhandled);
  }

  get sentinel(): string {
    return join(this.tmp.path, 'sentinel');
  }

  /** Where names aim to get out: the sentinel by its absolute path and relative from each target's depth. */
  get escapes(): string[] {
    return [this.sentinel, '../../../../../sentinel', '../../../../sentinel', '../../../../../../../../../../sentinel'];
  }

  static async open(): Promise<ApplyFuzzer> {
    const tmp = await tempDir('strata-fuzz-');
    const sentinel = join(tmp.path, 'sentinel');
    await mkdir(join(sentinel, 'dir'), { recursive: true });
    await writeFile(join(sentinel, 'a'), 'sentinel a');
    await writeFile(join(sentinel, 'dir', 'b'), 'sentinel b');
    await symlink('a', join(sentinel, 'link'));
    const { content, md } = await contentStore(tmp.path);
    const overlay = await openOverlaySnapshotter(join(tmp.path, 'sn', 'overlay'));
    const native = await openNativeSnapshotter(join(tmp.path, 'sn', 'native'));
    const f = new ApplyFuzzer(tmp, content, md, overlay, native, new WalkingDiffer());
    // The differ's temporary mount points (os.tmpdir(), read at each call) go under the watched tree, so one left
    // behind, mounted or not, shows.
    await mkdir(join(tmp.path, 'mnt'));
    f.savedTmpdir = process.env.TMPDIR;
    process.env.TMPDIR = join(tmp.path, 'mnt');
    for (const sn of [overlay, native]) {
      const mounts = await sn.prepare('base-active', '');
      await f.writeBase(dirOf(mounts));
      await sn.commit('base', 'base-active');
    }
    return f;
  }

  /** The base layer: what makes escapes tempting (symlinks out of the root and at the sentinel), loops, a 1777 tmp. */
  private async writeBase(dir: string): Promise<void> {
    await mkdir(join(dir, 'etc'));
    await writeFile(join(dir, 'etc', 'hosts'), 'hosts\n');
    await mkdir(join(dir, 'tmp'));
    await chmod(join(dir, 'tmp'), 0o1777);
    await mkdir(join(dir, 'usr', 'lib'), { recursive: true });
    await writeFile(join(dir, 'a'), 'base a');
    symlinkSync('/', join(dir, 'root'));
    symlinkSync('../../../../../../../..', join(dir, 'up'));
    symlinkSync(this.sentinel, join(dir, 'sent'));
    symlinkSync(join(this.sentinel, 'a'), join(dir, 'senta'));
    symlinkSync('self', join(dir, 'self'));
    symlinkSync('loop2', join(dir, 'loop1'));
    symlinkSync('loop1', join(dir, 'loop2'));
    symlinkSync('etc', join(dir, 'b'));
    symlinkSync('/etc', join(dir, 'c'));
    symlinkSync('usr/lib', join(dir, 'lib'));
    await mkdir(join(dir, 'x'));
    await writeFile(join(dir, 'x', 'keep'), 'x');
  }

  /**
   * Runs the case (`seed`, `gentle`: see tar-gen.ts); never throws for a broken promise (it is in `problems`).
   * The target is drawn from the seed among the snapshot targets, or with `tmpfs` a tmpfs mount, which the
   * differ mounts on a temporary directory of its own (its third kind of target) and must unmount and remove.
   */
  async run(seed: number, gentle = false, tmpfs = false): Promise<CaseResult> {
    const started = Date.now();
    const fc = generateCase(seed, { escapes: this.escapes, gentle });
    const target = tmpfs ? 'tmpfs-mount' : new Rng(seed ^ 0x5eed).pick(['overlay-child', 'overlay-child', 'overlay-first', 'native-child'] as const);
    const res: CaseResult = { seed, gentle, target, outcome: 'ok', problems: [], ms: 0, summary: fc.summary };
    const sn = target === 'native-child' ? this.native : this.overlay;
    const key = `fuzz-${++this.n}`;
    const digest = await putBlob(this.content, fc.blob, `fuzz-${seed}-${this.n}`);
    const mounts: Mount[] = tmpfs ? [{ type: 'tmpfs', source: 'tmpfs', options: ['size=64m'] }] : await sn.prepare(key, target === 'overlay-first' ? '' : 'base');
    // A tmpfs target leaves nothing to skip: the differ's temporary directory must be gone after the call.
    const dir = tmpfs ? join(this.tmp.path, 'no-such-target') : dirOf(mounts);
    const hostBefore = hostEscapes();
    const before = listTree(this.tmp.path, dir);
    try {
      await this.applyOne(fc, digest, mounts, res);
      const after = listTree(this.tmp.path, dir);
      for (const d of diffTrees(before, after)) res.problems.push(`outside the target: ${d}`);
      const hostAfter = hostEscapes();
      for (const h of hostAfter) if (!hostBefore.includes(h)) res.problems.push(`written on the host: /${h}`);
      const mounts2 = tempMounts(this.tmp.path);
      if (mounts2.length > 0) res.problems.push(`mounts left: ${mounts2.join(', ')}`);
    } finally {
      try {
        if (!tmpfs) await sn.remove(key);
        await sn.cleanup();
        if (exists(dir)) res.problems.push('the snapshot directory is still there after Remove and Cleanup');
        const trash = join(this.tmp.path, 'sn', 'overlay', 'trash');
        if (exists(trash) && readdirSync(trash).length > 0) res.problems.push(`left in the overlay trash: ${readdirSync(trash).join(', ')}`);
      } catch (err) {
        res.problems.push(`removing the snapshot failed: ${String(err)}`);
      }
      await this.content.delete(digest).catch(() => undefined);
      // The target's files are closed by the time apply settles. (Blobs are not: the content store keeps a read
      // handle open for a second after its last reader, by design; the test checks them at the end.)
      const blobs = join(this.tmp.path, 'content', 'blobs');
      const fds = openFds(this.tmp.path).inside.filter((p) => !/\.db(-wal|-shm)?$/.test(p) && !p.startsWith(blobs));
      if (fds.length > 0) res.problems.push(`file descriptors left open: ${fds.join(', ')}`);
    }
    if (this.unhandled.length > 0) res.problems.push(`unhandled rejection: ${this.unhandled.splice(0).map(String).join('; ')}`);
    res.ms = Date.now() - started;
    return res;
  }

  private async applyOne(fc: FuzzCase, digest: string, mounts: Mount[], res: CaseResult): Promise<void> {
    const desc = { mediaType: fc.mediaType, digest, size: fc.blob.length };
    let timer: NodeJS.Timeout | undefined;
    const hang = new Promise<'hang'>((resolve) => (timer = setTimeout(() => resolve('hang'), CASE_TIMEOUT_MS)));
    try {
      const out = await Promise.race([this.differ.apply(desc, mounts, this.content), hang]);
      if (out === 'hang') {
        res.outcome = 'hang';
        res.problems.push(`apply did not settle in ${CASE_TIMEOUT_MS} ms`);
        return;
      }
      if (!fc.wrapperDamaged) {
        const want = `sha256:${createHash('sha256').update(fc.tar).digest('hex')}`;
        if (out.digest !== want) res.problems.push(`diffID ${out.digest}, the tar's is ${want}`);
        if (out.size !== fc.tar.length) res.problems.push(`size ${out.size}, the tar has ${fc.tar.length} bytes`);
      }
    } catch (err) {
      if (!(err instanceof StrataError)) {
        res.outcome = 'untyped';
        res.message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
        res.problems.push(`not a StrataError: ${res.message.slice(0, 500)}`);
        return;
      }
      res.outcome = err.kind;
      res.message = err.message;
      // 'unknown' is for the host failing (no space, I/O); a layer's fault is one of the named kinds.
      if (err.kind === 'unknown') res.problems.push(`kind unknown for a layer's fault: ${err.message.slice(0, 500)}`);
      if (!KINDS.includes(err.kind)) res.problems.push(`kind ${JSON.stringify(err.kind)} is not one of containerd's`);
      // The layer's own names may spell the sentinel's path; the daemon's directories must never appear.
      for (const p of this.hostPaths(dirOf(mounts))) {
        if (err.message.includes(p)) res.problems.push(`host path ${p} in the message: ${err.message.slice(0, 500)}`);
      }
      if (err.message.length > 1000) res.problems.push(`message of ${err.message.length} characters`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Paths of the daemon's side a message must not show: the target, the snapshotters' and the content store's roots. */
  private hostPaths(target: string): string[] {
    return [target, join(this.tmp.path, 'sn'), join(this.tmp.path, 'content'), join(this.tmp.path, 'mnt'), '/tmp/strata-mount-'];
  }

  private savedTmpdir: string | undefined;

  async close(): Promise<void> {
    process.off('unhandledRejection', this.onUnhandled);
    if (this.savedTmpdir === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = this.savedTmpdir;
    await this.overlay.close();
    await this.native.close();
    this.md.close();
    await this.tmp.cleanup();
  }

  /** Names under the fuzzer's temp dir (outside any target) for a final check: every snapshot but the base is gone. */
  async snapshotDirs(): Promise<{ overlay: string[]; native: string[] }> {
    return {
      overlay: await readdir(join(this.tmp.path, 'sn', 'overlay', 'snapshots')),
      native: await readdir(join(this.tmp.path, 'sn', 'native', 'snapshots')),
    };
  }
}

/** The directory a snapshot's mounts write to: an overlay's upperdir or a bind mount's source. */
function dirOf(mounts: Mount[]): string {
  const m = mounts[0]!;
  const upper = m.options.find((o) => o.startsWith('upperdir='));
  return upper ? upper.slice('upperdir='.length) : m.source;
}

function exists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/** Every path under root except `skip` and below it, with what a write would change; SQLite files aside. */
function listTree(root: string, skip: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (p === skip) continue;
      if (/\.db(-wal|-shm|-journal)?$/.test(name)) continue;
      const st = lstatSync(p, { bigint: true });
      // The differ's temporary mount points come and go in mnt/ (its mtime moves); what is in it is compared.
      const mtime = name === 'mnt' && d === root ? '-' : st.mtimeNs;
      out.set(p, `${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.size} ${mtime} ${st.ino} ${st.nlink}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(root);
  return out;
}

function diffTrees(a: Map<string, string>, b: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [p, v] of a) {
    const w = b.get(p);
    if (w === undefined) out.push(`removed ${p}`);
    else if (w !== v) out.push(`changed ${p}: ${v} -> ${w}`);
  }
  for (const p of b.keys()) if (!a.has(p)) out.push(`added ${p}`);
  return out;
}

/** Names in `/` and in the process's cwd that a layer would only have made by escaping. */
export function hostEscapes(): string[] {
  return [
    ...readdirSync('/').filter((n) => n.startsWith(HOST_ESCAPE_PREFIX)),
    ...readdirSync(process.cwd())
      .filter((n) => n.startsWith(HOST_ESCAPE_PREFIX))
      .map((n) => `<cwd>/${n}`),
  ];
}

/** Mounts under `dir` (the targets here are directories: the applier mounts nothing; other tests' mounts live elsewhere). */
export function tempMounts(dir: string): string[] {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .filter((p) => p.startsWith(`${dir}/`));
}

/** Open file descriptors of this process: how many, and those open on something under `under`. */
export function openFds(under: string): { count: number; inside: string[] } {
  const inside: string[] = [];
  const fds = readdirSync('/proc/self/fd');
  for (const fd of fds) {
    try {
      const t = readlinkSync(`/proc/self/fd/${fd}`);
      if (t.startsWith(under)) inside.push(t);
    } catch {
      // closed meanwhile (the readdir's own fd)
    }
  }
  return { count: fds.length, inside };
}
