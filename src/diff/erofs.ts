/**
 * The EROFS differ ("io.containerd.differ.v1.erofs", as containerd 2.1's). Like containerd's, it applies only onto
 * an EROFS snapshotter's active snapshot, which it recognises by the `.erofslayer` file beside the snapshot's
 * upper dir (src/snapshots/erofs), and answers NOT_IMPLEMENTED for any other mount so that a caller falls back to
 * another differ (containerd's diff service tries its differs in order and skips that answer).
 *
 * containerd's differ pipes the tar into `mkfs.erofs --tar=f` (erofs-utils 1.6 and later) and leaves
 * `layer.erofs` for the snapshotter's Commit. Debian's erofs-utils 1.5 has no tar mode, so this one extracts
 * into the upper dir with the walking applier (streaming, whiteouts as overlay whiteouts, the same limits) and
 * the snapshotter builds the image from it at Commit, which is what containerd's snapshotter does for a layer
 * applied by the walking differ. What a client sees is the same: Apply returns the layer's diffID descriptor,
 * Commit leaves one image. Compare is the walking differ's (containerd's reads the upper's `fs` the same way).
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ContentStore } from '../content/types.js';
import type { Descriptor } from '../core/descriptor.js';
import { notImplemented } from '../core/errdefs.js';
import type { Mount } from '../core/mount.js';
import { isBindMount, parseOverlayOptions } from '../mount/index.js';
import type { ApplyOpts, CompareOpts, Differ } from './types.js';

/** The file an EROFS snapshotter puts in each snapshot directory (containerd's name). */
const EROFS_LAYER_MARKER = '.erofslayer';

/**
 * The snapshot directory of an EROFS snapshotter's mounts (the parent of the upper dir of an overlay, or of the
 * source of a single bind), or undefined when the mounts are not an EROFS snapshotter's active snapshot.
 */
export function erofsLayerDir(mounts: Mount[]): string | undefined {
  if (mounts.length !== 1) return undefined;
  const m = mounts[0]!;
  let upper: string | undefined;
  if (m.type === 'overlay') upper = parseOverlayOptions(m.options).upperdir;
  else if (isBindMount(m) && !m.options.includes('ro')) upper = m.source;
  if (!upper) return undefined;
  const dir = dirname(upper);
  return existsSync(join(dir, EROFS_LAYER_MARKER)) ? dir : undefined;
}

export class ErofsDiffer implements Differ {
  constructor(private readonly walking: Differ) {}

  async apply(desc: Descriptor, mounts: Mount[], content: ContentStore, opts?: ApplyOpts): Promise<Descriptor> {
    if (!erofsLayerDir(mounts)) {
      throw notImplemented('erofs differ: the mounts are not an EROFS snapshotter active snapshot');
    }
    return this.walking.apply(desc, mounts, content, opts);
  }

  compare(lower: Mount[], upper: Mount[], content: ContentStore, opts?: CompareOpts): Promise<Descriptor> {
    return this.walking.compare(lower, upper, content, opts);
  }
}
