/**
 * Strata's FUSE layer: serve a read-only LayerSource (an eStargz layer, a tar...) at a mountpoint, in the
 * calling process. docs/fuse.md says which binding serves and why.
 */
import { invalidArgument, unavailable } from '../core/errdefs.js';
import { stat } from 'node:fs/promises';
import { mountWithFuseNative } from './fuse-native.js';
import { fuse3BindingPath, mountWithFuse3 } from './fuse3.js';
import type { FuseBinding, FuseMount, LayerSource, MountOptions } from './types.js';

export type { FuseBinding, FuseMount, LayerNode, LayerSource, MountOptions } from './types.js';

/** Strata's own libfuse 3 binding when scripts/setup.sh has built it, else fuse-native (docs/fuse.md). */
export const defaultBinding = (): FuseBinding => (fuse3BindingPath() ? 'fuse3' : 'fuse-native');

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
  try {
    const binding = opts.binding ?? defaultBinding();
    return binding === 'fuse3' ? await mountWithFuse3(mountpoint, source, opts) : await mountWithFuseNative(mountpoint, source, opts);
  } catch (err) {
    throw unavailable(`mounting a FUSE layer: ${(err as Error).message}`, err);
  }
}
