/**
 * The metadata collector: containerd's reference model over Strata's SQLite metadata (docs/gc.md).
 *
 * A collection has two phases:
 *  1. under the lock, in one synchronous SQLite transaction (so no other call interleaves and a crash keeps all
 *     or nothing): read every record, mark from the roots, and delete expired leases (their resources go with
 *     them) and every unreachable content, ingest and snapshot record. The metadata store runs the transaction,
 *     reads and deletes (GCRecordStore.sweep); the mark decides what goes. This is the pause (pauseMs).
 *  2. outside it: remove the data no record accounts for any more, children before parents for snapshots,
 *     each removal re-checked right before it happens (src/gc/prune.ts). This pass also removes data that an
 *     earlier, interrupted collection left, so a second run finishes the job of one killed half way. A failure
 *     to remove one object is reported and never stops the rest.
 *
 * A dry run does the same mark in a read transaction and reports what both phases would remove.
 */
import { performance } from 'node:perf_hooks';
import { silentLogger, type Logger } from '../log/index.js';
import { leaseExpired, RefGraph } from './graph.js';
import {
  contentKey,
  DataRefs,
  findOrphans,
  ingestKey,
  leaseKey,
  removeUnrecordedBlobs,
  removeUnrecordedIngests,
  removeUnrecordedSnapshots,
  snapshotKey,
  type Exclusions,
} from './prune.js';
import type {
  Collector,
  ContentRecord,
  GCMetadata,
  GCObject,
  GCRemoved,
  GCReport,
  GCWhy,
  IngestRecord,
  LeaseRecord,
  Orphans,
  SnapshotRecord,
  SweepPlan,
} from './types.js';

export interface CollectorOptions {
  log?: Logger;
  /** The clock expiries are judged by (milliseconds since the epoch); Date.now by default. */
  now?: () => number;
}

const contentObject = (c: ContentRecord): GCObject => ({ type: 'content', namespace: c.namespace, id: c.digest });
const ingestObject = (i: IngestRecord): GCObject => ({ type: 'ingest', namespace: i.namespace, id: i.ref });
const snapshotObject = (s: SnapshotRecord): GCObject => ({ type: 'snapshot', namespace: s.namespace, snapshotter: s.snapshotter, id: s.key });
const leaseObject = (l: LeaseRecord): GCObject => ({ type: 'lease', namespace: l.namespace, id: l.id });

/** Groups records by a key, keeping order. */
function groupBy<T>(items: T[], key: (t: T) => string): Map<string, T[]> {
  const m = new Map<string, T[]>();
  for (const it of items) {
    const k = key(it);
    let list = m.get(k);
    if (!list) m.set(k, (list = []));
    list.push(it);
  }
  return m;
}

/** A run that swept nothing from a store skips walking it, except every FULL_EVERY-th run. */
const FULL_EVERY = 20;

export class MetadataCollector implements Collector {
  private readonly log: Logger;
  private readonly now: () => number;
  /** Collections and prunes run one at a time. */
  private tail: Promise<unknown> = Promise.resolve();
  /**
   * Whether a collection of this process has walked every store and removed everything without a record.
   * Until then (the first run after a start finishes what a killed run left) and after any run that could not
   * remove something, every run walks all data; otherwise a run walks only the stores it swept records from,
   * as containerd does (walking 10k blobs and 2k snapshots costs more than the mark itself).
   */
  private clean = false;
  /** Runs since the last full walk: every FULL_EVERY-th run walks everything anyway (leftovers of failed operations). */
  private sinceFull = 0;

  constructor(
    private readonly md: GCMetadata,
    opts: CollectorOptions = {},
  ) {
    this.log = opts.log ?? silentLogger;
    this.now = opts.now ?? Date.now;
  }

  collect(opts: { dryRun?: boolean } = {}): Promise<GCReport> {
    return this.exclusive(() => this.run(opts.dryRun ?? false));
  }

  async why(object: GCObject): Promise<GCWhy> {
    // A read transaction: the records and the mark see one state.
    return this.md.gc.read(this.now, (records) => new RefGraph(records).mark().why(object));
  }

