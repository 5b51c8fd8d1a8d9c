/** containerd.services.namespaces.v1.Namespaces over the metadata namespace store. */
import type * as grpc from '@grpc/grpc-js';
import { NamespacesService, type Namespace } from '../gen/containerd/services/namespaces/v1/namespaces.js';
import { invalidArgument } from '../../errdefs/index.js';
import type { NamespaceStore } from '../../metadata/namespaces.js';
import type { Logger } from '../../log/index.js';
import { unary, type GrpcService } from '../call.js';

export function namespacesService(store: NamespaceStore, log: Logger): GrpcService {
  const l = log.child({ service: 'namespaces' });
  const implementation = {
    // As containerd's: a namespace with no record yet answers with empty labels, not NOT_FOUND (the Go
    // client reads the default namespace's labels when it connects, before anything exists in it).
    get: unary(l, 'Get', (req: { name: string }) => ({
      namespace: store.exists(req.name) ? store.get(req.name) : { name: req.name, labels: {} },
    })),
    list: unary(l, 'List', () => ({ namespaces: store.list() })),
    create: unary(l, 'Create', (req: { namespace?: Namespace }) => {
      if (!req.namespace) throw invalidArgument('namespace must be set');
      return { namespace: store.create(req.namespace.name, req.namespace.labels) };
    }),
    update: unary(l, 'Update', (req: { namespace?: Namespace; updateMask?: string[] }) => {
      if (!req.namespace) throw invalidArgument('namespace must be set');
      return { namespace: store.update(req.namespace, req.updateMask ?? []) };
    }),
    delete: unary(l, 'Delete', (req: { name: string }) => {
      store.delete(req.name);
      return {};
    }),
  };
  return { definition: NamespacesService as unknown as grpc.ServiceDefinition, implementation };
}
