/**
 * Plumbing shared by every service: reading the namespace and lease from call metadata, and turning thrown
 * errors into gRPC statuses. Handlers are written as async functions; these wrappers adapt them to grpc-js.
 */
import * as grpc from '@grpc/grpc-js';
import { GrpcCode, StrataError, grpcCodeOf } from '../core/errdefs.js';
import { requireNamespace, type OpContext } from '../metadata/index.js';
import type { Logger } from '../log/index.js';

export const NAMESPACE_HEADER = 'containerd-namespace';
export const LEASE_HEADER = 'containerd-lease';

type AnyCall = { metadata: grpc.Metadata; getPath?: () => string };

function header(call: AnyCall, key: string): string | undefined {
  const v = call.metadata.get(key)[0];
  return v === undefined ? undefined : String(v);
}

/** The namespace (required: INVALID_ARGUMENT without it) and optional lease of a call. */
export function opContext(call: AnyCall): OpContext {
  const namespace = requireNamespace(header(call, NAMESPACE_HEADER));
  const lease = header(call, LEASE_HEADER);
  return lease ? { namespace, lease } : { namespace };
}

/** The namespace of a call if it has one (for calls where it is optional). */
export function optionalNamespace(call: AnyCall): string | undefined {
  return header(call, NAMESPACE_HEADER) || undefined;
}

export function toStatus(err: unknown): Partial<grpc.StatusObject> {
  if (err instanceof StrataError) return { code: err.grpcCode as grpc.status, details: err.message };
  const e = err as { code?: unknown; details?: unknown; message?: unknown };
  // Already a gRPC status (e.g. from a proxied backend): pass it through.
  if (typeof e?.code === 'number' && typeof e.details === 'string') return { code: e.code as grpc.status, details: e.details };
  return { code: grpcCodeOf(err) as grpc.status, details: err instanceof Error ? err.message : String(err) };
}

function logFailure(log: Logger, method: string, err: unknown): void {
  const st = toStatus(err);
  const expected = err instanceof StrataError && st.code !== GrpcCode.UNKNOWN;
  if (expected) log.debug('call failed', { method, code: st.code, error: st.details });
  else log.error('call failed', { method, error: err instanceof Error ? err.stack : String(err) });
}

/** A call's kind, as go-grpc-prometheus names it (its grpc_type label). */
export type CallType = 'unary' | 'client_stream' | 'server_stream' | 'bidi_stream';

/**
 * Sees every call start and end (src/metrics: the Prometheus counters and the SIGUSR1 dump of calls in flight).
 * started() runs on every call, so it must cost next to nothing; its result is handed back to the others.
 * It counts the one request message of unary and server-streaming calls itself.
 */
export interface CallObserver<T = unknown> {
  started(path: string, type: CallType, metadata: grpc.Metadata): T;
  received(token: T): void;
  sent(token: T): void;
  handled(token: T, code: number): void;
}

let observer: CallObserver | undefined;

/** Installs the observer of every call (undefined removes it). Without one the wrappers do nothing more. */
export function observeCalls(o: CallObserver<any> | undefined): void {
  observer = o;
}

/** The received() hook of a bidi call, for messageReader (which sees the messages the wrapper does not). */
const receivers = new WeakMap<object, () => void>();

export function unary<Req, Res>(
  log: Logger,
  method: string,
  fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res> | Res,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    if (log.enabled('debug')) log.debug('call', { method });
    const o = observer;
    const t = o?.started(call.getPath(), 'unary', call.metadata);
    Promise.resolve()
      .then(() => fn(call.request, call))
      .then(
        (res) => {
          if (o) {
            o.sent(t);
            o.handled(t, 0);
          }
          callback(null, res);
        },
        (err) => {
          logFailure(log, method, err);
          const st = toStatus(err);
          o?.handled(t, st.code ?? 2);
          callback(st as grpc.ServiceError);
        },
      );
  };
}

