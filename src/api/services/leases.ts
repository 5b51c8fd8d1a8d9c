/** containerd.services.leases.v1.Leases over the metadata lease store. */
import type * as grpc from '@grpc/grpc-js';
import { LeasesService, type LeasesServer, type Resource } from '../gen/containerd/services/leases/v1/leases.js';
import type { LeaseStore } from '../../metadata/leases.js';
import type { Logger } from '../../log/index.js';
import { opContext, unary, type GrpcService, grpcService } from '../call.js';

/** Hook for what a synchronous delete should wait for (garbage collection arrives with the GC plugin). */
export type AfterLeaseDelete = (namespace: string, sync: boolean) => Promise<void>;

export function leasesService(store: LeaseStore, log: Logger, afterDelete?: AfterLeaseDelete): GrpcService {
  const l = log.child({ service: 'leases' });
  // containerd's resource field is never nil: a missing one is the empty resource (NOT_IMPLEMENTED: no type).
  const resource = (r: Resource | undefined) => ({ id: r?.id ?? '', type: r?.type ?? '' });
  const implementation: LeasesServer = {
    create: unary(l, 'Create', (req: { id: string; labels: Record<string, string> }, call) => ({
      lease: store.create(opContext(call).namespace, req.id, req.labels),
    })),
    delete: unary(l, 'Delete', async (req: { id: string; sync: boolean }, call) => {
      const { namespace } = opContext(call);
      store.delete(namespace, req.id);
      await afterDelete?.(namespace, req.sync);
      return {};
    }),
    list: unary(l, 'List', (req: { filters: string[] }, call) => ({ leases: store.list(opContext(call).namespace, req.filters) })),
    addResource: unary(l, 'AddResource', (req: { id: string; resource?: Resource }, call) => {
      store.addResource(opContext(call).namespace, req.id, resource(req.resource));
      return {};
    }),
    deleteResource: unary(l, 'DeleteResource', (req: { id: string; resource?: Resource }, call) => {
      store.deleteResource(opContext(call).namespace, req.id, resource(req.resource));
      return {};
    }),
    listResources: unary(l, 'ListResources', (req: { id: string }, call) => ({
      resources: store.listResources(opContext(call).namespace, req.id),
    })),
  };
  return grpcService<LeasesServer>(LeasesService, implementation);
}
