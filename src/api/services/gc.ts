/**
 * strata.services.gc.v1.GC over the GC plugin: translation only. A real collection goes through the scheduler
 * (scheduleAndWait), so it never runs at the same time as an automatic one and shares a run with concurrent
 * requests; a dry run, Why and Prune go to the collector. No namespace header is needed: a collection covers
 * every namespace and objects carry theirs.
 */
import type * as grpc from '@grpc/grpc-js';
import {
  GCService, type GCServer,
  type CollectResponse,
  type MetricsResponse,
  type Object as ObjectPb,
  type PruneResponse,
  type WhyResponse,
} from '../gen/strata/services/gc/v1/gc.js';
import type { Logger } from '../../log/index.js';
import type { Collector, GCScheduler } from '../../gc/types.js';
import { unary, type GrpcService, grpcService } from '../call.js';
import { objectToPb, objectFromPb, reportToPb } from '../convert.js';





/**
 * The afterDelete hook of the leases and images services: with sync, waits for a collection that started after
 * the delete (containerd's SynchronousDelete). Without a GC plugin, a synchronous delete returns at once.
 */
export function syncDelete(scheduler: GCScheduler | undefined): (namespace: string, sync: boolean) => Promise<void> {
  return async (_namespace, sync) => {
    if (sync && scheduler) await scheduler.scheduleAndWait();
  };
}

export function gcService(scheduler: GCScheduler, collector: Collector, log: Logger): GrpcService {
  const l = log.child({ service: 'gc' });
  const implementation: GCServer = {
    collect: unary(l, 'Collect', async (req: { dryRun: boolean }): Promise<CollectResponse> => {
      const report = req.dryRun ? await collector.collect({ dryRun: true }) : await scheduler.scheduleAndWait();
      return reportToPb(report);
    }),
    why: unary(l, 'Why', async (req: { object?: ObjectPb }): Promise<WhyResponse> => {
      const why = await collector.why(objectFromPb(req.object));
      return {
        reachable: why.reachable,
        root: why.root ?? '',
        path: why.path.map((e) => ({ from: objectToPb(e.from), to: objectToPb(e.to), reason: e.reason })),
      };
    }),
    prune: unary(l, 'Prune', async (req: { dryRun: boolean }): Promise<PruneResponse> => {
      const o = await collector.prune({ dryRun: req.dryRun });
      return {
        blobs: o.blobs.map((b) => ({ type: 'content', namespace: '', snapshotter: '', id: b.digest, size: b.size })),
        ingests: o.ingests.map((i) => ({ type: 'ingest', namespace: '', snapshotter: '', id: i.ref, size: i.size })),
        snapshots: o.snapshots.map((s) => ({ type: 'snapshot', namespace: '', snapshotter: s.snapshotter, id: s.key, size: 0 })),
        contentWithoutData: o.contentWithoutData.map(objectToPb),
        snapshotsWithoutData: o.snapshotsWithoutData.map(objectToPb),
      };
    }),
    metrics: unary(l, 'Metrics', async (): Promise<MetricsResponse> => {
      const m = scheduler.metrics();
      return {
        runs: m.runs,
        pauseMsTotal: m.pauseMsTotal,
        pauseMsLast: m.pauseMsLast,
        removedObjects: { ...m.removedObjects },
        removedBytes: m.removedBytes,
        lastRunAt: m.lastRunAt,
      };
    }),
  };
  return grpcService<GCServer>(GCService, implementation);
}
