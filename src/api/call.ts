/**
 * Plumbing shared by every service: reading the namespace and lease from call metadata, and turning thrown
 * errors into gRPC statuses. Handlers are written as plain or async functions; these wrappers adapt them to
 * the server (src/api/server.ts). Their types are grpc-js's handler types, which the generated server
 * interfaces use, so that each service is checked against its protobuf definition at compile time.
 */
import type * as grpc from '@grpc/grpc-js';
import { GrpcCode, StrataError, grpcCodeOf, noSpaceCode } from '../core/errdefs.js';
import { requireNamespace, type OpContext } from '../metadata/index.js';
import type { Logger } from '../log/index.js';
import type { CallStatus, ServerCall } from './server.js';
import { LEASE_HEADER, NAMESPACE_HEADER } from './headers.js';

export { LEASE_HEADER, NAMESPACE_HEADER };

/** What a handler may read of its call: the request metadata (and the method's path). */
export type CallContext = { metadata: { get(key: string): unknown[] }; getPath?: () => string; connected?: () => boolean };

/**
 * The first value of a header. A Go client that sets the namespace twice (namespaces.WithNamespace on an
 * already namespaced context) sends the header twice, newest first, and containerd takes the first; the
 * server splits Node's joined repeated headers back into values (src/api/server.ts).
 */
function header(call: CallContext, key: string): string | undefined {
  const v = call.metadata.get(key)[0];
  return v === undefined ? undefined : String(v);
}

/**
 * An error that containerd returns without converting it to a status: gRPC answers UNKNOWN with the error's
 * text (e.g. a bad filter in snapshot List or event Subscribe). The detail keeps the original wording.
 */
export function unconverted(err: unknown, context: string): Error {
  const details = `${context}${err instanceof Error ? err.message : String(err)}`;
  return Object.assign(new Error(details), { code: GrpcCode.UNKNOWN, details });
}

/** The call's namespace when it has a valid one (services whose requests name their own namespace). */
export function callNamespace(call: CallContext): string | undefined {
  try {
    return requireNamespace(header(call, NAMESPACE_HEADER));
  } catch {
    return undefined;
  }
}

/** The namespace (required: FAILED_PRECONDITION without it, as containerd) and optional lease of a call. */
export function opContext(call: CallContext): OpContext {
  const namespace = requireNamespace(header(call, NAMESPACE_HEADER));
  const lease = header(call, LEASE_HEADER);
  return lease ? { namespace, lease } : { namespace };
}

export function toStatus(err: unknown): CallStatus {
  if (err instanceof StrataError) {
    // A full disk is the one place it is mapped: a store that reported it as 'unknown' (its own words around
    // the file call's ENOSPC, kept as the cause) answers RESOURCE_EXHAUSTED, as containerd's errdefs name it.
    if (err.kind === 'unknown' && noSpaceCode(err)) return { code: GrpcCode.RESOURCE_EXHAUSTED, details: `${err.detail}: resource exhausted` };
    return { code: err.grpcCode, details: err.message };
  }
  const e = err as { code?: unknown; details?: unknown; message?: unknown };
  // Already a gRPC status (e.g. from a proxied backend): pass it through.
  if (typeof e?.code === 'number' && typeof e.details === 'string') return { code: e.code, details: e.details };
  const details = err instanceof Error ? withoutHostPaths(err) : String(err);
  if (noSpaceCode(err)) return { code: GrpcCode.RESOURCE_EXHAUSTED, details: `${details}: resource exhausted` };
  return { code: grpcCodeOf(err), details };
}

/**
 * A Node file-call error (ENOSPC, EACCES...) that escaped a store's own wrapping names the daemon's file in its
 * message ("ENOSPC: no space left on device, write '/var/lib/strata/...'"). The client gets the error without
 * the path and the path stays in the daemon's log.
 */
function withoutHostPaths(err: Error): string {
  const e = err as NodeJS.ErrnoException & { dest?: unknown };
  let message = err.message;
  if (typeof e.syscall === 'string') {
    if (typeof e.dest === 'string') message = message.split(` -> '${e.dest}'`).join('');
    if (typeof e.path === 'string') message = message.split(` '${e.path}'`).join('');
  }
  return message;
}

