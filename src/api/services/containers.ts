/**
 * containerd.services.containers.v1.Containers over the metadata container store. The store validates and
 * publishes the /containers/* events; this layer only translates. ListStream sends one container per
 * message, as containerd's does.
 */
import type * as grpc from '@grpc/grpc-js';
import { ContainersService, type ContainersServer, type Container as ContainerPb } from '../gen/containerd/services/containers/v1/containers.js';
import { invalidArgument } from '../../core/errdefs.js';
import type { NamespacedContainers } from '../../metadata/containers.js';
import type { Logger } from '../../log/index.js';
import { opContext, serverStream, unary, type GrpcService, grpcService } from '../call.js';
import { containerFromPb, containerToPb } from '../convert.js';




export function containersService(store: NamespacedContainers, log: Logger): GrpcService {
  const l = log.child({ service: 'containers' });
  const implementation: ContainersServer = {
    get: unary(l, 'Get', async (req: { id: string }, call) => ({
      container: containerToPb(await store.bind(opContext(call)).get(req.id)),
    })),
    list: unary(l, 'List', async (req: { filters: string[] }, call) => ({
      containers: (await store.bind(opContext(call)).list(req.filters)).map(containerToPb),
    })),
    listStream: serverStream(l, 'ListStream', async (req: { filters: string[] }, send, call) => {
      const list = await store.bind(opContext(call)).list(req.filters);
      for (const c of list) await send({ container: containerToPb(c) });
    }),
    create: unary(l, 'Create', async (req: { container?: ContainerPb }, call) => ({
      container: containerToPb(await store.bind(opContext(call)).create(containerFromPb(req.container))),
    })),
    update: unary(l, 'Update', async (req: { container?: ContainerPb; updateMask?: string[] }, call) => {
      const ctx = opContext(call);
      if (!req.container?.id) throw invalidArgument('Container.ID required');
      const updated = await store.bind(ctx).update(containerFromPb(req.container), req.updateMask ?? []);
      return { container: containerToPb(updated) };
    }),
    delete: unary(l, 'Delete', async (req: { id: string }, call) => {
      await store.bind(opContext(call)).delete(req.id);
      return {};
    }),
  };
  return grpcService<ContainersServer>(ContainersService, implementation);
}
