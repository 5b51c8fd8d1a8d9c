/**
 * Strata's gRPC server: the gRPC protocol (length-prefixed messages, status in trailers, deadlines,
 * cancellation) on an HTTP/2 transport, with nothing else per call.
 *
 * Why not grpc-js's server: a call through it cost about 110 µs of daemon CPU (interceptor chains, metadata
 * conversion, channelz bookkeeping, promise hops) against about 60 µs for the same exchange on node:http2, and
 * containerd answers a small call in about 50 µs. Per-call speed is the whole cost of a snapshot Stat or
 * Mounts, so the transport is kept to what gRPC needs. Two transports carry calls, behind one CallStream
 * interface: Strata's own HTTP/2 server (./h2: its frames, HPACK, flow control, and one socket write per answer
 * or per turn of the event loop), the default; and node:http2 (nghttp2), kept as the fallback with
 * STRATA_GRPC_TRANSPORT=node-http2. Clients (ctr, containerd's Go client, grpc-js) see the same protocol on
 * both: HTTP/2 h2c on a unix socket, `application/grpc`, `grpc-status`/`grpc-message` trailers (trailers-only
 * when a call fails before answering), `grpc-timeout`.
 *
 * Handlers are the grpc-js-shaped functions the services already are (call.ts wraps them): unary handlers get
 * (call, callback), streaming ones get the call, which is an EventEmitter with the small surface they use
 * (request, metadata, cancelled, write/drain/end, data/end events, pause/resume, 'cancelled' and 'close').
 */
import http2 from 'node:http2';
import { EventEmitter } from 'node:events';
import { GrpcCode } from '../core/errdefs.js';
import { headroomOf } from '../content/headroom.js';
import { H2Server, encodeGrpcMessage, type StreamSink } from './h2/server.js';

/** A method as the generated service definitions describe it. */
interface MethodDefinition {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestDeserialize(b: Buffer): unknown;
  responseSerialize(m: unknown): Buffer | Uint8Array;
}

type Handler = (...args: any[]) => void;

interface Method {
  definition: MethodDefinition;
  handler: Handler;
}

export interface ServerOptions {
  /** Largest message accepted from a client (RESOURCE_EXHAUSTED beyond). */
  maxReceiveMessageLength: number;
  /** Largest message sent (RESOURCE_EXHAUSTED beyond). */
  maxSendMessageLength: number;
  /**
   * Streams one connection may have open at once, announced as HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS
   * (0 or unset: 2^32 - 1). Clients wait for a stream to close before opening another; a stream opened past
   * the limit anyway never reaches a handler: the HTTP/2 layer (nghttp2) resets it with REFUSED_STREAM while the
   * setting is unacknowledged, and once the client has acknowledged it, ends the whole connection with a GOAWAY
   * (RFC 9113 5.4.1 lets an endpoint treat that stream error as a connection error).
   */
  maxConcurrentStreams?: number;
}

/** The config keys of the limits, as errors name them. */
const RECV_KEY = 'max_recv_message_size';
const SEND_KEY = 'max_send_message_size';

/** grpc-go's words for a message over the size limit, then the limit's config key and value. */
const tooLarge = (dir: 'Received' | 'Sent', size: number, max: number, key: string) =>
  `${dir} message larger than max (${size} vs. ${max}): over the limit ${key} = ${max} ([grpc])`;

/** A status to end a call with: containerd's error kinds map onto these codes (src/core/errdefs.ts). */
export interface CallStatus {
  code?: number;
  details?: string;
}

/** The request headers, read as gRPC metadata: a key's values (base64-decoded for `-bin` keys). */
export class CallMetadata {
  constructor(private readonly headers: Record<string, string | string[] | undefined>) {}

  get(key: string): (string | Buffer)[] {
    const v = this.headers[key];
    if (v === undefined) return [];
    // Node joins a repeated header's values with ", "; they are split back (a value with a bare comma stays whole).
    const values = (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(', '));
    return key.endsWith('-bin') ? values.map((s) => Buffer.from(s, 'base64')) : values;
  }
}