/** A send function that waits for the stream to drain when its buffer is full, and fails once the client left. */
function sender<Res>(call: { cancelled: boolean; write(m: Res): boolean; once(ev: 'drain', fn: () => void): unknown }, onSent?: () => void) {
  return (msg: Res) =>
    new Promise<void>((resolve, reject) => {
      if (call.cancelled) return reject(new StrataError('canceled', 'call cancelled by client'));
      onSent?.();
      if (call.write(msg)) resolve();
      else call.once('drain', resolve);
    });
}

/** Server streaming: the handler writes with `send` (which respects back-pressure) and returns when done. */
export function serverStream<Req, Res>(
  log: Logger,
  method: string,
  fn: (req: Req, send: (msg: Res) => Promise<void>, call: grpc.ServerWritableStream<Req, Res>) => Promise<void>,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    if (log.enabled('debug')) log.debug('call', { method });
    const o = observer;
    const t = o?.started(call.getPath(), 'server_stream', call.metadata);
    fn(call.request, sender(call, o && (() => o.sent(t))), call).then(
      () => {
        o?.handled(t, 0);
        call.end();
      },
      (err) => {
        if (call.cancelled) return o?.handled(t, 1);
        logFailure(log, method, err);
        const st = toStatus(err);
        o?.handled(t, st.code ?? 2);
        call.emit('error', st);
      },
    );
  };
}

export function bidiStream<Req, Res>(
  log: Logger,
  method: string,
  fn: (call: grpc.ServerDuplexStream<Req, Res>, send: (msg: Res) => Promise<void>) => Promise<void>,
): grpc.handleBidiStreamingCall<Req, Res> {
  return (call) => {
    if (log.enabled('debug')) log.debug('call', { method });
    const o = observer;
    const t = o?.started(call.getPath(), 'bidi_stream', call.metadata);
    if (o) receivers.set(call, () => o.received(t));
    fn(call, sender(call, o && (() => o.sent(t)))).then(
      () => {
        o?.handled(t, 0);
        call.end();
      },
      (err) => {
        if (call.cancelled) return o?.handled(t, 1);
        logFailure(log, method, err);
        const st = toStatus(err);
        o?.handled(t, st.code ?? 2);
        call.emit('error', st);
      },
    );
  };
}

/**
 * Reads a client stream one message at a time. Async iteration over a grpc-js call would destroy the stream
 * when the client half-closes, and then the final status could no longer be sent: this reader only pauses
 * and resumes, so the handler can still answer after the client's end.
 */
export function messageReader<T>(stream: NodeJS.ReadableStream & { on(event: string, fn: (...a: any[]) => void): unknown }): {
  next(): Promise<T | undefined>;
} {
  const queue: T[] = [];
  let ended = false;
  let failed: unknown;
  let wake: (() => void) | undefined;
  const onReceived = receivers.get(stream);
  const poke = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  stream.on('data', (m: T) => {
    onReceived?.();
    queue.push(m);
    stream.pause();
    poke();
  });
  stream.on('end', () => {
    ended = true;
    poke();
  });
  stream.on('error', (err: unknown) => {
    failed = err;
    poke();
  });
  return {
    async next(): Promise<T | undefined> {
      for (;;) {
        if (queue.length > 0) {
          const m = queue.shift()!;
          if (queue.length === 0) stream.resume();
          return m;
        }
        if (failed !== undefined) throw failed;
        if (ended) return undefined;
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
  };
}

/** A service the gRPC plugins hand to the server. */
export interface GrpcService {
  definition: grpc.ServiceDefinition;
  implementation: grpc.UntypedServiceImplementation;
  /** Ends calls that never finish on their own (subscriptions, watches) so that shutdown can drain. */
  drain?(): void;
}

/**
 * A service from its generated definition and a handler per method, typed against the generated server
 * interface: a misspelled or missing method, or a handler with the wrong request or response shape, fails to
 * compile. `definition` may be the generated one with serializers replaced (content's Read).
 */
export function grpcService<Server extends grpc.UntypedServiceImplementation>(
  definition: { readonly [method in keyof Server]: unknown },
  implementation: Server,
  drain?: () => void,
): GrpcService {
  const svc: GrpcService = { definition: definition as unknown as grpc.ServiceDefinition, implementation };
  if (drain) svc.drain = drain;
  return svc;
}
