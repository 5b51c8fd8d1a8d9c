/**
 * What every FUSE binding needs from a LayerSource's tree: the file-type bits of a node's mode, its rdev, the
 * node of a path (path-based bindings), and the node of an inode number (inode-based bindings).
 */
import type { LayerNode, LayerSource } from './types.js';

const S_IFMT: Record<LayerNode['type'], number> = {
  dir: 0o040000,
  reg: 0o100000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
};

/** st_mode: the type bits plus the node's permission bits. */
export const statMode = (n: LayerNode): number => S_IFMT[n.type] | (n.mode & 0o7777);

/** Linux's makedev (the glibc encoding). */
export function makedev(major: number, minor: number): number {
  // ((major & 0xfffff000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffffff00) << 12) | (minor & 0xff), in
  // arithmetic because JavaScript's shifts are 32-bit.
  return (major & 0xfffff000) * 2 ** 32 + (major & 0xfff) * 2 ** 8 + (minor & 0xffffff00) * 2 ** 12 + (minor & 0xff);
}

export const rdevOf = (n: LayerNode): number =>
  n.type === 'char' || n.type === 'block' ? makedev(n.devMajor ?? 0, n.devMinor ?? 0) : 0;

/** 512-byte blocks, as `du` reads them. */
export const blocksOf = (n: LayerNode): number => (n.type === 'reg' ? Math.ceil(n.size / 512) : 0);

/** Every node of the tree by inode number (a hard link is visited once). */
export function indexInodes(source: LayerSource): Map<number, LayerNode> {
  const byIno = new Map<number, LayerNode>();
  const stack = [source.root];
  while (stack.length > 0) {
    const n = stack.pop()!;
    if (byIno.has(n.ino)) continue;
    byIno.set(n.ino, n);
    if (n.children) for (const c of n.children.values()) stack.push(c);
  }
  return byIno;
}

/** The node at an absolute path of the mount ('/', '/etc/passwd'), or undefined. */
export function lookupPath(root: LayerNode, path: string): LayerNode | undefined {
  let n: LayerNode | undefined = root;
  for (const part of path.split('/')) {
    if (part === '') continue;
    n = n.children?.get(part);
    if (!n) return undefined;
  }
  return n;
}
