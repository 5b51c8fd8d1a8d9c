/**
 * Data and records that disagree: blobs, ingest directories and backend snapshots that no record accounts for
 * (what a crash, a failed removal or the record sweep of a collection leaves), and records whose data is gone.
 *
 * The same passes remove a collection's data after its record sweep, so a collection also finishes what an
 * interrupted one left. Each removal re-checks, synchronously and right before it acts, that nothing records
 * the object, so an object created or adopted since the listing is never lost:
 *  - a blob is kept while any namespace has a content row for its digest, any lease names it, any ingest adopts
 *    it (the same rule as NamespacedContent.blobUnused), or it may be the blob of a commit in progress:
 *    a commit renames the ingest's data onto the blob path before its transaction inserts the content row and
 *    deletes the ingest row, so a blob is kept while an ingest row older than the blob has no data file;
 *  - a backend snapshot is kept while a snapshot row (any namespace) has its backend key, or while an operation
 *    in progress holds the key (NamespacedSnapshots.pending: a prepare creates the backend snapshot before its
 *    record, a commit renames it before updating the record);
 *  - an ingest directory is kept while an ingest row has its backend ref (rows are written before directories
 *    and deleted after them, so a directory without a row is never in progress).
 */
import { crashPoint } from '../core/crashpoint.js';
import { existsSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { isNotFound, isUnavailable } from '../core/errdefs.js';
import type { Logger } from '../log/index.js';
import type { GCMetadata, GCObject, GCSnapshots, Orphans } from './types.js';

/**
 * Slack on the comparison of an ingest row's creation time with a blob's modification time (the commit stamps
 * it): both come from this host's clock, the margin only covers file system timestamp granularity.
 */
const CLOCK_SLACK_MS = 2000;

/** Records a dry run treats as already swept (keys as built by the helpers below). */
export interface Exclusions {
  content: Set<string>;
  ingests: Set<string>;
  snapshots: Set<string>;
  leases: Set<string>;
}

export const contentKey = (namespace: string, digest: string) => `${namespace}\0${digest}`;
export const ingestKey = (namespace: string, ref: string) => `${namespace}\0${ref}`;
export const snapshotKey = (namespace: string, snapshotter: string, key: string) => `${namespace}\0${snapshotter}\0${key}`;
export const leaseKey = (namespace: string, id: string) => `${namespace}\0${id}`;

const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err));

/**
 * Whether records still account for a piece of data: synchronous queries (the metadata store's), meant to run
 * right before the removal they guard. With exclusions (a dry run), the excluded records count as gone.
 */
export class DataRefs {
  /** Set when data without a record was kept only because an operation in progress may still record it. */
  heldInProgress = false;
  constructor(
    private readonly md: GCMetadata,
    private readonly ex?: Exclusions,
  ) {}

  /**
   * Of these blobs, the ones a record keeps, or that may be the blob of a commit in progress: one query for the
   * batch. Synchronous: the caller removes the others before it awaits anything.
   */
  blobsUsed(blobs: { digest: string; mtimeMs: number }[]): Set<string> {
    const ex = this.ex;
    const used = new Set<string>();
    if (blobs.length === 0) return used;
    for (const r of this.md.gc.blobRecords(blobs.map((b) => b.digest))) {
      const excluded =
        r.kind === 'content'
          ? ex?.content.has(contentKey(r.namespace, r.digest))
          : r.kind === 'lease'
            ? ex?.leases.has(leaseKey(r.namespace, r.id))
            : ex?.ingests.has(ingestKey(r.namespace, r.id));
      if (!excluded) used.add(r.digest);
    }
    for (const b of blobs) {
      if (!used.has(b.digest) && this.md.content.isCommitting(b.digest)) {
        used.add(b.digest);
        this.heldInProgress = true;
      }
    }
    const rest = blobs.filter((b) => !used.has(b.digest));
    if (rest.length === 0) return used;
    // An ingest row at least as old as a blob whose data file is gone: possibly the commit of this blob.
    const newest = Math.max(...rest.map((b) => b.mtimeMs));
    const local = this.md.content.local;
    const committing = this.md.gc
      .writingIngestsCreatedBy(newest + CLOCK_SLACK_MS)
      .filter((r) => !this.ex?.ingests.has(ingestKey(r.namespace, r.ref)) && !existsSync(join(local.ingestDir(r.backendRef), 'data')));
    for (const b of rest) {
      if (committing.some((r) => r.createdAt <= b.mtimeMs + CLOCK_SLACK_MS)) {
        used.add(b.digest);
        this.heldInProgress = true;
      }
    }
    return used;
  }

