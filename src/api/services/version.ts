/** containerd.services.version.v1.Version and grpc.health.v1.Health. */
import type * as grpc from '@grpc/grpc-js';
import { VersionService, type VersionServer } from '../gen/containerd/services/version/v1/version.js';
import { HealthService, HealthCheckResponse_ServingStatus, type HealthCheckRequest, type HealthServer } from '../gen/grpc/health/v1/health.js';
import { GrpcCode } from '../../core/errdefs.js';
import type { Logger } from '../../log/index.js';
import { grpcService, serverStream, unary, type GrpcService } from '../call.js';

export function versionService(version: string, revision: string, log: Logger): GrpcService {
  const l = log.child({ service: 'version' });
  return grpcService<VersionServer>(VersionService, { version: unary(l, 'Version', () => ({ version, revision })) });
}

/**
 * grpc-go's health server, as containerd registers it: the server as a whole ("") is SERVING; any other service
 * name is unknown (Check: NOT_FOUND "unknown service"; Watch: one SERVICE_UNKNOWN answer, then the stream stays
 * open for changes that never come).
 */
export function healthService(log: Logger): GrpcService {
  const l = log.child({ service: 'health' });
  const statusOf = (service: string) => (service === '' ? HealthCheckResponse_ServingStatus.SERVING : undefined);
  const watchers = new Set<() => void>();
  return grpcService<HealthServer>(
    HealthService,
    {
      check: unary(l, 'Check', (req: HealthCheckRequest) => {
        const status = statusOf(req.service);
        // grpc-go's own status, its text as is (no errdefs suffix).
        if (status === undefined) throw Object.assign(new Error('unknown service'), { code: GrpcCode.NOT_FOUND, details: 'unknown service' });
        return { status };
      }),
      watch: serverStream(l, 'Watch', async (req: HealthCheckRequest, send, call) => {
        await send({ status: statusOf(req.service) ?? HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN });
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
