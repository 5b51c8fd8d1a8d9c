/**
 * A scratch btrfs filesystem for tests: a sparse 1 GiB image on a loop device (test/helpers/loopfs.ts).
 * cleanup() unmounts whatever is still mounted under it, then the filesystem, detaches the device and removes
 * the directory. Needs root.
 */
import { makeLoopFs, type LoopFs } from './loopfs.js';

export type BtrfsFs = LoopFs;

export function makeBtrfs(size = 1 << 30): Promise<BtrfsFs> {
  return makeLoopFs('btrfs', size);
}
