/**
 * An image whose layers hold every whiteout case containerd 2.2's parallel unpack got wrong (#13030), for the
 * parallel-unpack tests: a file deleted by an upper layer, a directory made opaque, a whiteout of a file that
 * exists only two layers down, a directory replaced by a file and a file replaced by a directory, a whiteout of
 * a directory, a file re-added after its whiteout, a file in a directory the layer has no entry for; plus modes, owners, xattrs, symlinks and hard links.
 */
import { buildLayer, type BuiltLayer, type LayerSpec } from './images.js';
import { makeTar } from './tar.js';

const filler = (n: number, seed: string) => Buffer.alloc(n, seed);

/** The six layers' specs, bottom first (buildImage takes them as they are). */
export async function whiteoutLayerSpecs(): Promise<LayerSpec[]> {
  const base = await makeTar([
    { name: 'a/', type: 'directory', mode: 0o755 },
    { name: 'a/keep', body: 'keep' },
    { name: 'a/del', body: 'deleted above' },
    { name: 'd/', type: 'directory', mode: 0o750, uid: 7, gid: 8 },
    { name: 'd/x', body: 'x' },
    { name: 'f', body: 'a file, later a directory' },
    { name: 'deep', body: 'whited out two layers up' },
    { name: 'o/', type: 'directory', mode: 0o755 },
    { name: 'o/old', body: 'hidden by the opaque directory' },
    { name: 'o/sub/', type: 'directory', mode: 0o755 },
    { name: 'o/sub/old2', body: 'also hidden' },
    { name: 'w/', type: 'directory', mode: 0o755 },
    { name: 'w/1', body: 'in a directory whited out' },
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
    { name: 'secret', body: 'mode and xattr', mode: 0o600, uid: 1000, gid: 1000, pax: { 'SCHILY.xattr.user.note': 'kept' } },
    { name: 'big', body: filler(256 << 10, 'b') },
  ]);
  return [
    { entries: [], tar: base },
    {
      compression: 'zstd',
      entries: [
        { path: 'noise', content: filler(128 << 10, 'n') },
        { path: 'a', type: 'dir' },
        { path: 'a/more', content: 'more' },
        { path: 'tmp', type: 'dir', mode: 0o1777 },
        { path: 'tmp/t1', content: 't1' },
      ],
    },
    {
      entries: [
        { path: 'a', type: 'dir' },
        { path: 'a/del', type: 'whiteout' },
        { path: 'deep', type: 'whiteout' },
        { path: 'o', type: 'dir' },
        { path: 'o', type: 'opaque' },
        { path: 'o/new', content: 'new in the opaque directory' },
        { path: 'd', content: 'a directory, now a file' },
        { path: 'f', type: 'dir', mode: 0o711 },
        { path: 'f/inner', content: 'inside what was a file' },
        { path: 'w', type: 'whiteout' },
        { path: 'filler2', content: filler(64 << 10, '2') },
      ],
    },
    {
      entries: [
        { path: 'deep', content: 'back again' },
        { path: 'link', type: 'symlink', linkname: 'a/keep' },
        { path: 'hard1', content: 'linked' },
        { path: 'hard2', type: 'hardlink', linkname: 'hard1' },
        { path: 'filler3', content: filler(32 << 10, '3') },
        // No tmp/ entry: tmp keeps the 1777 of the layers below (taken from the parent after a rebase).
        { path: 'tmp/t2', content: 't2' },
      ],
    },
    {
      entries: [
        { path: 'a', type: 'dir' },
        { path: 'a/keep', type: 'whiteout' },
        { path: 'a/keep', content: 'replaced in the same layer' },
        { path: 'secret', type: 'whiteout' },
        { path: 'f', type: 'dir', mode: 0o711 },
        { path: 'f/second', content: 'second' },
      ],
    },
    {
      compression: 'none',
      entries: [
        { path: 'd', type: 'whiteout' },
        { path: 'd', type: 'dir', mode: 0o700 },
        { path: 'd/again', content: 'a directory again' },
        { path: 'top', content: filler(96 << 10, 't') },
      ],
    },
  ];
}


/** The six layers, built. */
export async function whiteoutLayers(): Promise<BuiltLayer[]> {
  return Promise.all((await whiteoutLayerSpecs()).map((l) => buildLayer(l)));
}