function logFailure(log: Logger, method: string, err: unknown): void {
  const st = toStatus(err);
  // A typed error, or a status a handler chose on purpose (containerd's unconverted errors such as a bad filter,
  // grpc-go's health "unknown service", a proxied backend's status): the client's doing, not the daemon's.
  // Logging those at error level with a stack let any client fill the log (found by test/fuzz/grpc.test.ts).
  const deliberate = typeof (err as { code?: unknown })?.code === 'number' && typeof (err as { details?: unknown })?.details === 'string';
  const expected = (err instanceof StrataError && st.code !== GrpcCode.UNKNOWN) || deliberate;
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
  started(path: string, type: CallType, metadata: CallContext['metadata']): T;
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

const isPromise = <T>(v: unknown): v is PromiseLike<T> => typeof (v as { then?: unknown } | null)?.then === 'function';

/**
 * A unary method. A handler that answers synchronously is answered in the same turn (no promise hops: a
 * small call's whole cost is this path).
 */
export function unary<Req, Res>(
  log: Logger,
  method: string,
  fn: (req: Req, call: ServerCall) => Promise<Res> | Res,
): grpc.handleUnaryCall<Req, Res> {
  const handler = (call: ServerCall, callback: (err: CallStatus | null, res?: Res) => void) => {
    if (log.enabled('debug')) log.debug('call', { method });
    const o = observer;
    const t = o?.started(call.getPath(), 'unary', call.metadata);
    const failed = (err: unknown) => {
      logFailure(log, method, err);
      const st = toStatus(err);
      o?.handled(t, st.code ?? GrpcCode.UNKNOWN);
      callback(st);
    };
    const answer = (r: Res) => {
      if (o) {
        o.sent(t);
        o.handled(t, GrpcCode.OK);
      }
      callback(null, r);
    };
    let res: Promise<Res> | Res;
    try {
      res = fn(call.request as Req, call);
    } catch (err) {
      return failed(err);
    }
    if (isPromise<Res>(res)) res.then(answer, failed);
    else answer(res);
  };
  return handler as unknown as grpc.handleUnaryCall<Req, Res>;
}

/** A send function that waits for the stream to drain when its buffer is full, and fails once the client left. */
function sender<Res>(call: ServerCall, onSent?: () => void) {
  return (msg: Res) =>
    new Promise<void>((resolve, reject) => {
      if (call.cancelled) return reject(new StrataError('canceled', 'call cancelled by client'));
      onSent?.();
      if (call.write(msg)) resolve();
      else call.once('drain', resolve);
    });
}

/**
 * A streaming handler's promise, also when it throws before returning one: a handler written as
 * `(call, send) => session(store(call), ...)` throws synchronously when the call has no namespace, and that
 * exception, out of the server's 'stream' event, would end the daemon (any client could stop stratad with one
 * Content.Write without the namespace header; found by test/fuzz/grpc.test.ts).
 */
function started(fn: () => Promise<void>): Promise<void> {
  try {
    return fn();
  } catch (err) {
    return Promise.reject(err);
  }
}

/** Server streaming: the handler writes with `send` (which respects back-pressure) and returns when done. */
export function serverStream<Req, Res>(
  log: Logger,
  method: string,
  fn: (req: Req, send: (msg: Res) => Promise<void>, call: ServerCall) => Promise<void>,
): grpc.handleServerStreamingCall<Req, Res> {
  const handler = (call: ServerCall) => {
    if (log.enabled('debug')) log.debug('call', { method });
    const o = observer;
    const t = o?.started(call.getPath(), 'server_stream', call.metadata);
    started(() => fn(call.request as Req, sender(call, o && (() => o.sent(t))), call)).then(
      () => {
        o?.handled(t, GrpcCode.OK);
        call.end();
      },
      (err) => {
        if (call.cancelled) return o?.handled(t, GrpcCode.CANCELLED);
        logFailure(log, method, err);
        const st = toStatus(err);
        o?.handled(t, st.code ?? GrpcCode.UNKNOWN);
        call.fail(st);
      },
    );
  };
  return handler as unknown as grpc.handleServerStreamingCall<Req, Res>;
}

export function bidiStream<Req, Res>(
  log: Logger,
  method: string,
  fn: (call: ServerCall, send: (msg: Res) => Promise<void>) => Promise<void>,
): grpc.handleBidiStreamingCall<Req, Res> {
  const handler = (call: ServerCall) => {
    if (log.enabled('debug')) log.debug('call', { method });
    const o = observer;
    const t = o?.started(call.getPath(), 'bidi_stream', call.metadata);
    if (o) receivers.set(call, () => o.received(t));
    const failed = (err: unknown) => {
      if (call.cancelled) return o?.handled(t, GrpcCode.CANCELLED);
      logFailure(log, method, err);
      const st = toStatus(err);
      o?.handled(t, st.code ?? GrpcCode.UNKNOWN);
      call.fail(st);
    };
    let done: Promise<void>;
    try {
      done = fn(call, sender(call, o && (() => o.sent(t))));
    } catch (err) {
      // Failed before reading anything (no namespace...): answered now, before the transport delivers the
      // request messages of the same socket read, so the answer does not depend on how the bytes were split.
      failed(err);
      return;
    }
    done.then(() => {
      o?.handled(t, GrpcCode.OK);
      call.end();
    }, failed);
  };
  return handler as unknown as grpc.handleBidiStreamingCall<Req, Res>;
}

/**
 * Reads a client stream one message at a time: the call delivers messages as 'data' events; this reader pauses
 * it while a message waits to be taken, so a slow handler holds the client back (HTTP/2 flow control).
 */
export function messageReader<T>(stream: ServerCall): {
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