/** grpc-timeout: an integer of at most 8 digits and a unit (H, M, S, m, u, n); milliseconds. */
function parseTimeout(v: string | string[] | undefined): number | undefined {
  if (typeof v !== 'string') return undefined;
  const m = /^(\d{1,8})([HMSmun])$/.exec(v);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 }[m[2] as 'H'];
  return n * unit;
}

/** The 5-byte gRPC message prefix written in front of the payload: in place when the buffer has room for it. */
function frame(payload: Buffer | Uint8Array): Buffer {
  const len = payload.byteLength;
  if (len >= 4096) {
    // A view with spare bytes in front (the content store's headroom reads): the prefix goes there.
    if (headroomOf(payload) >= 5) {
      const out = Buffer.from(payload.buffer, payload.byteOffset - 5, len + 5);
      out[0] = 0;
      out.writeUInt32BE(len, 1);
      return out;
    }
  }
  const out = Buffer.allocUnsafe(len + 5);
  out[0] = 0;
  out.writeUInt32BE(len, 1);
  out.set(payload, 5);
  return out;
}

/**
 * A request stream as a call sees it, whichever HTTP/2 transport carries it: Strata's own (./h2) or
 * node:http2 (NodeCallStream below). Messages are written framed (5-byte gRPC prefix included).
 */
export interface CallStream {
  /** The request headers (gRPC metadata, pseudo-headers included). */
  readonly headers: Record<string, string | string[] | undefined>;
  /** Whether the stream has closed (answered, reset or its connection lost). */
  readonly closed: boolean;
  /** Where the stream reports data, end, close and drain; set once, before anything is delivered. */
  sink: StreamSink | undefined;
  /** Sends the response headers unless already sent. */
  sendHeaders(): void;
  /** One framed message; false when the caller should wait for the sink's onDrain. */
  write(data: Buffer): boolean;
  /** The last framed message if any, then the status; trailers-only when nothing was sent before. */
  end(code: number, message: string, last?: Buffer): void;
  pause(): void;
  resume(): void;
  /** Whether the client's connection is still open. */
  connected(): boolean;
}

const RESPONSE_HEADERS = { ':status': 200, 'content-type': 'application/grpc' } as const;
const HEADERS_OPTIONS = { waitForTrailers: true, sendDate: false } as http2.ServerStreamResponseOptions;
const TRAILERS_ONLY = { endStream: true, sendDate: false } as http2.ServerStreamResponseOptions;

/** A node:http2 stream as a CallStream (the fallback transport: STRATA_GRPC_TRANSPORT=node-http2). */
class NodeCallStream implements CallStream {
  sink: StreamSink | undefined;
  private headersSent = false;
  private trailers: http2.OutgoingHttpHeaders = { 'grpc-status': '0' };
  private readonly session: http2.Http2Session | undefined;

  constructor(
    private readonly stream: http2.ServerHttp2Stream,
    readonly headers: http2.IncomingHttpHeaders,
  ) {
    // Kept: a stream forgets its session once it is destroyed, and connected() is asked after the call ended.
    this.session = stream.session;
    stream.on('data', (chunk: Buffer) => this.sink?.onData(chunk));
    stream.on('end', () => this.sink?.onEnd());
    stream.on('close', () => this.sink?.onClose());
    stream.on('error', () => undefined); // a reset stream: 'close' follows and reports the cancellation
    stream.on('drain', () => this.sink?.onDrain());
  }

  get closed(): boolean {
    return this.stream.destroyed || this.stream.closed;
  }

  connected(): boolean {
    const session = this.session;
    return session !== undefined && !session.closed && !session.destroyed;
  }

  sendHeaders(): void {
    if (this.headersSent) return;
    this.headersSent = true;
    this.stream.respond(RESPONSE_HEADERS, HEADERS_OPTIONS);
    this.stream.once('wantTrailers', () => this.stream.sendTrailers(this.trailers));
  }

  write(data: Buffer): boolean {
    if (this.closed) return true;
    this.sendHeaders();
    return this.stream.write(data);
  }