  ingestUsed(backendRef: string): boolean {
    return this.md.gc.ingestsWithBackendRef(backendRef).some((r) => !this.ex?.ingests.has(ingestKey(r.namespace, r.ref)));
  }

  snapshotUsed(sn: GCSnapshots, backendKey: string): boolean {
    if (sn.pending.has(backendKey)) return (this.heldInProgress = true);
    const rows = this.md.gc.snapshotsWithBackendKey(sn.name, backendKey);
    return rows.some((r) => !this.ex?.snapshots.has(snapshotKey(r.namespace, sn.name, r.key)));
  }

  /**
   * Digests certainly in use now (a fast filter before the exact check; stale only in the safe direction for
   * a real run, since whatever it misses is checked again before removal).
   */
  blobsInUse(): Set<string> {
    const ex = this.ex;
    const records = this.md.gc;
    const used = new Set<string>();
    for (const r of records.contentKeys()) {
      if (!ex?.content.has(contentKey(r.namespace, r.digest))) used.add(r.digest);
    }
    for (const r of records.leasedContent()) {
      if (!ex?.leases.has(leaseKey(r.namespace, r.lease))) used.add(r.id);
    }
    for (const r of records.adoptions()) {
      if (!ex?.ingests.has(ingestKey(r.namespace, r.ref))) used.add(r.digest);
    }
    return used;
  }
}

export interface DataPassOptions {
  dryRun: boolean;
  log: Logger;
}

export interface DataPassResult<K extends string = string> {
  /** Removed (or, in a dry run, removable) data, by its key in the backend, with the bytes it used. */
  removed: { key: K; size: number }[];
  errors: { key: K; error: string }[];
}

/** Blobs checked (one query) and removed between two yields to the event loop (the snapshot pass runs meanwhile). */
const BLOBS_PER_TURN = 64;

/**
 * Blobs no record accounts for: each is checked again and unlinked synchronously, so a concurrent adoption
 * (which checks the file in its own transaction) never records a blob that is about to vanish.
 *
 * `only`: look at these digests only (those of the records a collection just swept) instead of listing every
 * blob; leftovers of earlier failures wait for a full pass.
 */
export async function removeUnrecordedBlobs(
  md: GCMetadata,
  refs: DataRefs,
  opts: DataPassOptions & { only?: Iterable<string> },
): Promise<DataPassResult> {
  const local = md.content.local;
  const out: DataPassResult = { removed: [], errors: [] };
  const blobs = opts.only ? statBlobs(md, opts.only) : await local.list();
  const inUse = refs.blobsInUse();
  const candidates = blobs.filter((b) => !inUse.has(b.digest)).map((b) => ({ ...b, mtimeMs: b.createdAt.getTime() }));
  for (let at = 0; at < candidates.length; at += BLOBS_PER_TURN) {
    // Between two batches, never between a batch's check and its unlinks.
    if (at > 0) await new Promise((resolve) => setImmediate(resolve));
    const batch = candidates.slice(at, at + BLOBS_PER_TURN);
    const used = refs.blobsUsed(batch);
    for (const b of batch) {
      if (used.has(b.digest)) continue;
      if (opts.dryRun) {
        out.removed.push({ key: b.digest, size: b.size });
        continue;
      }
      try {
        // No await between the check above and the unlink.
        crashPoint('gc.blob.before-unlink');
        unlinkSync(local.blobPath(b.digest));
        crashPoint('gc.blob.after-unlink');
        out.removed.push({ key: b.digest, size: b.size });
        opts.log.debug('removed blob', { digest: b.digest, size: b.size });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        out.errors.push({ key: b.digest, error: errorText(err) });
      }
    }
  }
  return out;
}

/** What local.list() reports of these digests' blob files (the ones that exist), in digest order. */
function statBlobs(md: GCMetadata, digests: Iterable<string>): { digest: string; size: number; createdAt: Date }[] {
  const out: { digest: string; size: number; createdAt: Date }[] = [];
  for (const digest of [...new Set(digests)].sort()) {
    let st;
    try {
      st = statSync(md.content.local.blobPath(digest));
    } catch {
      continue; // gone already (another namespace's record was the last, or an earlier pass)
    }
    // As the content store reports it: the commit stamps whole milliseconds.
    if (st.isFile()) out.push({ digest, size: st.size, createdAt: new Date(Math.round(st.mtimeMs)) });
  }
  return out;
}

