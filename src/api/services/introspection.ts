/** containerd.services.introspection.v1.Introspection: what the daemon loaded, and its identity. */
import type * as grpc from '@grpc/grpc-js';
import { IntrospectionService, type Plugin } from '../gen/containerd/services/introspection/v1/introspection.js';
import { GrpcCode } from '../../core/errdefs.js';
import { adapt, parseAll } from '../../filters/index.js';
import type { LoadedPlugin } from '../../plugin/index.js';
import type { Logger } from '../../log/index.js';
import { unary, type GrpcService } from '../call.js';

function toPlugin(p: LoadedPlugin): Plugin {
  const r = p.registration;
  let initErr: Plugin['initErr'];
  if (p.status.state === 'skipped') initErr = { code: GrpcCode.FAILED_PRECONDITION, message: p.status.reason, details: [] };
  if (p.status.state === 'error') initErr = { code: GrpcCode.UNKNOWN, message: p.status.error.message, details: [] };
  return {
    type: r.type,
    id: r.id,
    requires: (r.requires ?? []).map(String),
    platforms: p.meta.platforms.map((pl) => ({ os: pl.os, architecture: pl.architecture, variant: pl.variant ?? '' })),
    exports: p.meta.exports,
    capabilities: p.meta.capabilities,
    initErr,
  };
}

export function introspectionService(plugins: () => readonly LoadedPlugin[], uuid: string, log: Logger): GrpcService {
  const l = log.child({ service: 'introspection' });
  const implementation = {
    plugins: unary(l, 'Plugins', (req: { filters: string[] }) => {
      const filter = parseAll(req.filters);
      const out = plugins()
        .map(toPlugin)
        .filter((p) =>
          filter.match(
            adapt((path) => {
              if (path.length !== 1) return path[0] === 'capabilities' ? undefined : undefined;
              switch (path[0]) {
                case 'type':
                  return p.type;
                case 'id':
                  return p.id;
                case 'platforms':
                  return p.platforms.map((pl) => `${pl.os}/${pl.architecture}`).join(',');
                case 'capabilities':
                  return p.capabilities.join(',');
                default:
                  return undefined;
              }
            }),
          ),
        );
      return { plugins: out };
    }),
    server: unary(l, 'Server', () => ({ uuid })),
  };
  return { definition: IntrospectionService as unknown as grpc.ServiceDefinition, implementation };
}