  end(code: number, message: string, last?: Buffer): void {
    if (this.closed) return;
    const status: http2.OutgoingHttpHeaders = { 'grpc-status': String(code) };
    if (message) status['grpc-message'] = encodeGrpcMessage(message);
    if (!this.headersSent && !last) {
      // Trailers-only: the status rides on the response headers.
      this.headersSent = true;
      this.stream.respond({ ...RESPONSE_HEADERS, ...status }, TRAILERS_ONLY);
      return;
    }
    this.trailers = status;
    this.sendHeaders();
    if (last) this.stream.end(last);
    else this.stream.end();
  }

  pause(): void {
    this.stream.pause();
  }

  resume(): void {
    this.stream.resume();
  }
}

/**
 * One call. Unary and server-streaming calls read their one request before the handler runs; client- and
 * bidi-streaming calls deliver messages as 'data' events, honouring pause()/resume().
 */
export class ServerCall extends EventEmitter implements StreamSink {
  request: unknown;
  cancelled = false;
  readonly metadata: CallMetadata;
  private finished = false;
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** The length of the message being received, -1 between messages. */
  private expected = -1;
  private rejected = false;
  private pending: unknown[] = [];
  private paused = false;
  private inputEnded = false;
  private endEmitted = false;
  private timer: NodeJS.Timeout | undefined;
  /** What runs once the client half-closed (unary and server-streaming calls: take the request, run). */
  onInputEnd: (() => void) | undefined;

  constructor(
    private readonly stream: CallStream,
    private readonly method: MethodDefinition,
    private readonly options: ServerOptions,
  ) {
    super();
    this.metadata = new CallMetadata(stream.headers);
    const timeout = parseTimeout(stream.headers['grpc-timeout']);
    if (timeout !== undefined) {
      this.timer = setTimeout(() => this.expire(), Math.max(0, timeout));
      this.timer.unref();
    }
    stream.sink = this;
  }

  onClose(): void {
    if (this.timer) clearTimeout(this.timer);
    if (!this.finished) {
      this.finished = true;
      this.markCancelled();
    }
    this.emit('close');
  }

  onDrain(): void {
    this.emit('drain');
  }

  getPath(): string {
    return this.method.path;
  }

  /** Whether the client's connection is still open (the call itself may have ended). */
  connected(): boolean {
    return this.stream.connected();
  }

  private markCancelled(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.emit('cancelled');
  }

  private expire(): void {
    if (this.finished) return;
    this.markCancelled();
    this.finish({ code: GrpcCode.DEADLINE_EXCEEDED, details: 'Deadline exceeded' });
  }

  /**
   * Feeds request bytes: splits them into messages and decodes each. Chunks (HTTP/2 frames of 16 KiB) are
   * kept in a list and joined once a whole message is there, so a large message costs one copy.
   */
  onData(chunk: Buffer): void {
    if (this.rejected) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (this.buffered >= 5) {
      if (this.expected < 0) {
        const head = this.peek(5);
        if (head[0] !== 0) return this.reject({ code: GrpcCode.UNIMPLEMENTED, details: 'compressed messages are not supported' });
        const len = head.readUInt32BE(1);
        if (len > this.options.maxReceiveMessageLength) {
          return this.reject({
            code: GrpcCode.RESOURCE_EXHAUSTED,
            details: tooLarge('Received', len, this.options.maxReceiveMessageLength, RECV_KEY),
          });
        }
        this.expected = len;
      }
      if (this.buffered < 5 + this.expected) break;
      const payload = this.take(5 + this.expected).subarray(5);
      this.expected = -1;
      let message: unknown;
      try {
        message = this.method.requestDeserialize(payload);
      } catch (err) {
        return this.reject({ code: GrpcCode.INTERNAL, details: `error deserializing request: ${(err as Error).message}` });
      }
      this.pending.push(message);
    }
    this.flush();
  }

