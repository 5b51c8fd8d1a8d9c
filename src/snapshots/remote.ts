/**
 * The remote-snapshot protocol, from a snapshotter's side. A client unpacking an image (containerd's
 * unpacker, Strata's) prepares each layer's extraction snapshot with the label `containerd.io/snapshot.ref`
 * set to the layer's chain ID. A snapshotter that already has that layer (it can fetch it lazily, or made it
 * some other way) commits a snapshot labelled with the same ref, on the same parent, and answers the prepare
 * with ALREADY_EXISTS; the client's metadata layer then finds that committed snapshot by a walk filtered on the
 * label and the parent, records it as the layer, and does not download the layer. Any other answer (mounts)
 * means: the client downloads the layer and applies it on the mounts, then commits.
 */
import { alreadyExists, type StrataError } from '../core/errdefs.js';
import { LABEL_SNAPSHOT_REF } from '../core/labels.js';
import type { SnapshotOpts } from './types.js';

/** Set by remote snapshotters on the snapshots they provide (stargz-snapshotter: "remote snapshot"). */
export const LABEL_REMOTE_SNAPSHOT = 'containerd.io/snapshot/remote';

/** The chain ID a prepare asks for (its `containerd.io/snapshot.ref` label), or undefined for a plain prepare. */
export function snapshotRef(opts: SnapshotOpts | undefined): string | undefined {
  const ref = opts?.labels?.[LABEL_SNAPSHOT_REF];
  return ref ? ref : undefined;
}

/**
 * The answer to a labelled prepare once the snapshot `ref` is committed (labelled with LABEL_SNAPSHOT_REF =
 * ref, on the parent the prepare named): throw it.
 */
export function targetExists(ref: string): StrataError {
  return alreadyExists(`target snapshot ${JSON.stringify(ref)}`);
}
