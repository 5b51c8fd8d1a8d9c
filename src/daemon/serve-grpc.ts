/**
 * Serving gRPC services on a unix socket, alone: the daemon serves its plugins with it, and a served
 * snapshotter (serve-snapshotter.ts, also a library entry point) its one backend. It loads no plugin.
 */
import type { Config } from '../config/index.js';
import type { GrpcService } from '../api/call.js';
import { GrpcServer } from '../api/server.js';
import { secureSocket } from './socket.js';

/** Serves services on a unix socket (the socket path must have been prepared with prepareSocketPath). */
export async function serveGrpc(
  cfg: Pick<Config['grpc'], 'address' | 'uid' | 'gid' | 'max_recv_message_size' | 'max_send_message_size' | 'max_concurrent_streams'>,
  services: GrpcService[],
): Promise<GrpcServer> {
  const server = new GrpcServer({
    maxReceiveMessageLength: cfg.max_recv_message_size,
    maxSendMessageLength: cfg.max_send_message_size,
    maxConcurrentStreams: cfg.max_concurrent_streams,
  });
  for (const svc of services) server.addService(svc.definition as never, svc.implementation as never);
  await server.listen(cfg.address);
  secureSocket(cfg.address, cfg.uid, cfg.gid);
  return server;
}