  prune(opts: { dryRun?: boolean } = {}): Promise<Orphans> {
    return this.exclusive(() => findOrphans(this.md, { dryRun: opts.dryRun ?? false, log: this.log }));
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /**
   * Phase 1: mark, and unless dry, delete the white records. Synchronous from start to end: the store reads the
   * records and deletes what the mark leaves white in one transaction.
   */
  private markAndSweep(dryRun: boolean): SweepPlan {
    return this.md.gc.sweep(this.now, dryRun, (records) => {
      const graph = new RefGraph(records);
      const mark = graph.mark();
      const white = <T>(items: T[], nodes: number[]) => items.filter((_, i) => !mark.reachable(nodes[i]!));
      return {
        expiredLeases: records.leases.filter((l) => leaseExpired(l, records.now)),
        content: white(records.content, graph.nodesOf.content),
        ingests: white(records.ingests, graph.nodesOf.ingests),
        snapshots: white(records.snapshots, graph.nodesOf.snapshots),
      };
    });
  }

  private async run(dryRun: boolean): Promise<GCReport> {
    const started = performance.now();
    const t0 = performance.now();
    const plan = this.markAndSweep(dryRun);
    const pauseMs = performance.now() - t0;

    const removed: GCRemoved[] = [];
    const errors: GCReport['errors'] = [];

    // In a dry run the swept records still exist: the data passes treat them as gone. A real run must not
    // exclude anything (a record of the same name may have been created since the sweep).
    const ex: Exclusions | undefined = dryRun
      ? {
          content: new Set(plan.content.map((c) => contentKey(c.namespace, c.digest))),
          ingests: new Set(plan.ingests.map((i) => ingestKey(i.namespace, i.ref))),
          snapshots: new Set(plan.snapshots.map((s) => snapshotKey(s.namespace, s.snapshotter, s.key))),
          leases: new Set(plan.expiredLeases.map((l) => leaseKey(l.namespace, l.id))),
        }
      : undefined;
    const refs = new DataRefs(this.md, ex);
    const pass = { dryRun, log: this.log };
    const full = dryRun || !this.clean || this.sinceFull >= FULL_EVERY;

    for (const l of plan.expiredLeases) removed.push({ ...leaseObject(l), size: 0 });

    // The snapshot passes and the content passes run at the same time (as containerd runs its snapshotters'
    // and its content store's cleanups): each reports into its own lists, joined in a fixed order after.
    const part = () => {
      const p = { removed: [] as GCRemoved[], errors: [] as GCReport['errors'] };
      const failIn = (object: GCObject, error: string) => {
        p.errors.push({ object, error });
        this.log.warn('gc: could not remove data', { ...object, error });
      };
      return { ...p, fail: failIn };
    };
    const snaps = part();
    const content = part();
    const snapshotPasses = async ({ removed, fail }: typeof snaps) => {
      // Snapshots: per snapshotter, the backend keys no record has any more (the swept ones and leftovers).
      const sweptSnapshots = groupBy(plan.snapshots, (s) => s.snapshotter);
      for (const [name, sn] of this.md.snapshotters) {
        const swept = groupBy(sweptSnapshots.get(name) ?? [], (s) => s.backendKey);
        sweptSnapshots.delete(name);
        if (!full && swept.size === 0) continue;
        let res;
        try {
          res = await removeUnrecordedSnapshots(sn, refs, { ...pass, mustGo: new Set(swept.keys()) });
        } catch (err) {
          // The walk failed: nothing of this snapshotter's data can be judged this time.
          for (const recs of swept.values()) {
            for (const s of recs) {
              removed.push({ ...snapshotObject(s), size: 0 });
              fail(snapshotObject(s), `cannot walk snapshotter ${name}: ${String(err)}`);
            }
          }
          continue;
        }
        for (const r of res.removed) {
          const recs = swept.get(r.key);
          if (recs) {
            recs.forEach((s, i) => removed.push({ ...snapshotObject(s), size: i === 0 ? r.size : 0 }));
            swept.delete(r.key);
          } else {
            removed.push({ type: 'snapshot', namespace: '', snapshotter: name, id: r.key, size: r.size });
          }
        }
        for (const e of res.errors) {
          const recs = swept.get(e.key);
          if (recs) {
            // The records are gone all the same (listed as removed, nothing freed); the data waits.
            for (const s of recs) {
              removed.push({ ...snapshotObject(s), size: 0 });
              fail(snapshotObject(s), e.error);
            }
            swept.delete(e.key);
          } else {
            fail({ type: 'snapshot', namespace: '', snapshotter: name, id: e.key }, e.error);
          }
        }
        // Swept records whose backend snapshot stays for another namespace's record, or was already gone.
        for (const recs of swept.values()) for (const s of recs) removed.push({ ...snapshotObject(s), size: 0 });
      }
      for (const [name, recs] of sweptSnapshots) {
        for (const s of recs) {
          removed.push({ ...snapshotObject(s), size: 0 });
          if (!dryRun) fail(snapshotObject(s), `snapshotter ${name} is not loaded: its data stays`);
        }
      }
    };
    const contentPasses = async ({ removed, fail }: typeof content) => {
      // Ingests: the data of swept ingest rows, and any other ingest directory without a row.
      const sweptIngests = groupBy(plan.ingests, (i) => i.backendRef);
      if (full || sweptIngests.size > 0) try {
        const res = await removeUnrecordedIngests(this.md, refs, pass);
        for (const r of res.removed) {
          const recs = sweptIngests.get(r.key);
          if (recs) {
            for (const i of recs) removed.push({ ...ingestObject(i), size: r.size });
            sweptIngests.delete(r.key);
          } else {
            removed.push({ type: 'ingest', namespace: '', id: r.key, size: r.size });
          }
        }
        for (const e of res.errors) {
          const recs = sweptIngests.get(e.key);
          if (recs) {
            for (const i of recs) {
              removed.push({ ...ingestObject(i), size: 0 });
              fail(ingestObject(i), e.error);
            }
            sweptIngests.delete(e.key);
          } else {
            fail({ type: 'ingest', namespace: '', id: e.key }, e.error);
          }
        }
      } catch (err) {
        for (const recs of sweptIngests.values()) {
          for (const i of recs) {
            removed.push({ ...ingestObject(i), size: 0 });
            fail(ingestObject(i), `cannot list ingests: ${String(err)}`);
          }
        }
        sweptIngests.clear();
      }
      // Swept ingests with no data of their own (adoptions, or nothing written yet).
      for (const recs of sweptIngests.values()) for (const i of recs) removed.push({ ...ingestObject(i), size: 0 });

      // Blobs: those of swept content rows that no namespace keeps, and any other blob without a record.
      const sweptContent = groupBy(plan.content, (c) => c.digest);
      if (full || sweptContent.size > 0) try {
        const res = await removeUnrecordedBlobs(this.md, refs, full ? pass : { ...pass, only: sweptContent.keys() });
        for (const r of res.removed) {
          const recs = sweptContent.get(r.key);
          if (recs) {
            recs.forEach((c, i) => removed.push({ ...contentObject(c), size: i === 0 ? r.size : 0 }));
            sweptContent.delete(r.key);
          } else {
            removed.push({ type: 'content', namespace: '', id: r.key, size: r.size });
          }
        }
        for (const e of res.errors) {
          const recs = sweptContent.get(e.key);
          if (recs) {
            for (const c of recs) {
              removed.push({ ...contentObject(c), size: 0 });
              fail(contentObject(c), e.error);
            }
            sweptContent.delete(e.key);
          } else {
            fail({ type: 'content', namespace: '', id: e.key }, e.error);
          }
        }
      } catch (err) {
        for (const recs of sweptContent.values()) {
          for (const c of recs) {
            removed.push({ ...contentObject(c), size: 0 });
            fail(contentObject(c), `cannot list blobs: ${String(err)}`);
          }
        }
        sweptContent.clear();
      }
      // Swept content rows whose blob another namespace (or a lease, or an adopting ingest) still keeps.
      for (const recs of sweptContent.values()) for (const c of recs) removed.push({ ...contentObject(c), size: 0 });
    };
    await Promise.all([snapshotPasses(snaps), contentPasses(content)]);
    removed.push(...snaps.removed, ...content.removed);
    errors.push(...snaps.errors, ...content.errors);

    if (!dryRun) {
      this.clean = errors.length === 0 && !refs.heldInProgress;
      this.sinceFull = full ? 0 : this.sinceFull + 1;
    }
    const report: GCReport = {
      dryRun,
      pauseMs,
      elapsedMs: performance.now() - started,
      removed,
      expiredLeases: plan.expiredLeases.map(leaseObject),
      errors,
    };
    this.log.debug(dryRun ? 'gc: dry run' : 'gc: collected', {
      removed: removed.length,
      bytes: removed.reduce((n, r) => n + r.size, 0),
      errors: errors.length,
      pauseMs: Math.round(pauseMs * 1000) / 1000,
      elapsedMs: Math.round(report.elapsedMs * 1000) / 1000,
    });
    return report;
  }
}
