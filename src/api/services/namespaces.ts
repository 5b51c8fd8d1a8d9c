/** containerd.services.namespaces.v1.Namespaces over the metadata namespace store. */
import type * as grpc from '@grpc/grpc-js';
import { NamespacesService, type NamespacesServer, type Namespace } from '../gen/containerd/services/namespaces/v1/namespaces.js';
import { invalidArgument } from '../../core/errdefs.js';
import type { NamespaceStore } from '../../metadata/namespaces.js';
import type { Logger } from '../../log/index.js';
import { callNamespace, unary, type GrpcService, grpcService } from '../call.js';

export function namespacesService(store: NamespaceStore, log: Logger): GrpcService {
  const l = log.child({ service: 'namespaces' });
  const implementation: NamespacesServer = {
    // As containerd's: a namespace with no record yet answers with empty labels, not NOT_FOUND (the Go
    // client reads the default namespace's labels when it connects, before anything exists in it).
    get: unary(l, 'Get', (req: { name: string }) => ({
      namespace: store.exists(req.name) ? store.get(req.name) : { name: req.name, labels: {} },
    })),
    list: unary(l, 'List', () => ({ namespaces: store.list() })),
    // The create and update events go to the caller's namespace, as containerd publishes them (with no namespace
    // on the call, where containerd's publish fails after the change, to the namespace itself).
    create: unary(l, 'Create', (req: { namespace?: Namespace }, call) => {
      if (!req.namespace) throw invalidArgument('namespace must be set');
      return { namespace: store.create(req.namespace.name, req.namespace.labels, callNamespace(call) ?? req.namespace.name) };
    }),
    // containerd answers an empty namespace (its response is never filled in).
    update: unary(l, 'Update', (req: { namespace?: Namespace; updateMask?: string[] }, call) => {
      if (!req.namespace) throw invalidArgument('namespace must be set');
      store.update(req.namespace, req.updateMask ?? [], callNamespace(call) ?? req.namespace.name);
      return { namespace: { name: '', labels: {} } };
    }),
    delete: unary(l, 'Delete', (req: { name: string }) => {
      store.delete(req.name);
      return {};
    }),
  };
  return grpcService<NamespacesServer>(NamespacesService, implementation);
}
