/**
 * The contract of Strata's FUSE layer (src/fuse, rank 1.5: imports core and log only).
 *
 * A LayerSource is a read-only tree of nodes that are all known up front (an eStargz TOC, a tar index...),
 * plus a way to read a regular file's bytes, which may be slow (a registry Range request). mountReadOnly
 * serves such a tree at a mountpoint, in the calling process.
 */
import type { Logger } from '../log/index.js';

export interface LayerNode {
  /** Unique per source; the root is 1. A hard link is the same node (same ino) under two names. */
  ino: number;
  type: 'dir' | 'reg' | 'symlink' | 'char' | 'block' | 'fifo';
  /** Permission bits including setuid/setgid/sticky (no file-type bits). */
  mode: number;
  uid: number;
  gid: number;
  /** reg: bytes; symlink: target length; dir: 0. */
  size: number;
  mtimeMs: number;
  nlink: number;
  /** Symlink target. */
  linkName?: string;
  /** char/block devices (an overlay whiteout is char 0:0). */
  devMajor?: number;
  devMinor?: number;
  /** Extended attributes, e.g. trusted.overlay.opaque = 'y' for an opaque directory. */
  xattrs: Map<string, Buffer>;
  /** Directories only. */
  children?: Map<string, LayerNode>;
}

export interface LayerSource {
  readonly root: LayerNode;
  /** Bytes [offset, offset+length) of a regular file (shorter at EOF). Rejecting makes the read EIO. */
  read(node: LayerNode, offset: number, length: number): Promise<Buffer>;
}

export interface FuseMount {
  readonly mountpoint: string;
  /** Lazy-detaches when busy; never throws for 'not mounted'. */
  unmount(): Promise<void>;
}

export interface MountOptions {
  /** The first field of /proc/mounts for this mount (default 'strata'). */
  fsName?: string;
  log?: Logger;
  /** The mount's readahead in KiB (default 4096; 0 keeps the kernel's 128; needs root). */
  readAheadKiB?: number;
  /** Which binding serves (default: 'fuse3' when built, see docs/fuse.md); the other is for comparison. */
  binding?: FuseBinding;
}

export type FuseBinding = 'fuse3' | 'fuse-native';
