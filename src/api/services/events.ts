/** containerd.services.events.v1.Events over the exchange. */
import type * as grpc from '@grpc/grpc-js';
import { EventsService, type EventsServer, type Envelope } from '../gen/containerd/services/events/v1/events.js';
import type { Any } from '../gen/google/protobuf/any.js';
import { invalidArgument } from '../../core/errdefs.js';
import { validateTopic, type Exchange } from '../../events/exchange.js';
import { validateIdentifier } from '../../core/identifiers.js';

/** Go's zero time.Time (0001-01-01T00:00:00Z) in milliseconds since the epoch. */
const GO_ZERO_TIME_MS = -62135596800000;
import type { Logger } from '../../log/index.js';
import { opContext, serverStream, unary, unconverted, type GrpcService, grpcService } from '../call.js';
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
      // containerd forwards the envelope as sent, and refuses one without a timestamp (Go's zero time: none, or
      // 0001-01-01T00:00:00Z), after checking the namespace and the topic.
      validateIdentifier(env.namespace);
      validateTopic(env.topic);
      if (!env.timestamp || env.timestamp.getTime() === GO_ZERO_TIME_MS) {
        throw invalidArgument('timestamp must be set on forwarded event');
      }
      exchange.forward({
        timestamp: env.timestamp,
        namespace: env.namespace,
        topic: env.topic,
        event: decodeEvent(env.event),
      });
      return {};
    }),
    subscribe: serverStream(l, 'Subscribe', async (req: { filters: string[] }, send, call) => {
      let sub: ReturnType<Exchange['subscribe']>;
      try {
        sub = exchange.subscribe(req.filters);
      } catch (err) {
        // containerd's Subscribe returns this error unconverted: UNKNOWN, in its words.
        throw unconverted(err, 'subscription error: failed parsing subscription filters: ');
      }
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
