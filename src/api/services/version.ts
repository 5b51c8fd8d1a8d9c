/** containerd.services.version.v1.Version and grpc.health.v1.Health. */
import type * as grpc from '@grpc/grpc-js';
import { VersionService, type VersionServer } from '../gen/containerd/services/version/v1/version.js';
import { HealthService, HealthCheckResponse_ServingStatus, type HealthServer } from '../gen/grpc/health/v1/health.js';
import type { Logger } from '../../log/index.js';
import { grpcService, serverStream, unary, type GrpcService } from '../call.js';

export function versionService(version: string, revision: string, log: Logger): GrpcService {
  const l = log.child({ service: 'version' });
  return grpcService<VersionServer>(VersionService, { version: unary(l, 'Version', () => ({ version, revision })) });
}

/** The daemon is serving once its gRPC server accepts calls; there is no per-service health yet. */
export function healthService(log: Logger): GrpcService {
  const l = log.child({ service: 'health' });
  const serving = { status: HealthCheckResponse_ServingStatus.SERVING };
  const watchers = new Set<() => void>();
  return grpcService<HealthServer>(
    HealthService,
    {
      check: unary(l, 'Check', () => serving),
      watch: serverStream(l, 'Watch', async (_req, send, call) => {
        await send(serving);
        let end = () => undefined as void;
        await new Promise<void>((resolve) => {
          end = resolve;
          watchers.add(resolve);
          call.on('cancelled', resolve);
          call.on('close', resolve);
        });
        watchers.delete(end);
      }),
    },
    () => {
      for (const end of watchers) end();
    },
  );
}
