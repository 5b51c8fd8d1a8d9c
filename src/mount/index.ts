/**
 * Performing the mounts a snapshotter returns, the way containerd's mount package does: "bind" mounts with
 * bind/rbind options, anything else by type. Overlay option strings longer than the kernel's one-page limit
 * are compacted as containerd compacts them: every layer path is made relative to their common directory,
 * and the mount runs with that directory as its working directory.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rmdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';
import { promisify } from 'node:util';
import type { Mount } from '../core/mount.js';
import { StrataError, unknown } from '../core/errdefs.js';

const run = promisify(execFile);

/** The kernel takes mount data up to one page; containerd keeps 512 bytes of slack. */
const MAX_OPTIONS = 4096 - 512;

function commonDir(paths: string[]): string {
  const split = paths.map((p) => p.split(sep));
  const first = split[0]!;
  let n = first.length;
  for (const parts of split.slice(1)) {
    let i = 0;
    while (i < n && i < parts.length && parts[i] === first[i]) i++;
    n = i;
  }
  return first.slice(0, n).join(sep) || sep;
}

/** Rewrites an overlay mount's options relative to the layers' common directory when they are too long. */
export function compactOverlayOptions(options: string[]): { options: string[]; cwd?: string } {
  if (options.join(',').length < MAX_OPTIONS) return { options };
  const layerKeys = ['lowerdir=', 'upperdir=', 'workdir='];
  const paths: string[] = [];
  for (const o of options) {
    const k = layerKeys.find((p) => o.startsWith(p));
    if (k) paths.push(...o.slice(k.length).split(':').filter((x) => x.startsWith('/')));
  }
  if (paths.length === 0) return { options };
  const cwd = commonDir(paths);
  const rewritten = options.map((o) => {
    const k = layerKeys.find((p) => o.startsWith(p));
    if (!k) return o;
    return k + o.slice(k.length).split(':').map((x) => (x.startsWith('/') ? relative(cwd, x) || '.' : x)).join(':');
  });
  return { options: rewritten, cwd };
}

async function mountOne(m: Mount, target: string): Promise<void> {
  const isBind = m.type === 'bind' || m.options.includes('bind') || m.options.includes('rbind');
  let options = m.options;
  let cwd: string | undefined;
  if (m.type === 'overlay') ({ options, cwd } = compactOverlayOptions(options));
  const args = isBind ? [] : ['-t', m.type];
  if (options.length > 0) args.push('-o', options.join(','));
  args.push(m.source, target);
  try {
    await run('mount', args, { cwd });
    // A read-only bind needs a remount on kernels/tools that ignore ro on the first call.
    if (isBind && options.includes('ro')) {
      await run('mount', ['-o', 'remount,ro,bind', target]).catch(() => undefined);
    }
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw unknown(`mount ${m.type} ${m.source} on ${target}: ${(e.stderr || e.message).trim()}`);
  }
}

/** Mounts every mount onto target, in order. On failure, whatever was mounted is undone. */
export async function mountAll(mounts: Mount[], target: string): Promise<void> {
  let done = 0;
  try {
    for (const m of mounts) {
      await mountOne(m, target);
      done++;
    }
  } catch (err) {
    for (; done > 0; done--) await unmount(target).catch(() => undefined);
    throw err;
  }
}

/** Unmounts target (all stacked mounts on it, since mountAll may stack several). */
export async function unmount(target: string): Promise<void> {
  try {
    await run('umount', [target]);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    const msg = (e.stderr || e.message).trim();
    if (/not mounted|no mount point/i.test(msg)) return;
    throw new StrataError('unknown', `umount ${target}: ${msg}`);
  }
  // Stacked mounts: keep going until the target is no longer a mount point.
  while (await isMountPoint(target)) await run('umount', [target]);
}

export async function isMountPoint(path: string): Promise<boolean> {
  try {
    await run('mountpoint', ['-q', path]);
    return true;
  } catch {
    return false;
  }
}

/** Mounts on a fresh temporary directory, runs fn with its path, then unmounts and removes it. */
export async function withTempMount<T>(mounts: Mount[], fn: (root: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-mount-'));
  try {
    await mountAll(mounts, dir);
    try {
      return await fn(dir);
    } finally {
      await unmount(dir);
    }
  } finally {
    // rmdir, never rm -r: if the unmount failed, the directory still shows the snapshot's data.
    await rmdir(dir).catch(() => undefined);
  }
}

/** containerd's readonlyMounts: overlays lose upperdir/workdir (the upperdir becomes the top lowerdir), others get ro. */
export function readonlyMounts(mounts: Mount[]): Mount[] {
  return mounts.map((m) => {
    if (m.type === 'overlay') {
      let upper = '';
      const out: string[] = [];
      for (const o of m.options) {
        if (o.startsWith('upperdir=')) upper = o.slice('upperdir='.length);
        else if (!o.startsWith('workdir=') && o !== 'volatile') out.push(o);
      }
      if (!upper) return { ...m, options: out };
      const hasLower = out.some((o) => o.startsWith('lowerdir='));
      return {
        ...m,
        options: hasLower ? out.map((o) => (o.startsWith('lowerdir=') ? `lowerdir=${upper}:${o.slice('lowerdir='.length)}` : o)) : [...out, `lowerdir=${upper}`],
      };
    }
    return { ...m, options: [...m.options.filter((o) => o !== 'rw' && o !== 'ro'), 'ro'] };
  });
}
