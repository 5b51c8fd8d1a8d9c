/**
 * The snapshotter contract: containerd's ten operations with containerd's semantics. Every backend
 * (overlayfs, native, btrfs, a proxy to another process...) implements it; the namespaced layer in
 * src/metadata/snapshots.ts stands in front of each one inside the daemon.
 *
 * Rules every implementation keeps:
 *  - keys are unique; prepare/view of an existing key is 'already exists';
 *  - a parent must exist ('not found') and be committed ('invalid argument' otherwise, as containerd);
 *  - only an active snapshot commits ('failed precondition' for a view or committed one; 'not found' if absent);
 *  - removing a snapshot that has children is 'failed precondition';
 *  - a view is read-only; mounts() of a committed snapshot is 'failed precondition' in most backends.
 */
import type { Mount } from '../core/mount.js';
import { INHERITED_LABEL_PREFIX, LABEL_SNAPSHOT_REF } from '../core/labels.js';

export type Kind = 'view' | 'active' | 'committed';

export interface Info {
  kind: Kind;
  /** The key (for committed snapshots, the name given to commit). */
  name: string;
  /** The parent's key, '' for none. */
  parent: string;
  labels: Record<string, string>;
  created: Date;
  updated: Date;
}

export interface Usage {
  /** Bytes of disk this snapshot alone uses (not its parents). */
  size: number;
  /** Inodes this snapshot alone uses. */
  inodes: number;
}


export interface SnapshotOpts {
  labels?: Record<string, string>;
  /**
   * Commit only, containerd 2.2's `snapshots.WithParent` (CommitSnapshotRequest.parent): commit the active
   * snapshot onto this committed parent. Only a backend with the `rebase` capability accepts it for an active
   * snapshot prepared without a parent; a parent equal to the one the snapshot was prepared on is always fine.
   */
  parent?: string;
  /**
   * Prepare only: whether the caller is still there (for a gRPC client, its connection is open). While it is,
   * another client's Prepare of the same layer (same containerd.io/snapshot.ref) waits for this one's extraction
   * instead of extracting the layer a second time (src/metadata/snapshots.ts, awaitOtherExtraction). Without it
   * the caller counts as there until it commits or removes the snapshot (the daemon's own unpacks always do).
   */
  callerAlive?: () => boolean;
}

/**
 * Prepare label (passed to backends and proxy plugins like every `containerd.io/snapshot/` label): the active
 * snapshot is prepared without a parent to be committed onto one later (rebase). A backend whose layers are
 * overlay upper directories then returns a mount under which whiteouts and opaque directories are written in
 * its own format (overlayfs: an overlay mount over an empty lower directory), so that they still hide what the
 * parent has once rebased (containerd 2.2's fault #13030 was a bind mount, where whiteouts vanished).
 */
export const LABEL_SNAPSHOT_REBASE = 'containerd.io/snapshot/strata.rebase';

export type WalkFn = (info: Info) => void | Promise<void>;

/**
 * What a snapshotter may do beyond the ten operations, named as containerd 2.x's snapshotters report them in
 * introspection (the `capabilities` of their plugin entry, which `ctr plugins ls -d` prints). A backend lists
 * only what it implements; callers ask `hasCapability` before relying on one.
 */
export const SnapshotterCapability = {
  /**
   * Commit of an active snapshot prepared without a parent onto a committed parent (containerd 2.2's parallel
   * unpack: layers extracted independently, then committed in order).
   */
  Rebase: 'rebase',
  /** Idmapped mounts from the `containerd.io/snapshot/uidmapping` and `gidmapping` labels (containerd 2.0). */
  RemapIds: 'remap-ids',
  /** Remapping by idmapped mounts only, never by a recursive chown of the files (containerd 2.0). */
  OnlyRemapIds: 'only-remap-ids',
} as const;

export interface Snapshotter {
  /**
   * The capabilities this backend implements (`SnapshotterCapability` names, or any other a proxied plugin
   * declares); absent means none. Its plugin entry in introspection reports exactly these.
   */
  readonly capabilities?: readonly string[];
  stat(key: string): Promise<Info>;
  /** Updates labels by field path ('labels', 'labels.<key>'; none = replace all labels). */
  update(info: Pick<Info, 'name' | 'labels'>, fieldpaths?: string[]): Promise<Info>;
  usage(key: string): Promise<Usage>;
  mounts(key: string): Promise<Mount[]>;
  prepare(key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]>;
  view(key: string, parent: string, opts?: SnapshotOpts): Promise<Mount[]>;
  commit(name: string, key: string, opts?: SnapshotOpts): Promise<void>;
  remove(key: string): Promise<void>;
  /** Calls fn for every snapshot matching the filters (containerd syntax on name, parent, kind, labels.*). */
  walk(fn: WalkFn, filters?: string[]): Promise<void>;
  /** Removes what no record owns (directories or subvolumes left by a crash or a removal). */
  cleanup(): Promise<void>;
  close(): Promise<void>;
}

/** Labels a backend receives from the namespaced layer (containerd's inherited labels). */

export function inheritedLabels(labels: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels ?? {})) {
    if (k === LABEL_SNAPSHOT_REF || k.startsWith(INHERITED_LABEL_PREFIX)) out[k] = v;
  }
  return out;
}

/** The capabilities a snapshotter reports (none when it names none). */
export function capabilitiesOf(sn: Snapshotter): readonly string[] {
  return sn.capabilities ?? [];
}

/** Whether a snapshotter implements a capability (`SnapshotterCapability`), so a caller may rely on it. */
export function hasCapability(sn: Snapshotter, capability: string): boolean {
  return capabilitiesOf(sn).includes(capability);
}
