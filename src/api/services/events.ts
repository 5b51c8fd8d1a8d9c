/** containerd.services.events.v1.Events over the exchange. */
import type * as grpc from '@grpc/grpc-js';
import { EventsService, type EventsServer, type Envelope } from '../gen/containerd/services/events/v1/events.js';
import type { Any } from '../gen/google/protobuf/any.js';
import { invalidArgument } from '../../core/errdefs.js';
import type { Exchange } from '../../events/exchange.js';
import type { Logger } from '../../log/index.js';
import { opContext, serverStream, unary, type GrpcService, grpcService } from '../call.js';
import { decodeEvent, encodeEvent } from '../eventtypes.js';

export function eventsService(exchange: Exchange, log: Logger): GrpcService {
  const l = log.child({ service: 'events' });
  const open = new Set<{ close(): void }>();
  const implementation: EventsServer = {
    publish: unary(l, 'Publish', (req: { topic: string; event?: Any }, call) => {
      if (!req.event) throw invalidArgument('event must be set');
      exchange.publish(opContext(call).namespace, req.topic, decodeEvent(req.event));
      return {};
    }),
    forward: unary(l, 'Forward', (req: { envelope?: Envelope }) => {
      const env = req.envelope;
      if (!env?.event) throw invalidArgument('envelope with an event must be set');
      exchange.forward({
        timestamp: env.timestamp ?? new Date(),
        namespace: env.namespace,
        topic: env.topic,
        event: decodeEvent(env.event),
      });
      return {};
    }),
    subscribe: serverStream(l, 'Subscribe', async (req: { filters: string[] }, send, call) => {
      const sub = exchange.subscribe(req.filters);
      open.add(sub);
      const stop = () => sub.close();
      call.on('cancelled', stop);
      call.on('close', stop);
      try {
        for await (const env of sub) {
          await send({ timestamp: env.timestamp, namespace: env.namespace, topic: env.topic, event: encodeEvent(env.event) });
        }
      } finally {
        sub.close();
        open.delete(sub);
      }
    }),
  };
  return grpcService<EventsServer>(EventsService, implementation, () => {
    for (const sub of open) sub.close();
  });
}