  /** The first n buffered bytes, without consuming them (n is small: a message prefix). */
  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!;
    const joined = Buffer.concat(this.chunks);
    this.chunks = [joined];
    return joined;
  }

  /** Consumes exactly n buffered bytes. */
  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0]!;
      const want = n - at;
      if (c.length <= want) {
        out.set(c, at);
        at += c.length;
        this.chunks.shift();
      } else {
        out.set(c.subarray(0, want), at);
        this.chunks[0] = c.subarray(want);
        at += want;
      }
    }
    return out;
  }

  /** A request that cannot be read ends the call; what else arrives is dropped. */
  private reject(status: CallStatus): void {
    this.chunks = [];
    this.buffered = 0;
    this.rejected = true;
    this.fail(status);
  }

  onEnd(): void {
    this.inputEnded = true;
    if (this.onInputEnd) return this.onInputEnd();
    this.flush();
  }

  /** Delivers decoded messages to a streaming reader while it is not paused. */
  private flush(): void {
    if (!this.method.requestStream) return;
    while (!this.paused && this.pending.length > 0) this.emit('data', this.pending.shift());
    if (!this.paused && this.inputEnded && !this.endEmitted) {
      this.endEmitted = true;
      this.emit('end');
    }
  }

  /** The single request of a unary or server-streaming call, once the client half-closed. */
  takeRequest(): boolean {
    if (this.rejected || this.finished) return false;
    if (this.pending.length !== 1 || this.buffered > 0) {
      this.fail({
        code: GrpcCode.UNIMPLEMENTED,
        details: this.pending.length === 0 ? 'received no request message' : 'received more than one request message',
      });
      return false;
    }
    this.request = this.pending.shift();
    return true;
  }

  pause(): this {
    this.paused = true;
    this.stream.pause();
    return this;
  }

  resume(): this {
    this.paused = false;
    this.flush();
    if (!this.paused) this.stream.resume();
    return this;
  }

  /** Writes one response message; false when the stream's buffer is full ('drain' follows). */
  write(message: unknown): boolean {
    if (this.finished || this.stream.closed) return true;
    const payload = this.method.responseSerialize(message);
    if (payload.byteLength > this.options.maxSendMessageLength) {
      this.fail({
        code: GrpcCode.RESOURCE_EXHAUSTED,
        details: tooLarge('Sent', payload.byteLength, this.options.maxSendMessageLength, SEND_KEY),
      });
      return true;
    }
    return this.stream.write(frame(payload));
  }

  /** Ends a streaming response with OK. */
  end(): void {
    this.finish({ code: GrpcCode.OK });
  }

  /** Ends the call with an error status (after any messages already written). */
  fail(status: CallStatus): void {
    this.finish(status.code === GrpcCode.OK ? { code: GrpcCode.UNKNOWN, details: status.details } : status);
  }

  /** Answers a unary call: its one message and OK, or an error status. */
  respond(error: CallStatus | null, message?: unknown): void {
    if (error) return this.fail(error);
    if (this.finished || this.stream.closed) return;
    const payload = this.method.responseSerialize(message);
    if (payload.byteLength > this.options.maxSendMessageLength) {
      return this.fail({
        code: GrpcCode.RESOURCE_EXHAUSTED,
        details: tooLarge('Sent', payload.byteLength, this.options.maxSendMessageLength, SEND_KEY),
      });
    }
    this.finished = true;
    if (this.timer) clearTimeout(this.timer);
    this.stream.end(GrpcCode.OK, '', frame(payload));
  }

  private finish(status: CallStatus): void {
    if (this.finished) return;
    this.finished = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.stream.closed) return;
    this.stream.end(status.code ?? GrpcCode.UNKNOWN, status.details ?? '');
  }
}

/** The transport: Strata's own HTTP/2 server (the default) or node:http2 (STRATA_GRPC_TRANSPORT=node-http2). */
export type GrpcTransport = 'strata' | 'node-http2';

export function transportFromEnv(env: NodeJS.ProcessEnv = process.env): GrpcTransport {
  const v = env.STRATA_GRPC_TRANSPORT;
  if (v === undefined || v === '' || v === 'strata') return 'strata';
  if (v === 'node-http2') return 'node-http2';
  throw new Error(`STRATA_GRPC_TRANSPORT=${v}: expected "strata" or "node-http2"`);
}

