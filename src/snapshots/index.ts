/**
 * `strata/snapshots`: what another TypeScript package needs to write a snapshotter Strata and containerd can
 * use as a proxy plugin (docs/snapshotter-authors.md): the Snapshotter interface and its records, the
 * remote-snapshot helpers, containerd's filters over snapshots, and the typed errors whose kinds become
 * containerd's gRPC codes. Serve one with `strata/serve-snapshotter`.
 *
 * Only types and small pure modules are exported here (no backend, no native addon), so importing it is cheap.
 */
export type { Mount } from '../core/mount.js';
export {
  SnapshotterCapability,
  LABEL_SNAPSHOT_REBASE,
  capabilitiesOf,
  hasCapability,
  inheritedLabels,
  type Info,
  type Kind,
  type SnapshotOpts,
  type Snapshotter,
  type Usage,
  type WalkFn,
} from './types.js';
export { LABEL_REMOTE_SNAPSHOT, snapshotRef, targetExists } from './remote.js';
export { snapshotFilter } from './filter.js';
export { INHERITED_LABEL_PREFIX, LABEL_SNAPSHOT_REF, applyLabelPaths, compactLabels, validateLabels } from '../core/labels.js';
export {
  StrataError,
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  isAlreadyExists,
  isFailedPrecondition,
  isInvalidArgument,
  isNotFound,
  notFound,
  notImplemented,
  unavailable,
  unknown,
  type ErrorKind,
} from '../core/errdefs.js';
