/**
 * Strata's FUSE layer: serve a read-only LayerSource (an eStargz layer, a tar...) at a mountpoint, in the
 * calling process. It serves with Strata's own N-API binding of libfuse 3 (native/fuse3-napi.c); npm's
 * fuse-native is kept only for comparison (bench/fuse.ts, `binding: 'fuse-native'`). docs/fuse.md says why.
 */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { invalidArgument, unavailable } from '../core/errdefs.js';
import { mountWithFuseNative } from './fuse-native.js';
import { fuse3BindingPath, loadFuse3, mountWithFuse3 } from './fuse3.js';
import { settleAndTuneReadahead } from './mounts.js';
import type { FuseMount, LayerSource, MountOptions } from './types.js';

export type { FuseBinding, FuseMount, LayerNode, LayerSource, MountOptions } from './types.js';
export { isMounted } from './mounts.js';

/** The readahead a mount gets (KiB): one eStargz chunk (4 MiB), read as 1 MiB requests, libfuse 3's largest. */
export const DEFAULT_READAHEAD_KIB = 4096;

/** Why mountReadOnly cannot work on this host (for a plugin's skip reason), or undefined when it can. */
export function fuseUnavailableReason(): string | undefined {
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing (no FUSE in this kernel or container)';
  if (!fuse3BindingPath()) return 'the FUSE binding (native/bin/strata-fuse3.node) is not built: run scripts/build-native.sh';
  return undefined;
}

/**
 * Loads the libfuse 3 binding now, when it is built: a long-lived server that mounts later (lazyfs) does not load
 * it, cold, inside its first mount.
 */
export function preloadFuse(): void {
  if (fuse3BindingPath()) loadFuse3();
}

/** Mounts `source` read-only at `mountpoint` (allow_other, default_permissions, so a container's users read
 *  it as the kernel's permission checks say). Works in the calling process; the calling process serves it. */
export async function mountReadOnly(
  mountpoint: string,
  source: LayerSource,
  opts: MountOptions = {},
): Promise<FuseMount> {
  if (source.root.ino !== 1 || source.root.type !== 'dir') throw invalidArgument('a FUSE layer source needs a directory root with inode 1');
  const st = await stat(mountpoint).catch(() => undefined);
  if (!st?.isDirectory()) throw invalidArgument('the FUSE mountpoint is not a directory');
  const binding = opts.binding ?? 'fuse3';
  if (binding === 'fuse3') {
    const reason = fuseUnavailableReason();
    if (reason) throw unavailable(`mounting a FUSE layer: ${reason}`);
  }
  let mount: FuseMount;
  try {
    mount = binding === 'fuse3' ? await mountWithFuse3(mountpoint, source, opts) : await mountWithFuseNative(mountpoint, source, opts);
  } catch (err) {
    // libfuse's messages name the mountpoint: never a host path in an error.
    const msg = ((err as Error).message ?? String(err)).split(mountpoint).join('<mountpoint>');
    throw unavailable(`mounting a FUSE layer: ${msg}`, err);
  }
  try {
    await settleAndTuneReadahead(mountpoint, opts.readAheadKiB ?? DEFAULT_READAHEAD_KIB, opts.log);
  } catch (err) {
    await mount.unmount();
    throw unavailable(`a new FUSE mount does not answer: ${(err as NodeJS.ErrnoException).code ?? 'error'}`, err);
  }
  return mount;
}
