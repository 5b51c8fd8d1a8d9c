/**
 * The gRPC server's metrics under go-grpc-prometheus's names and labels, as containerd serves them
 * (grpc_server_started_total, grpc_server_handled_total, grpc_server_msg_received_total,
 * grpc_server_msg_sent_total and, with [metrics] grpc_histogram, grpc_server_handling_seconds), and the calls in
 * flight for the SIGUSR1 dump.
 *
 * It is installed as src/api/call.ts's observer (structurally: this folder does not import the gRPC layer). Per
 * call it does a map lookup by path, a few increments, one Set insert and delete and two clock reads.
 */
import type { Labels, TextWriter } from './exposition.js';
import { DEFAULT_BUCKETS, Histogram } from './exposition.js';

/** grpc_type values (src/api/call.ts's CallType). */
export type GrpcType = 'unary' | 'client_stream' | 'server_stream' | 'bidi_stream';

/** Go's codes.Code.String(), by code number: the grpc_code label. */
export const GRPC_CODE_NAMES = [
  'OK',
  'Canceled',
  'Unknown',
  'InvalidArgument',
  'DeadlineExceeded',
  'NotFound',
  'AlreadyExists',
  'PermissionDenied',
  'ResourceExhausted',
  'FailedPrecondition',
  'Aborted',
  'OutOfRange',
  'Unimplemented',
  'Internal',
  'Unavailable',
  'DataLoss',
  'Unauthenticated',
] as const;

const codeName = (code: number): string => GRPC_CODE_NAMES[code] ?? `Code(${code})`;

/** The counters of one method. */
class MethodStats {
  started = 0;
  received = 0;
  sent = 0;
  /** Handled calls by code number. */
  readonly handled: number[] = new Array<number>(GRPC_CODE_NAMES.length).fill(0);
  readonly labels: Labels;
  histogram: Histogram | undefined;

  constructor(
    readonly type: GrpcType,
    readonly service: string,
    readonly method: string,
    withHistogram: boolean,
  ) {
    this.labels = [
      ['grpc_method', method],
      ['grpc_service', service],
      ['grpc_type', type],
    ];
    if (withHistogram) this.histogram = new Histogram(DEFAULT_BUCKETS);
  }
}

/** A call in flight: the observer's token. */
export interface InflightCall {
  readonly stats: MethodStats;
  /** performance.now() at the start. */
  readonly start: number;
  /** The call's metadata, read only when the calls are dumped. */
  readonly metadata: { get(key: string): unknown[] };
}

/** A method of a served service, as a grpc-js service definition describes it. */
export interface MethodDefinition {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
}

export interface CallSnapshot {
  method: string;
  type: GrpcType;
  namespace: string;
  ageSeconds: number;
}

const splitPath = (path: string): [string, string] => {
  const slash = path.lastIndexOf('/');
  return [path.slice(path.startsWith('/') ? 1 : 0, slash), path.slice(slash + 1)];
};

export const typeOf = (m: Pick<MethodDefinition, 'requestStream' | 'responseStream'>): GrpcType =>
  m.requestStream ? (m.responseStream ? 'bidi_stream' : 'client_stream') : m.responseStream ? 'server_stream' : 'unary';

/** The observer of src/api/call.ts, keeping go-grpc-prometheus's counters and the set of calls in flight. */
export class GrpcMetrics {
  private readonly methods = new Map<string, MethodStats>();
  private readonly inflight = new Set<InflightCall>();

  /** @param histogram keep grpc_server_handling_seconds (containerd's [metrics] grpc_histogram). */
  constructor(readonly histogram: boolean) {}

  /**
   * Declares the methods of a served service so that they are exported at zero before their first call, as
   * go-grpc-prometheus's Register does (the grpc_type comes from the definition: client streams included).
   */
  register(definition: Record<string, MethodDefinition>): void {
    for (const m of Object.values(definition)) this.stats(m.path, typeOf(m));
  }

  private stats(path: string, type: GrpcType): MethodStats {
    let s = this.methods.get(path);
    if (!s) {
      const [service, method] = splitPath(path);
      s = new MethodStats(type, service, method, this.histogram);
      this.methods.set(path, s);
    }
    return s;
  }

  started(path: string, type: GrpcType, metadata: InflightCall['metadata']): InflightCall {
    const stats = this.methods.get(path) ?? this.stats(path, type);
    stats.started++;
    // Unary and server-streaming calls have their one request in hand when they start.
    if (type !== 'bidi_stream') stats.received++;
    const call: InflightCall = { stats, start: performance.now(), metadata };
    this.inflight.add(call);
    return call;
  }

  received(call: InflightCall): void {
    call.stats.received++;
  }

  sent(call: InflightCall): void {
    call.stats.sent++;
  }

  handled(call: InflightCall, code: number): void {
    if (!this.inflight.delete(call)) return; // handled twice: count the first outcome only
    const s = call.stats;
    if (code >= 0 && code < s.handled.length) s.handled[code]!++;
    s.histogram?.observe((performance.now() - call.start) / 1000);
  }

  /** The calls in flight, oldest first: method, namespace (from the call's header) and age. */
  inflightCalls(now = performance.now()): CallSnapshot[] {
    return [...this.inflight]
      .map((c) => ({
        method: `/${c.stats.service}/${c.stats.method}`,
        type: c.stats.type,
        namespace: String(c.metadata.get('containerd-namespace')[0] ?? ''),
        ageSeconds: Math.round(now - c.start) / 1000,
      }))
      .sort((a, b) => b.ageSeconds - a.ageSeconds);
  }

  /** The families, each whole, methods in a stable (sorted) order. */
  write(w: TextWriter): void {
    const all = [...this.methods.values()].sort((a, b) =>
      a.service === b.service ? (a.method < b.method ? -1 : 1) : a.service < b.service ? -1 : 1,
    );
    w.family('grpc_server_started_total', 'counter', 'Total number of RPCs started on the server.');
    for (const s of all) w.sample('grpc_server_started_total', s.labels, s.started);
    w.family('grpc_server_handled_total', 'counter', 'Total number of RPCs completed on the server, regardless of success or failure.');
    for (const s of all) {
      for (let code = 0; code < s.handled.length; code++) {
        w.sample('grpc_server_handled_total', [['grpc_code', codeName(code)], ...s.labels], s.handled[code]!);
      }
    }
    w.family('grpc_server_msg_received_total', 'counter', 'Total number of RPC stream messages received on the server.');
    for (const s of all) w.sample('grpc_server_msg_received_total', s.labels, s.received);
    w.family('grpc_server_msg_sent_total', 'counter', 'Total number of gRPC stream messages sent by the server.');
    for (const s of all) w.sample('grpc_server_msg_sent_total', s.labels, s.sent);
    if (this.histogram) {
      w.family(
        'grpc_server_handling_seconds',
        'histogram',
        'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.',
      );
      for (const s of all) s.histogram!.write(w, 'grpc_server_handling_seconds', s.labels);
    }
  }
}
