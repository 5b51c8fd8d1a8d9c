/**
 * Host checks for the overlayfs snapshotter: can this host mount overlayfs with its layers under a given root,
 * and which optional mount options ("index=off", "userxattr") apply here. Semantics follow containerd 1.6's
 * overlayutils (Supported, NeedsUserXAttr) and the snapshotter's supportsIndex.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readFile, readdir, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { release } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { formatOverlayDirOption, idmapHelperAvailable, isMountPoint, mountAll, unmount } from '../../mount/index.js';
import type { Logger } from '../../log/index.js';
import type { Mount } from '../../core/mount.js';

const run = promisify(execFile);

const TMPFS_MAGIC = 0x01021994;
const OVERLAYFS_MAGIC = 0x794c7630;
const XFS_MAGIC = 0x58465342;

/** Whether the kernel knows overlayfs's "index" feature, so that "index=off" is accepted. */
export function supportsIndex(): boolean {
  return existsSync('/sys/module/overlay/parameters/index');
}

/**
 * Whether this process runs in a user namespace other than the initial one: the initial namespace maps the
 * whole uid range onto itself ("0 0 4294967295"). Without the file (no user namespaces), it cannot be.
 */
export function runningInUserNS(): boolean {
  let text: string;
  try {
    text = readFileSync('/proc/self/uid_map', 'utf8');
  } catch {
    return false;
  }
  const first = text.split('\n')[0]?.trim().split(/\s+/).map(Number) ?? [];
  return !(first.length === 3 && first[0] === 0 && first[1] === 0 && first[2] === 4294967295);
}

function kernelAtLeast(major: number, minor: number): boolean | undefined {
  const m = /^(\d+)\.(\d+)/.exec(release());
  if (!m) return undefined;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj > major || (maj === major && min >= minor);
}

/** Lower dirs, an upper, a work dir and a mount point in a fresh directory under `parent`. */
async function scratchLayers(parent: string, prefix: string): Promise<{ dir: string; mounts: Mount[]; merged: string }> {
  const dir = await mkdtemp(join(parent, prefix));
  for (const d of ['lower1', 'lower2', 'upper', 'work', 'merged']) await mkdir(join(dir, d), { mode: 0o755 });
  const opts = [
    formatOverlayDirOption('lowerdir', [join(dir, 'lower2'), join(dir, 'lower1')]),
    formatOverlayDirOption('upperdir', [join(dir, 'upper')]),
    formatOverlayDirOption('workdir', [join(dir, 'work')]),
  ];
  return { dir, mounts: [{ type: 'overlay', source: 'overlay', options: opts }], merged: join(dir, 'merged') };
}

async function unmountAndRemove(dir: string, merged: string): Promise<void> {
  await unmount(merged).catch(() => undefined);
  // Never delete through a mount that would not go away.
  if (!(await isMountPoint(merged))) await rm(dir, { recursive: true, force: true });
}

/**
 * Whether overlayfs must be mounted with "userxattr" (containerd's NeedsUserXAttr): never as the real root of
 * the initial user namespace; in a user namespace, yes on kernels from 5.11 (except on tmpfs, which does not
 * take the option), and on older kernels only if a trial mount with the option works.
 */
