/** containerd.services.introspection.v1.Introspection: what the daemon loaded, and its identity. */
import type * as grpc from '@grpc/grpc-js';
import { IntrospectionService, type IntrospectionServer } from '../gen/containerd/services/introspection/v1/introspection.js';
import { adapt, parseAll } from '../../filters/index.js';
import type { LoadedPlugin } from '../../plugin/index.js';
import type { Logger } from '../../log/index.js';
import { unary, type GrpcService, grpcService } from '../call.js';
import { pluginToPb } from '../convert.js';


export function introspectionService(plugins: () => readonly LoadedPlugin[], uuid: string, log: Logger): GrpcService {
  const l = log.child({ service: 'introspection' });
  const implementation: IntrospectionServer = {
    plugins: unary(l, 'Plugins', (req: { filters: string[] }) => {
      const filter = parseAll(req.filters);
      const out = plugins()
        .map(pluginToPb)
        .filter((p) =>
          filter.match(
            // containerd's adaptor: type and id (present when not empty); platforms and capabilities are never
            // matched (its TODOs), so a filter on them matches no plugin.
            adapt((path) => {
              const v = path[0] === 'type' ? p.type : path[0] === 'id' ? p.id : '';
              return v === '' ? undefined : v;
            }),
          ),
        );
      return { plugins: out };
    }),
    server: unary(l, 'Server', () => ({ uuid })),
  };
  return grpcService<IntrospectionServer>(IntrospectionService, implementation);
}
