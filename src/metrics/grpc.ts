/**
 * The gRPC server's metrics under go-grpc-prometheus's names and labels, as containerd serves them
 * (grpc_server_started_total, grpc_server_handled_total, grpc_server_msg_received_total,
 * grpc_server_msg_sent_total and, with [metrics] grpc_histogram, grpc_server_handling_seconds), and the calls in
 * flight for the SIGUSR1 dump.
 *
 * It is installed as src/api/call.ts's observer (structurally: this folder does not import the gRPC layer). Per
 * call it does a map lookup by path, a few increments, one Set insert and delete and two clock reads.
 */
import { DEFAULT_BUCKETS, Histogram, TextWriter, bucketLabels, formatLabels } from './exposition.js';

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

/** The families this file writes, in order. */
const FAMILIES = [
  ['grpc_server_started_total', 'Total number of RPCs started on the server.'],
  ['grpc_server_handled_total', 'Total number of RPCs completed on the server, regardless of success or failure.'],
  ['grpc_server_msg_received_total', 'Total number of RPC stream messages received on the server.'],
  ['grpc_server_msg_sent_total', 'Total number of gRPC stream messages sent by the server.'],
  ['grpc_server_handling_seconds', 'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.'],
] as const;

/**
 * The counters of one method. A scrape writes ~35 series per method for every method served, most of them
 * unchanged since the previous scrape: each method keeps its series as encoded bytes, rebuilt only after a
 * change (`version`), so a scrape mostly copies bytes.
 */
class MethodStats {
  /** Bumped by every event; the encoded series are of `encodedAt`. */
  version = 0;
  private encodedAt = -1;
  private encoded: Buffer[] = [];
  started = 0;
  received = 0;
  sent = 0;
  /** Handled calls by code number. */
  readonly handled: number[] = new Array<number>(GRPC_CODE_NAMES.length).fill(0);
  /** {grpc_method,grpc_service,grpc_type}, the labels Go's client writes sorted by name. */
  readonly labelText: string;
  /** The same with grpc_code first, by code number. */
  readonly handledText: string[];
  readonly histogram: Histogram | undefined;
  readonly bucketText: string[] = [];

  constructor(
    readonly type: GrpcType,
    readonly service: string,
    readonly method: string,
    withHistogram: boolean,
  ) {
    const labels = [
      ['grpc_method', method],
      ['grpc_service', service],
      ['grpc_type', type],
    ] as const;
    this.labelText = formatLabels(labels);
    this.handledText = GRPC_CODE_NAMES.map((code) => formatLabels([['grpc_code', code], ...labels]));
    if (withHistogram) {
      this.histogram = new Histogram(DEFAULT_BUCKETS);
      this.bucketText = bucketLabels(labels, DEFAULT_BUCKETS);
    }
  }

  /** This method's samples of each family (FAMILIES' order), as text-format bytes. */
  series(): Buffer[] {
    if (this.encodedAt === this.version) return this.encoded;
    const l = this.labelText;
    let handled = '';
    for (let code = 0; code < this.handled.length; code++) handled += `grpc_server_handled_total${this.handledText[code]} ${this.handled[code]}\n`;
    const parts = [
      `grpc_server_started_total${l} ${this.started}\n`,
      handled,
      `grpc_server_msg_received_total${l} ${this.received}\n`,
      `grpc_server_msg_sent_total${l} ${this.sent}\n`,
    ];
    if (this.histogram) {
      const w = new TextWriter();
      this.histogram.writeText(w, 'grpc_server_handling_seconds', l, this.bucketText);
      parts.push(w.text());
    }
    this.encoded = parts.map((p) => Buffer.from(p, 'utf8'));
    this.encodedAt = this.version;
    return this.encoded;
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
  /** The methods in output order, until a new one comes. */
  private sorted: MethodStats[] | undefined;

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
      this.sorted = undefined;
    }
    return s;
  }

  started(path: string, type: GrpcType, metadata: InflightCall['metadata']): InflightCall {
    const stats = this.methods.get(path) ?? this.stats(path, type);
    stats.version++;
    stats.started++;
    // Unary and server-streaming calls have their one request in hand when they start.
    if (type !== 'bidi_stream') stats.received++;
    const call: InflightCall = { stats, start: performance.now(), metadata };
    this.inflight.add(call);
    return call;
  }

  received(call: InflightCall): void {
    call.stats.version++;
    call.stats.received++;
  }

  sent(call: InflightCall): void {
    call.stats.version++;
    call.stats.sent++;
  }

  handled(call: InflightCall, code: number): void {
    if (!this.inflight.delete(call)) return; // handled twice: count the first outcome only
    const s = call.stats;
    s.version++;
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
    const all = (this.sorted ??= [...this.methods.values()].sort((a, b) =>
      a.service === b.service ? (a.method < b.method ? -1 : 1) : a.service < b.service ? -1 : 1,
    ));
    const series = all.map((s) => s.series());
    const families = this.histogram ? FAMILIES.length : FAMILIES.length - 1;
    for (let f = 0; f < families; f++) {
      const [name, help] = FAMILIES[f]!;
      w.family(name, f === 4 ? 'histogram' : 'counter', help);
      for (const s of series) w.chunk(s[f]!);
    }
  }
}
