/**
 * The garbage collector's contract (containerd's reference model, see docs/gc.md). The collector is exact and
 * explains itself; the scheduler decides when it runs.
 */

/** An object GC knows. `id` is a digest (content), a ref (ingest), a key (snapshot), a name (image) or an id (lease). */
export type GCObjectType = 'content' | 'ingest' | 'snapshot' | 'image' | 'lease' | 'container';

export interface GCObject {
  type: GCObjectType;
  namespace: string;
  /** For snapshots: the snapshotter's name. */
  snapshotter?: string;
  id: string;
}

/** What was (or, in a dry run, would be) removed. */
export interface GCRemoved extends GCObject {
  /** Bytes on disk freed (blob size, ingest bytes, snapshot usage when known; 0 when not known). */
  size: number;
}

export interface GCReport {
  dryRun: boolean;
  /** Time the metadata was locked (mark + record sweep), in milliseconds. */
  pauseMs: number;
  /** Wall time of the whole collection, including removing data outside the lock. */
  elapsedMs: number;
  removed: GCRemoved[];
  /** Expired leases deleted by this run. */
  expiredLeases: GCObject[];
  /** Data that could not be removed (the records are gone; `strata prune` finds such leftovers). */
  errors: { object: GCObject; error: string }[];
}

/** One step of a reference path: `from` keeps `to` alive because of `reason` (a label key, "parent", "target", "lease"...). */
export interface GCEdge {
  from: GCObject;
  to: GCObject;
  reason: string;
}

export interface GCWhy {
  object: GCObject;
  /** Whether anything keeps it. */
  reachable: boolean;
  /** Why the first object of the path is a root ("image", "lease <id>", "label containerd.io/gc.root", "ingest not expired"...). */
  root?: string;
  /** From that root to the object, in order; empty when the object is itself a root. */
  path: GCEdge[];
}

/** Data without records, and records without data (what `strata prune` reports and, unless dry, removes). */
export interface Orphans {
  /** Blob files in the content store no namespace has a record (or ingest, or lease) for. */
  blobs: { digest: string; size: number }[];
  /** Ingest directories with no ingest row. */
  ingests: { ref: string; size: number }[];
  /** Backend snapshots no record points at, per snapshotter (backend keys). */
  snapshots: { snapshotter: string; key: string }[];
  /** Content rows whose blob file is missing. */
  contentWithoutData: GCObject[];
  /** Snapshot rows whose backend snapshot is missing. */
  snapshotsWithoutData: GCObject[];
}

export interface GCMetrics {
  runs: number;
  /** Sum and last of the lock time, milliseconds. */
  pauseMsTotal: number;
  pauseMsLast: number;
  removedObjects: Record<GCObjectType, number>;
  removedBytes: number;
  lastRunAt?: Date;
}

export interface Collector {
  /** Marks from the roots and sweeps what is unreachable (or, with dryRun, only reports it). */
  collect(opts?: { dryRun?: boolean }): Promise<GCReport>;
  /** The reference path from a root to `object` (first one found, shortest by BFS). */
  why(object: GCObject): Promise<GCWhy>;
  /** Finds orphans; removes the data-without-records ones unless dryRun. */
  prune(opts?: { dryRun?: boolean }): Promise<Orphans>;
}

/** The scheduler: runs the collector when the thresholds say so (containerd's gc/scheduler), and on demand. */
export interface GCScheduler {
  /** Counts a change; deletions may trigger a collection sooner (deletion_threshold). */
  mutated(deletion: boolean): void;
  /** Runs a collection as soon as possible and resolves with its report (synchronous deletes use this). */
  scheduleAndWait(): Promise<GCReport>;
  metrics(): GCMetrics;
  close(): Promise<void>;
}