/** Ingest directories (by backend ref) no ingest row accounts for. A locked one (a writer has it) stays. */
export async function removeUnrecordedIngests(md: GCMetadata, refs: DataRefs, opts: DataPassOptions): Promise<DataPassResult> {
  const local = md.content.local;
  const out: DataPassResult = { removed: [], errors: [] };
  for (const st of await local.listStatuses()) {
    if (refs.ingestUsed(st.ref)) continue;
    if (opts.dryRun) {
      out.removed.push({ key: st.ref, size: st.offset });
      continue;
    }
    try {
      crashPoint('gc.ingest.before-remove');
      await local.abort(st.ref);
      crashPoint('gc.ingest.after-remove');
      out.removed.push({ key: st.ref, size: st.offset });
      opts.log.debug('removed ingest data', { ref: st.ref, size: st.offset });
    } catch (err) {
      if (isNotFound(err)) continue;
      if (isUnavailable(err)) continue; // a writer holds it: in use
      out.errors.push({ key: st.ref, error: errorText(err) });
    }
  }
  return out;
}

/** Snapshot removals of one depth in flight at once (each is a record commit, a rename and a directory removal). */
const SNAPSHOT_REMOVALS = 8;

export interface SnapshotPassResult extends DataPassResult {
  /** Every backend key the walk saw. */
  seen: Set<string>;
}

/**
 * Backend snapshots no record accounts for, children before parents. A snapshot whose child stays (recorded,
 * in progress, or failed to go) is left alone; when it is one the caller cares about (`mustGo`, e.g. the
 * backend key of a record just swept) that is reported as an error, else it waits for a later pass silently.
 */
export async function removeUnrecordedSnapshots(
  sn: GCSnapshots,
  refs: DataRefs,
  opts: DataPassOptions & { mustGo?: Set<string> },
): Promise<SnapshotPassResult> {
  const backend = sn.backend;
  const out: SnapshotPassResult = { removed: [], errors: [], seen: new Set() };
  const parents = new Map<string, string>();
  await backend.walk((i) => {
    out.seen.add(i.name);
    parents.set(i.name, i.parent);
  });
  const children = new Map<string, string[]>();
  for (const [k, p] of parents) {
    if (!p) continue;
    let list = children.get(p);
    if (!list) children.set(p, (list = []));
    list.push(k);
  }
  const depthOf = new Map<string, number>();
  const depth = (k: string): number => {
    let d = depthOf.get(k);
    if (d !== undefined) return d;
    // Iterative walk up the chain (chains may be long).
    const chain: string[] = [];
    const inChain = new Set<string>();
    let cur: string | undefined = k;
    while (cur !== undefined && !depthOf.has(cur) && parents.has(cur) && !inChain.has(cur)) {
      chain.push(cur);
      inChain.add(cur);
      const p = parents.get(cur);
      cur = p ? p : undefined;
    }
    let base = cur !== undefined && depthOf.has(cur) ? depthOf.get(cur)! : -1;
    for (let i = chain.length - 1; i >= 0; i--) depthOf.set(chain[i]!, ++base);
    d = depthOf.get(k)!;
    return d;
  };

  const candidates = [...parents.keys()].filter((k) => !refs.snapshotUsed(sn, k));
  const gone = new Set<string>();
  // Children before parents: one depth at a time, deepest first; the removals of one depth run together
  // (SNAPSHOT_REMOVALS at a time), since none is the parent of another.
  const byDepth = new Map<number, string[]>();
  for (const k of candidates) {
    const d = depth(k);
    let list = byDepth.get(d);
    if (!list) byDepth.set(d, (list = []));
    list.push(k);
  }
  const removeOne = async (key: string): Promise<void> => {
    const stay = (children.get(key) ?? []).find((c) => !gone.has(c));
    if (stay !== undefined) {
      if (opts.mustGo?.has(key)) out.errors.push({ key, error: `kept: its child snapshot ${stay} stays` });
      return;
    }
    if (opts.dryRun) {
      // A dry run reports what each would free. A real run does not measure (the overlay backend records a
      // committed snapshot's usage when first measured: a durable write for each snapshot about to go).
      let size = 0;
      try {
        size = (await backend.usage(key)).size;
      } catch {
        // best effort: the size is informational
      }
      if (!refs.snapshotUsed(sn, key)) {
        gone.add(key);
        out.removed.push({ key, size });
      }
      return;
    }
    // Checked again right before the removal, with no await in between.
    if (refs.snapshotUsed(sn, key)) return;
    try {
      crashPoint('gc.snapshot.before-remove');
      await backend.remove(key);
      crashPoint('gc.snapshot.after-remove');
      gone.add(key);
      out.removed.push({ key, size: 0 });
      opts.log.debug('removed backend snapshot', { snapshotter: sn.name, key });
    } catch (err) {
      if (isNotFound(err)) {
        gone.add(key); // someone else removed it
        return;
      }
      out.errors.push({ key, error: errorText(err) });
    }
  };
  for (const d of [...byDepth.keys()].sort((a, b) => b - a)) {
    const keys = byDepth.get(d)!;
    let next = 0;
    const worker = async () => {
      while (next < keys.length) await removeOne(keys[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(SNAPSHOT_REMOVALS, keys.length) }, worker));
  }
  if (!opts.dryRun) {
    // What the backend itself may have left (directories of interrupted removals): containerd's Cleanup.
    await backend.cleanup().catch((err: unknown) => opts.log.warn('snapshotter cleanup failed', { snapshotter: sn.name, error: errorText(err) }));
  }
  return out;
}

