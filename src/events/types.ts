/**
 * Events as the rest of Strata sees them. Internal publishers give a containerd event type name and a plain
 * object (`{ type: 'containerd.events.ContentDelete', data: { digest } }`); events that arrive from clients
 * (Publish/Forward) are opaque bytes with their type URL. Only the gRPC layer knows protobuf: it encodes the
 * plain objects of known types and passes opaque ones through untouched.
 */
export type EventPayload =
  /** `raw`: the bytes a client sent (Publish/Forward), passed on as they came; absent for Strata's own events. */
  | { kind: 'typed'; type: string; data: Record<string, unknown>; raw?: Uint8Array }
  | { kind: 'opaque'; typeUrl: string; value: Uint8Array };

export interface Envelope {
  timestamp: Date;
  namespace: string;
  topic: string;
  event: EventPayload;
}

export interface EventPublisher {
  publish(namespace: string, topic: string, event: EventPayload): void;
}

export const typedEvent = (type: string, data: Record<string, unknown>): EventPayload => ({ kind: 'typed', type, data });

/** A publisher that drops everything, for stores used without a daemon. */
export const discardEvents: EventPublisher = { publish: () => undefined };
