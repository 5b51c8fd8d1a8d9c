/**
 * Removing directory trees deeper than any full path may be (PATH_MAX, 4096 bytes): the shared remover
 * (src/core/remove.ts) on its own, and what it is for: a layer with a 100,000-level path fails to unpack with
 * ENAMETOOLONG after creating ~2,000 nested directories, and removing its snapshot (or the cleanup that runs at
 * start and after a collection) must give that disk back, with the overlay and the native snapshotter.
 */
import { mkdirSync, readdirSync, renameSync, rmdirSync } from 'node:fs';
import { mkdir, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { removeTree, removeTreeSync } from '../../src/core/remove.js';
import { NO_LIMITS } from '../../src/diff/limits.js';
import { MediaTypeImageLayerGzip } from '../../src/diff/mediatypes.js';
import { WalkingDiffer } from '../../src/diff/walking.js';
import { openNativeSnapshotter } from '../../src/snapshots/native/index.js';
import { openOverlaySnapshotter } from '../../src/snapshots/overlay/index.js';
import type { Snapshotter } from '../../src/snapshots/types.js';
import { contentStore, putBlob } from '../diff/helpers.js';
import { makeTar } from '../helpers/tar.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let tmp: TempDir;
beforeAll(async () => {
  tmp = await tempDir('strata-deep-');
});
afterAll(async () => {
  await tmp?.cleanup();
});

/** A chain of `depth` nested directories named `a` under `top`, deeper than a full path can reach. */
function deepChain(top: string, depth: number): void {
  // Built bottom-up in pieces of 1,500 levels (3 KB of path): each piece is made at a short path, the chain so
  // far is moved under its bottom (both paths fit), and the piece becomes the chain.
  mkdirSync(top);
  const piece = join(top, '..piece');
  for (let made = 0; made < depth; ) {
    const rel = Array<string>(Math.min(1500, depth - made)).fill('a');
    mkdirSync(join(piece, ...rel), { recursive: true });
    if (made > 0) renameSync(join(top, 'a'), join(piece, ...rel, 'a'));
    renameSync(join(piece, 'a'), join(top, 'a'));
    made += rel.length;
  }
  rmdirSync(piece);
}

/** How deep the chain of `a` directories under `top` goes, walked with renames (no full path is too long). */
function depthOf(top: string): number {
  let depth = 0;
  let cur = top;
  const moves: [string, string][] = [];
  for (;;) {
    let i = 0;
    while (i < 1000 && readdirSync(cur).includes('a')) {
      cur = join(cur, 'a');
      depth++;
      i++;
    }
    if (i < 1000) break;
    const up = join(top, `..count-${moves.length}`);
    renameSync(cur, up);
    moves.push([up, cur]);
    cur = up;
  }
  for (const [from, to] of moves.reverse()) renameSync(from, to);
  return depth;
}

describe('the shared remover', () => {
  it('builds a test tree deeper than PATH_MAX (the helper itself works)', () => {
    const top = join(tmp.path, 'probe');
    deepChain(top, 3000);
    expect(depthOf(top)).toBe(3000);
    removeTreeSync(top);
  });

  it('removes a 4,000-level tree that no full path can reach (async)', async () => {
    const top = join(tmp.path, 'deep-async');
    deepChain(top, 4000);
    await removeTree(top);
    expect(await readdir(tmp.path)).not.toContain('deep-async');
  });

  it('removes a 4,000-level tree that no full path can reach (sync)', () => {
    const top = join(tmp.path, 'deep-sync');
    deepChain(top, 4000);
    removeTreeSync(top);
    expect(readdirSync(tmp.path)).not.toContain('deep-sync');
  });

  it('removes ordinary trees and files, and a missing path is not an error', async () => {
    const top = join(tmp.path, 'plain');
    await mkdir(join(top, 'x/y'), { recursive: true });
    await removeTree(top);
    await removeTree(top);
    removeTreeSync(top);
    await expect(stat(top)).rejects.toThrow(/ENOENT/);
  });
});

/** A gzipped layer with one file at a 100,000-level path (a/a/.../f, 200 KB of name). */
async function deepLayer(): Promise<Buffer> {
  return gzipSync(await makeTar([{ name: `${'a/'.repeat(100_000)}f`, body: 'x' }]));
}

/** The entries of a directory, sorted. */
async function entriesBelow(dir: string): Promise<string[]> {
  return (await readdir(dir)).sort();
}

describe.each([
  ['overlayfs', (root: string) => openOverlaySnapshotter(root), 'snapshots'],
  ['native', (root: string) => openNativeSnapshotter(root), 'snapshots'],
] as const)('a failed deep unpack with the %s snapshotter', (name, open, sub) => {
  let sn: Snapshotter;
  let root: string;
  beforeAll(async () => {
    root = join(tmp.path, name);
    sn = await open(root);
  });
  afterAll(async () => {
    await sn?.close();
  });

  it('fails with ENAMETOOLONG, and removing the snapshot gives every directory back', async () => {
    const { content, md } = await contentStore(join(tmp.path, `${name}-content`));
    try {
      const blob = await deepLayer();
      const digest = await putBlob(content, blob);
      const mounts = await sn.prepare('extract-deep', '');
      const before = await entriesBelow(join(root, sub));
      expect(before.length).toBe(1);
      // Without limits: the default max_path_length would refuse this name before creating anything.
      const err = await new WalkingDiffer({ limits: NO_LIMITS })
        .apply({ mediaType: MediaTypeImageLayerGzip, digest, size: blob.length }, mounts, content)
        .catch((e: unknown) => e);
      expect(String(err)).toMatch(/too long|ENAMETOOLONG/i);
      // The failed unpack did leave its ~2,000 directories in the snapshot.
      const dir = join(root, sub, before[0]!);
      const created = name === 'overlayfs' ? join(dir, 'fs') : dir;
      expect(depthOf(created)).toBeGreaterThan(1000);
      await sn.remove('extract-deep');
      expect(await entriesBelow(join(root, sub))).toEqual([]);
    } finally {
      md.close();
    }
  });

  it('cleanup() reclaims a deep directory an earlier version left behind', async () => {
    const leftover = join(root, sub, 'rm-999');
    deepChain(leftover, 3000);
    await sn.cleanup!();
    expect(await entriesBelow(join(root, sub))).toEqual([]);
  });
});