export async function needsUserXAttr(root: string, log?: Logger): Promise<boolean> {
  if (!runningInUserNS()) return false;
  try {
    if ((await statfs(root)).type === TMPFS_MAGIC) return false;
  } catch (err) {
    log?.warn('cannot statfs the snapshotter root', { root, error: err });
  }
  if (kernelAtLeast(5, 11) === true) return true;
  const checkRoot = join(root, 'userxattr-check');
  await rm(checkRoot, { recursive: true, force: true });
  await mkdir(checkRoot, { recursive: true, mode: 0o700 });
  const { dir, mounts, merged } = await scratchLayers(checkRoot, 'check-');
  try {
    mounts[0]!.options.push('userxattr');
    await mountAll(mounts, merged);
    return true;
  } catch (err) {
    log?.debug('overlayfs does not take "userxattr" here', { error: err });
    return false;
  } finally {
    await unmountAndRemove(dir, merged);
    await rm(checkRoot, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** overlayfs lines ("overlay: ...", "overlayfs: ...") of the kernel log, when this process may read it (best effort, for error messages). */
async function kernelOverlayMessages(): Promise<string[]> {
  try {
    const { stdout } = await run('dmesg', [], { timeout: 3000, maxBuffer: 16 << 20 });
    return stdout.split('\n').filter((l) => /\boverlay(fs)?:/.test(l));
  } catch {
    return [];
  }
}

/**
 * Without d_type in directory entries, overlayfs cannot tell whiteouts from files. Node cannot see d_type
 * itself, so this checks the known case: XFS formatted with ftype=0.
 */
export async function checkDType(root: string): Promise<void> {
  let type: number;
  try {
    type = (await statfs(root)).type;
  } catch {
    return;
  }
  if (type !== XFS_MAGIC) return;
  const info = await run('xfs_info', [root], { timeout: 5000 }).then(
    (r) => r.stdout,
    () => '',
  );
  if (/\bftype=0\b/.test(info)) {
    throw new Error(`${root} does not support d_type. If the backing filesystem is xfs, please reformat with ftype=1 to enable d_type support`);
  }
}

/**
 * Resolves when overlayfs works with layers under `root` (created if missing); otherwise rejects with the reason.
 * Like containerd's overlayutils.Supported it mounts a real overlay of two lower directories under the root;
 * it also writes through it and deletes a lower file (a whiteout), which is what a snapshot's mount does.
 */
export async function checkOverlaySupport(root: string): Promise<void> {
  await mkdir(root, { recursive: true, mode: 0o700 });
  await checkDType(root);
  const { dir, mounts, merged } = await scratchLayers(root, 'multiple-lowerdir-check');
  try {
    await writeFile(join(dir, 'lower1', 'from-lower'), 'x\n');
    const opts = mounts[0]!.options;
    if (supportsIndex()) opts.unshift('index=off');
    if (await needsUserXAttr(root)) opts.unshift('userxattr');
    const kmsgBefore = new Set(await kernelOverlayMessages());
    try {
      await mountAll(mounts, merged);
    } catch (err) {
      const hints: string[] = [];
      // The kernel says why (mount(8) only says "wrong fs type, bad option..."): its words first when readable.
      const kernel = (await kernelOverlayMessages()).filter((l) => !kmsgBefore.has(l)).map((l) => l.replace(/^\[[^\]]*\]\s*/, ''));
      const filesystems = await readFile('/proc/filesystems', 'utf8').catch(() => '');
      if (filesystems && !/\toverlay$/m.test(filesystems)) hints.push('overlay is not in /proc/filesystems (module not loaded?)');
      const rootType = await statfs(root).then((s) => s.type, () => 0);
      if (rootType === OVERLAYFS_MAGIC) hints.push(`${root} is itself on overlayfs, which cannot hold upper directories`);
      if (typeof process.geteuid === 'function' && process.geteuid() !== 0) hints.push(`running as uid ${process.geteuid()}, not root`);
      const msg = kernel.length > 0 ? `kernel: ${kernel.join('; ')}` : err instanceof Error ? err.message : String(err);
      throw new Error(`failed to mount overlay: ${msg}${hints.length > 0 ? ` (${hints.join('; ')})` : ''}`, { cause: err });
    }
    try {
      await writeFile(join(merged, 'written'), 'x\n');
      await rm(join(merged, 'from-lower'));
      const seen = await readdir(merged);
      if (seen.includes('from-lower')) throw new Error('a file deleted from a lower directory still shows');
      if (!(await readdir(join(dir, 'upper'))).includes('written')) throw new Error('a written file did not reach the upper directory');
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      throw new Error(`overlay mounts but does not work as a snapshot: ${msg}`, { cause: err });
    }
  } finally {
    await unmountAndRemove(dir, merged);
  }
}

/**
 * Whether overlays over idmapped lower layers work here, through src/mount exactly as a snapshot's mount goes
 * (containerd's SupportsIDMappedMounts, without its kernel-version shortcut): a lower file owned by 0 must
 * show as the mapped host ID 666 in the overlay, and no temporary mount may be left. Resolves with the reason
 * when not, undefined when it works.
 */
export async function checkIdmapSupport(root: string): Promise<string | undefined> {
  if (!idmapHelperAvailable()) return 'the idmapped-mount helper (native/bin/strata-idmap-mount) is not built';
  await mkdir(root, { recursive: true, mode: 0o700 });
  const { dir, mounts, merged } = await scratchLayers(root, 'idmap-check-');
  try {
    await writeFile(join(dir, 'lower1', 'f'), 'x\n');
    await chown(join(dir, 'upper'), 666, 666);
    const opts = mounts[0]!.options;
    if (supportsIndex()) opts.unshift('index=off');
    opts.unshift('uidmap=0:666:1', 'gidmap=0:666:1');
    try {
      await mountAll(mounts, merged);
    } catch (err) {
      return err instanceof Error ? err.message : String(err);
    }
    const st = await stat(join(merged, 'f'));
    if (st.uid !== 666 || st.gid !== 666) return `bad mapping: expected 666:666, got ${st.uid}:${st.gid}`;
    return undefined;
  } finally {
    await unmountAndRemove(dir, merged);
  }
}
