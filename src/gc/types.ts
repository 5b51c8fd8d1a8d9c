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

// ---------------------------------------------------------------------------------------------------------------
// The records the collector works on, and what it asks of the metadata store. src/metadata owns the tables and
// every statement on them (src/metadata/gc.ts, as containerd's metadata/gc.go); src/gc never sees SQL. Labels
// in these records hold only the containerd.io/gc.* labels.

export interface ContentRecord {
  namespace: string;
  digest: string;
  size: number;
  labels: Record<string, string>;
}

export interface IngestRecord {
  namespace: string;
  ref: string;
  backendRef: string;
  /** The blob an adopting ingest stands for (shared content policy), else null. */
  sharedDigest: string | null;
  /** Milliseconds since the epoch; null for an ingest under a lease (the lease keeps it). */
  expiresAt: number | null;
  createdAt: number;
}

export interface SnapshotRecord {
  namespace: string;
  snapshotter: string;
  key: string;
  backendKey: string;
  parent: string;
  kind: string;
  labels: Record<string, string>;
}

export interface ImageRecord {
  namespace: string;
  name: string;
  targetDigest: string;
  labels: Record<string, string>;
}

export interface ContainerRecord {
  namespace: string;
  id: string;
  snapshotter: string;
  snapshotKey: string;
  labels: Record<string, string>;
}

export interface LeaseRecord {
  namespace: string;
  id: string;
  labels: Record<string, string>;
  resources: { type: string; id: string }[];
}

/** Every record the mark needs, read in one transaction. */
export interface Records {
  /** The time expiries are judged against (milliseconds since the epoch), read in the same transaction. */
  now: number;
  content: ContentRecord[];
  ingests: IngestRecord[];
  snapshots: SnapshotRecord[];
  images: ImageRecord[];
  containers: ContainerRecord[];
  leases: LeaseRecord[];
}

/** What the mark leaves white: the records a collection deletes (images and containers are roots, never swept). */
export interface SweepPlan {
  expiredLeases: LeaseRecord[];
  content: ContentRecord[];
  ingests: IngestRecord[];
  snapshots: SnapshotRecord[];
}

/**
 * The metadata database as the collector uses it (src/metadata/gc.ts). Every call is synchronous, so a check
 * and the removal it guards can run with no await in between; read() and sweep() each run in one transaction.
 */
export interface GCRecordStore {
  /** Calls `fn` with the records (and `now()`, read inside) in one read transaction, so the mark sees one state. */
  read<T>(now: () => number, fn: (records: Records) => T): T;
  /**
   * In one synchronous transaction: reads the records, asks `decide` what the mark leaves white and, unless
   * dryRun, deletes those records (an expired lease's resources go with it). A real sweep takes the write lock
   * from the start; a dry run only reads.
   */
  sweep(now: () => number, dryRun: boolean, decide: (records: Records) => SweepPlan): SweepPlan;

  // Who records a piece of data, any namespace: the data passes ask right before each removal.
  /**
   * What records any of these blobs: content rows (`id` = ''), leases holding one as a resource (`id` = the
   * lease) and ingests adopting one (`id` = the ref), each with its namespace.
   */
  blobRecords(digests: string[]): { digest: string; kind: 'content' | 'lease' | 'ingest'; namespace: string; id: string }[];
  /** Ingests writing data of their own (not adopting) created at or before `ms`. */
  writingIngestsCreatedBy(ms: number): { namespace: string; ref: string; backendRef: string; createdAt: number }[];
  ingestsWithBackendRef(backendRef: string): { namespace: string; ref: string }[];
  snapshotsWithBackendKey(snapshotter: string, backendKey: string): { namespace: string; key: string }[];
  /** Whether that snapshot row still exists with that backend key. */
  snapshotRecorded(namespace: string, snapshotter: string, key: string, backendKey: string): boolean;

  // Whole listings.
  /** Every content row, ordered by namespace and digest. */
  contentKeys(): { namespace: string; digest: string }[];
  /** Every lease resource that is a blob. */
  leasedContent(): { namespace: string; lease: string; id: string }[];
  /** Every adopting ingest with the blob it adopts. */
  adoptions(): { namespace: string; ref: string; digest: string }[];
  /** A snapshotter's snapshot rows, ordered by namespace and key. */
  snapshotKeys(snapshotter: string): { namespace: string; key: string; backendKey: string }[];
}

/** The local content store's data as the data passes use it (src/content's LocalContentStore). */
export interface GCContentData {
  list(): Promise<{ digest: string; size: number; createdAt: Date }[]>;
  blobPath(digest: string): string;
  ingestDir(ref: string): string;
  listStatuses(): Promise<{ ref: string; offset: number }[]>;
  abort(ref: string): Promise<void>;
}

/** A snapshotter backend as the data passes use it (src/snapshots' Snapshotter). */
export interface GCSnapshotBackend {
  walk(fn: (info: { name: string; parent: string }) => void): Promise<void>;
  stat(key: string): Promise<unknown>;
  usage(key: string): Promise<{ size: number }>;
  remove(key: string): Promise<void>;
  cleanup(): Promise<void>;
}

/** A snapshotter with its namespaced layer (src/metadata's NamespacedSnapshots). */
export interface GCSnapshots {
  readonly name: string;
  readonly backend: GCSnapshotBackend;
  /** Backend keys an operation in progress holds (created before its record, or being renamed by a commit). */
  readonly pending: ReadonlySet<string>;
}

/** What the collector needs of the metadata store; src/metadata's MetadataStore implements it. */
export interface GCMetadata {
  readonly gc: GCRecordStore;
  readonly content: {
    readonly local: GCContentData;
    /** Whether a writer is committing this blob now: its record is about to appear, so it stays. */
    isCommitting(digest: string): boolean;
  };
  readonly snapshotters: ReadonlyMap<string, GCSnapshots>;
}

/** What the scheduler plugin needs besides: the store's mutation feed and its next lease expiry. */
export interface GCPluginMetadata extends GCMetadata {
  /** Calls `fn` after every committed write; `deletion` when it removed something. Returns the unsubscriber. */
  onMutation(fn: (deletion: boolean) => void): () => void;
  readonly leases: { nextExpiry(): number | undefined };
}