export class GrpcServer {
  private readonly methods = new Map<string, Method>();
  readonly transport: GrpcTransport;
  private readonly h2: H2Server | undefined;
  private readonly server: http2.Http2Server | undefined;
  private readonly sessions = new Set<http2.ServerHttp2Session>();

  constructor(
    private readonly options: ServerOptions,
    transport: GrpcTransport = transportFromEnv(),
  ) {
    this.transport = transport;
    const maxConcurrentStreams = options.maxConcurrentStreams || 2 ** 32 - 1;
    if (transport === 'strata') {
      this.h2 = new H2Server({
        maxConcurrentStreams,
        initialWindowSize: 1 << 20,
        // A large connection window lets bulk writes (content ingests) stream without waiting on updates.
        connectionWindowSize: 16 << 20,
        maxHeaderListSize: 1 << 20,
        onStream: (stream) => this.dispatch(stream),
      });
      return;
    }
    const server = http2.createServer({
      // As grpc-js: Node's per-session memory cap degrades badly when reached (large content writes).
      maxSessionMemory: Number.MAX_SAFE_INTEGER,
      maxSendHeaderBlockLength: Number.MAX_SAFE_INTEGER,
      settings: { maxConcurrentStreams, initialWindowSize: 1 << 20 },
    });
    this.server = server;
    server.on('session', (session) => {
      this.sessions.add(session);
      session.on('close', () => this.sessions.delete(session));
      session.on('error', () => undefined);
      try {
        session.setLocalWindowSize(16 << 20);
      } catch {
        /* the session went away */
      }
    });
    server.on('stream', (stream, headers) => this.dispatch(new NodeCallStream(stream, headers)));
  }

  /** Registers every method of a generated service definition with its handler. */
  addService(definition: Record<string, MethodDefinition>, implementation: Record<string, Handler>): void {
    for (const [name, d] of Object.entries(definition)) {
      const handler = implementation[name];
      if (!handler) continue;
      this.methods.set(d.path, { definition: d, handler });
    }
  }

  /** Serves one connected socket on Strata's transport (tests drive the transport through it). */
  accept(socket: import('node:net').Socket): void {
    if (!this.h2) throw new Error('accept() needs the strata transport');
    this.h2.accept(socket);
  }

  listen(path: string): Promise<void> {
    if (this.h2) return this.h2.listen(path);
    const server = this.server!;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  private dispatch(stream: CallStream): void {
    const path = stream.headers[':path'];
    const method = typeof path === 'string' ? this.methods.get(path) : undefined;
    if (!method) {
      stream.sink = IGNORE;
      stream.end(GrpcCode.UNIMPLEMENTED, `unknown method ${String(path ?? '')}`);
      return;
    }
    const d = method.definition;
    const call = new ServerCall(stream, d, this.options);
    if (d.requestStream) {
      if (d.responseStream) method.handler(call);
      else method.handler(call, (err: CallStatus | null, res?: unknown) => call.respond(err, res));
      return;
    }
    call.onInputEnd = () => {
      if (!call.takeRequest()) return;
      if (d.responseStream) method.handler(call);
      else method.handler(call, (err: CallStatus | null, res?: unknown) => call.respond(err, res));
    };
  }

  /** Stops accepting connections, lets open calls finish, then calls back. */
  tryShutdown(callback: () => void): void {
    if (this.h2) return this.h2.close(callback);
    let waiting = this.sessions.size + 1;
    const done = () => {
      if (--waiting === 0) callback();
    };
    this.server!.close(() => done());
    for (const s of this.sessions) {
      if (s.closed) done();
      else {
        s.once('close', done);
        s.close();
      }
    }
  }

  /** Cuts every connection now. */
  forceShutdown(): void {
    if (this.h2) return this.h2.destroy();
    for (const s of this.sessions) s.destroy();
    this.server!.close();
  }
}

const IGNORE: StreamSink = { onData() {}, onEnd() {}, onClose() {}, onDrain() {} };
