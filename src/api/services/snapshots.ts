/**
 * containerd.services.snapshots.v1.Snapshots over a Snapshotter. The same translation serves the daemon
 * (each call resolved to the namespaced view of the named snapshotter) and `stratad serve-snapshotter`
 * (every call goes to the one backend, as a containerd proxy plugin expects).
 */
import type * as grpc from '@grpc/grpc-js';
import { SnapshotsService, type SnapshotsServer, type Info as PbInfo } from '../gen/containerd/services/snapshots/v1/snapshots.js';
import { invalidArgument } from '../../core/errdefs.js';
import type { Snapshotter } from '../../snapshots/types.js';
import type { Logger } from '../../log/index.js';
import { serverStream, unary, unconverted, type GrpcService, grpcService } from '../call.js';
import { parseAll } from '../../filters/index.js';
import { mountToPb, snapshotInfoToPb } from '../convert.js';
import type { CallContext } from '../call.js';

export type ResolveSnapshotter = (name: string, call: CallContext) => Snapshotter;

const LIST_BATCH = 100;





export function snapshotsService(resolve: ResolveSnapshotter, log: Logger): GrpcService {
  const l = log.child({ service: 'snapshots' });
  type Req = { snapshotter: string };
  const sn = (req: Req, call: CallContext) => resolve(req.snapshotter, call);
  const labelsOf = (labels: Record<string, string>) => (Object.keys(labels).length > 0 ? { labels } : {});

  const implementation: SnapshotsServer = {
    prepare: unary(l, 'Prepare', async (req: Req & { key: string; parent: string; labels: Record<string, string> }, call) => ({
      mounts: (
        await sn(req, call).prepare(req.key, req.parent, { ...labelsOf(req.labels), ...(call.connected ? { callerAlive: () => call.connected!() } : {}) })
      ).map(mountToPb),
    })),
    view: unary(l, 'View', async (req: Req & { key: string; parent: string; labels: Record<string, string> }, call) => ({
      mounts: (await sn(req, call).view(req.key, req.parent, labelsOf(req.labels))).map(mountToPb),
    })),
    mounts: unary(l, 'Mounts', async (req: Req & { key: string }, call) => ({
      mounts: (await sn(req, call).mounts(req.key)).map(mountToPb),
    })),
    commit: unary(l, 'Commit', async (req: Req & { name: string; key: string; labels: Record<string, string>; parent?: string }, call) => {
      // containerd 2.2's CommitSnapshotRequest.parent: commit onto that parent (rebase).
      await sn(req, call).commit(req.name, req.key, { ...labelsOf(req.labels), ...(req.parent ? { parent: req.parent } : {}) });
      return {};
    }),
    remove: unary(l, 'Remove', async (req: Req & { key: string }, call) => {
      await sn(req, call).remove(req.key);
      return {};
    }),
    stat: unary(l, 'Stat', async (req: Req & { key: string }, call) => ({ info: snapshotInfoToPb(await sn(req, call).stat(req.key)) })),
    update: unary(l, 'Update', async (req: Req & { info?: PbInfo; updateMask?: string[] }, call) => {
      if (!req.info) throw invalidArgument('info must be set');
      return { info: snapshotInfoToPb(await sn(req, call).update({ name: req.info.name, labels: req.info.labels }, req.updateMask ?? [])) };
    }),
    list: serverStream(l, 'List', async (req: Req & { filters: string[] }, send, call) => {
      const backend = sn(req, call);
      try {
        parseAll(req.filters);
      } catch (err) {
        throw unconverted(err, ''); // containerd's List passes the walk's error on unconverted: UNKNOWN
      }
      let batch: PbInfo[] = [];
      await backend.walk(async (info) => {
        batch.push(snapshotInfoToPb(info));
        if (batch.length >= LIST_BATCH) {
          const out = batch;
          batch = [];
          await send({ info: out });
        }
      }, req.filters);
      if (batch.length > 0) await send({ info: batch });
    }),
    usage: unary(l, 'Usage', async (req: Req & { key: string }, call) => sn(req, call).usage(req.key)),
    cleanup: unary(l, 'Cleanup', async (req: Req, call) => {
      await sn(req, call).cleanup();
      return {};
    }),
  };
  return grpcService<SnapshotsServer>(SnapshotsService, implementation);
}
