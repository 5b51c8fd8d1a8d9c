/**
 * The event exchange: publishers hand it envelopes, subscribers receive those that match their filters.
 * Delivery is in-process and non-blocking for publishers: each subscriber has its own queue, and a
 * subscriber that falls too far behind is dropped rather than stalling the daemon.
 */
import { invalidArgument } from '../core/errdefs.js';
import { adapt, parseAll, type Filter } from '../filters/index.js';
import { validateIdentifier } from '../core/identifiers.js';
import type { Envelope, EventPayload, EventPublisher } from './types.js';
import { now as nowTime } from '../core/time.js';

const MAX_QUEUE = 10_000;

export interface Subscription {
  /** Async iteration yields matching envelopes until close() or the subscriber is dropped. */
  [Symbol.asyncIterator](): AsyncIterator<Envelope>;
  close(): void;
}

/** containerd's topic rule: "/" followed by identifier components separated by "/". */
export function validateTopic(topic: string): void {
  if (!topic.startsWith('/')) throw invalidArgument(`must start with '/': topic ${JSON.stringify(topic)}`);
  if (topic.length === 1) throw invalidArgument('must have at least one component: topic "/"');
  for (const part of topic.slice(1).split('/')) {
    try {
      validateIdentifier(part);
    } catch (err) {
      throw invalidArgument(`failed validation on component ${JSON.stringify(part)}: topic ${JSON.stringify(topic)}`, err);
    }
  }
}

function envelopeAdaptor(env: Envelope) {
  return adapt((path) => {
    if (path.length === 0) return undefined;
    if (path[0] === 'namespace' && path.length === 1) return env.namespace;
    if (path[0] === 'topic' && path.length === 1) return env.topic;
    if (path[0] === 'event' && env.event.kind === 'typed') {
      let cur: unknown = env.event.data;
      for (const p of path.slice(1)) {
        if (typeof cur !== 'object' || cur === null) return undefined;
        cur = (cur as Record<string, unknown>)[p];
      }
      return typeof cur === 'string' || typeof cur === 'number' || typeof cur === 'boolean' ? String(cur) : undefined;
    }
    return undefined;
  });
}

class Subscriber implements Subscription {
  private queue: Envelope[] = [];
  private waiting: ((r: IteratorResult<Envelope>) => void) | undefined;
  private closed = false;

  constructor(
    private readonly filter: Filter,
    private readonly onClose: (s: Subscriber) => void,
  ) {}

  offer(env: Envelope): void {
    if (this.closed || !this.filter.match(envelopeAdaptor(env))) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w({ value: env, done: false });
      return;
    }
    if (this.queue.length >= MAX_QUEUE) {
      this.close();
      return;
    }
    this.queue.push(env);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.onClose(this);
    this.waiting?.({ value: undefined, done: true });
    this.waiting = undefined;
  }

  [Symbol.asyncIterator](): AsyncIterator<Envelope> {
    return {
      next: () => {
        const env = this.queue.shift();
        if (env) return Promise.resolve({ value: env, done: false });
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (this.waiting = resolve));
      },
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

export class Exchange implements EventPublisher {
  private readonly subscribers = new Set<Subscriber>();

  publish(namespace: string, topic: string, event: EventPayload): void {
    this.forward({ timestamp: nowTime(), namespace, topic, event });
  }

  /** Publishes an envelope as given (the Forward call: timestamp and namespace come from the sender). */
  forward(env: Envelope): void {
    validateTopic(env.topic);
    validateIdentifier(env.namespace);
    for (const s of this.subscribers) s.offer(env);
  }

  subscribe(filters: string[] = []): Subscription {
    const sub = new Subscriber(parseAll(filters), (s) => this.subscribers.delete(s));
    this.subscribers.add(sub);
    return sub;
  }

  /** Ends every subscription (daemon shutdown). */
  closeAll(): void {
    for (const s of [...this.subscribers]) s.close();
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }
}
