/**
 * The differ contract (containerd's diff.Applier and diff.Comparer). One implementation ('walking') lives in
 * this folder; the diff gRPC service translates to it. Content is passed per call because it is namespaced
 * (and leased) per call.
 */
import type { ContentStore } from '../content/types.js';
import type { Mount } from '../core/mount.js';
import type { Descriptor } from '../core/descriptor.js';

export interface ApplyOpts {
  /** Called with the uncompressed bytes read so far (progress); optional. */
  onProgress?: (bytes: number) => void;
  /**
   * Called once applied with the directories the layer implied without entries of their own and that no lower
   * layer of the target described (so they were made 0755 root), relative to the root. The parallel unpacker
   * gives them the parent's metadata before committing onto it, as an in-order apply would have.
   */
  onImplicitDirs?: (paths: string[]) => void;
}

export interface Applier {
  /**
   * Applies the layer `desc` (a blob in `content`) onto `mounts`, streaming: decompressed by media type,
   * whiteouts honoured. An overlay mount with an upperdir (or a single bind mount) is written straight into
   * that directory; anything else is mounted on a temporary directory first and unmounted after.
   * Returns the uncompressed descriptor: { mediaType: application/vnd.oci.image.layer.v1.tar, digest: diffID,
   * size: uncompressed size }.
   * Errors: 'invalid argument' (unknown media type, hostile layer, corrupt stream), 'not found' (no blob).
   * On error the target is partly written: the caller discards the snapshot.
   */
  apply(desc: Descriptor, mounts: Mount[], content: ContentStore, opts?: ApplyOpts): Promise<Descriptor>;
}

export interface CompareOpts {
  /** Media type of the result: tar+gzip (default), or plain tar (application/vnd.oci.image.layer.v1.tar). */
  mediaType?: string;
  /** Ingest ref for the content writer (default a random one). */
  ref?: string;
  /** Labels for the committed blob; containerd.io/uncompressed is always added. */
  labels?: Record<string, string>;
}

export interface Comparer {
  /**
   * Computes the layer that turns `lower` into `upper` (both mount lists; lower may be [] for the first layer),
   * writes it into `content` and returns its descriptor. Overlay whiteouts for deletions.
   */
  compare(lower: Mount[], upper: Mount[], content: ContentStore, opts?: CompareOpts): Promise<Descriptor>;
}

export interface Differ extends Applier, Comparer {}