/**
 * `strata prune`: data without records (removed unless dryRun) and records without data (reported only: the
 * record may be all that is left of something a client still expects, and removing it is a decision for the
 * client or the collector, not for a repair tool).
 */
export async function findOrphans(md: GCMetadata, opts: DataPassOptions): Promise<Orphans> {
  const refs = new DataRefs(md);
  const local = md.content.local;
  const orphans: Orphans = { blobs: [], ingests: [], snapshots: [], contentWithoutData: [], snapshotsWithoutData: [] };

  const blobs = await removeUnrecordedBlobs(md, refs, opts);
  orphans.blobs = blobs.removed.map((b) => ({ digest: b.key, size: b.size }));
  for (const e of blobs.errors) {
    opts.log.warn('could not remove orphan blob', { digest: e.key, error: e.error });
    orphans.blobs.push({ digest: e.key, size: 0 });
  }

  const ingests = await removeUnrecordedIngests(md, refs, opts);
  orphans.ingests = ingests.removed.map((i) => ({ ref: i.key, size: i.size }));
  for (const e of ingests.errors) {
    opts.log.warn('could not remove orphan ingest', { ref: e.key, error: e.error });
    orphans.ingests.push({ ref: e.key, size: 0 });
  }

  for (const [name, sn] of md.snapshotters) {
    let pass: SnapshotPassResult;
    try {
      pass = await removeUnrecordedSnapshots(sn, refs, opts);
    } catch (err) {
      opts.log.warn('cannot walk snapshotter', { snapshotter: name, error: errorText(err) });
      continue;
    }
    for (const r of pass.removed) orphans.snapshots.push({ snapshotter: name, key: r.key });
    for (const e of pass.errors) {
      opts.log.warn('could not remove orphan snapshot', { snapshotter: name, key: e.key, error: e.error });
      orphans.snapshots.push({ snapshotter: name, key: e.key });
    }

    // Records whose backend snapshot is missing: not seen by the walk, not in progress, and confirmed by stat.
    for (const r of md.gc.snapshotKeys(name)) {
      if (pass.seen.has(r.backendKey) || sn.pending.has(r.backendKey)) continue;
      try {
        await sn.backend.stat(r.backendKey);
        continue;
      } catch (err) {
        if (!isNotFound(err)) continue;
      }
      if (md.gc.snapshotRecorded(r.namespace, name, r.key, r.backendKey) && !sn.pending.has(r.backendKey)) {
        const o: GCObject = { type: 'snapshot', namespace: r.namespace, snapshotter: name, id: r.key };
        orphans.snapshotsWithoutData.push(o);
      }
    }
  }

  // Content rows whose blob file is missing (a row is inserted only after its blob is in place, and a blob is
  // unlinked only in the transaction that deletes its last row, so this is damage, not a race).
  for (const r of md.gc.contentKeys()) {
    let present: boolean;
    try {
      present = statSync(local.blobPath(r.digest)).isFile();
    } catch {
      present = false;
    }
    if (!present) orphans.contentWithoutData.push({ type: 'content', namespace: r.namespace, id: r.digest });
  }
  return orphans;
}
