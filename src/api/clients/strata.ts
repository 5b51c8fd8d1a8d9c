/**
 * A typed client for Strata's (and containerd's) gRPC API over a unix socket. Used by the CLI, the tests and
 * the benchmarks; errors come back as StrataErrors of the matching kind.
 */
import * as grpc from '@grpc/grpc-js';
import { once } from 'node:events';
import type { Readable } from 'node:stream';
import { fromGrpcStatus, StrataError } from '../../core/errdefs.js';
import {
  ContentService,
  WriteAction,
  type ContentClient,
  type WriteContentRequest,
  type WriteContentResponse,
} from '../gen/containerd/services/content/v1/content.js';
import { encodeWriteContentRequest } from '../wire.js';
import { NamespacesClient } from '../gen/containerd/services/namespaces/v1/namespaces.js';
import { LeasesClient } from '../gen/containerd/services/leases/v1/leases.js';
import { SnapshotsClient } from '../gen/containerd/services/snapshots/v1/snapshots.js';
import { EventsClient } from '../gen/containerd/services/events/v1/events.js';
import { IntrospectionClient } from '../gen/containerd/services/introspection/v1/introspection.js';
import { VersionClient } from '../gen/containerd/services/version/v1/version.js';
import { HealthClient } from '../gen/grpc/health/v1/health.js';
import { ImagesClient } from '../gen/containerd/services/images/v1/images.js';
import { DiffClient } from '../gen/containerd/services/diff/v1/diff.js';
import { TransferClient } from '../gen/strata/services/transfer/v1/transfer.js';
import { ContainersClient } from '../gen/containerd/services/containers/v1/containers.js';
import { TasksClient } from '../gen/containerd/services/tasks/v1/tasks.js';
import { GCClient } from '../gen/strata/services/gc/v1/gc.js';
import { LEASE_HEADER, NAMESPACE_HEADER } from '../headers.js';

export interface ClientOptions {
  namespace?: string;
  lease?: string;
}

type UnaryFn<Req, Res> = (
  req: Req,
  md: grpc.Metadata,
  opts: Partial<grpc.CallOptions>,
  cb: (err: grpc.ServiceError | null, res: Res) => void,
) => grpc.ClientUnaryCall;

export function toStrataError(err: unknown): unknown {
  const e = err as Partial<grpc.ServiceError>;
  if (typeof e?.code === 'number' && !(err instanceof StrataError)) return fromGrpcStatus(e.code, e.details ?? e.message ?? '');
  return err;
}

/** The content client, with Write requests encoded in one allocation (they carry the bulk data). */
const FastContentClient = grpc.makeGenericClientConstructor(
  { ...ContentService, write: { ...ContentService.write, requestSerialize: encodeWriteContentRequest } },
  'containerd.services.content.v1.Content',
) as unknown as new (address: string, credentials: grpc.ChannelCredentials, options?: Partial<grpc.ClientOptions>) => ContentClient;

export class StrataClient {
  readonly channel: grpc.Channel;
  readonly content: ContentClient;
  readonly namespaces: NamespacesClient;
  readonly leases: LeasesClient;
  readonly snapshots: SnapshotsClient;
  readonly events: EventsClient;
  readonly introspection: IntrospectionClient;
  readonly version: VersionClient;
  readonly health: HealthClient;
  readonly images: ImagesClient;
  readonly diff: DiffClient;
  /** Strata's own transfer service (pull, push, import, export, unpack, convert in the daemon). */
  readonly transfer: TransferClient;
  readonly containers: ContainersClient;
  readonly tasks: TasksClient;
  /** Strata's GC service (collect, why, prune, metrics). */
  readonly gc: GCClient;

  constructor(
    readonly address: string,
    readonly opts: ClientOptions = {},
  ) {
    const target = address.startsWith('unix:') ? address : `unix://${address}`;
    const creds = grpc.credentials.createInsecure();
    const options = { 'grpc.max_receive_message_length': 16 << 20, 'grpc.max_send_message_length': 16 << 20 };
    this.content = new FastContentClient(target, creds, options);
    // All clients share the first one's channel.
    this.channel = this.content.getChannel() as grpc.Channel;
    const shared = { ...options, channelOverride: this.channel };
    this.namespaces = new NamespacesClient(target, creds, shared);
    this.leases = new LeasesClient(target, creds, shared);
    this.snapshots = new SnapshotsClient(target, creds, shared);
    this.events = new EventsClient(target, creds, shared);
    this.introspection = new IntrospectionClient(target, creds, shared);
    this.version = new VersionClient(target, creds, shared);
    this.health = new HealthClient(target, creds, shared);
    this.images = new ImagesClient(target, creds, shared);
    this.diff = new DiffClient(target, creds, shared);
    this.transfer = new TransferClient(target, creds, shared);
    this.containers = new ContainersClient(target, creds, shared);
    this.tasks = new TasksClient(target, creds, shared);
    this.gc = new GCClient(target, creds, shared);
  }

  /** A client for another namespace or lease over the same connection settings. */
  with(opts: ClientOptions): StrataClient {
    return new StrataClient(this.address, { ...this.opts, ...opts });
  }

  metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.opts.namespace) md.set(NAMESPACE_HEADER, this.opts.namespace);
    if (this.opts.lease) md.set(LEASE_HEADER, this.opts.lease);
    return md;
  }

  /** Calls a unary method, e.g. `c.call(c.content, c.content.info, { digest })`. */
  call<C extends grpc.Client, Req, Res>(client: C, fn: UnaryFn<Req, Res>, req: Req): Promise<Res> {
    return new Promise((resolve, reject) => {
      fn.call(client, req, this.metadata(), {}, (err, res) => (err ? reject(toStrataError(err)) : resolve(res)));
    });
  }

  /** Collects every message of a server stream. */
  async collect<T>(stream: grpc.ClientReadableStream<T>): Promise<T[]> {
    const out: T[] = [];
    try {
      for await (const m of stream) out.push(m as T);
    } catch (err) {
      throw toStrataError(err);
    }
    return out;
  }

  /** Reads a blob as a stream of chunks. */
  async *readBlob(digest: string, offset = 0, size = 0): AsyncGenerator<Buffer> {
    const stream = this.content.read({ digest, offset, size }, this.metadata());
    try {
      for await (const m of stream) yield (m as { data: Buffer }).data;
    } catch (err) {
      throw toStrataError(err);
    }
  }

  /**
   * Writes a blob with containerd's Write protocol: STAT to learn where an existing ingest stands, skip what
   * the server already has, WRITE the rest, COMMIT with the expected size and digest. Returns the digest.
   * If the blob already exists (ALREADY_EXISTS), returns the expected digest without sending anything.
   */
  async writeBlob(
    source: Readable | AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    opts: { ref: string; expected?: string; total?: number; labels?: Record<string, string> },
  ): Promise<{ digest: string; resumedAt: number }> {
    const call = this.content.write(this.metadata());
    const responses = call[Symbol.asyncIterator]() as AsyncIterator<WriteContentResponse>;
    const roundTrip = async (req: Partial<WriteContentRequest>): Promise<WriteContentResponse> => {
      const full: WriteContentRequest = {
        action: WriteAction.STAT,
        ref: opts.ref,
        total: 0,
        expected: '',
        offset: 0,
        data: Buffer.alloc(0),
        labels: {},
        ...req,
      };
      if (!call.write(full)) await once(call, 'drain');
      const r = await responses.next();
      if (r.done) throw new StrataError('unknown', 'write stream closed by server');
      return r.value;
    };
    try {
      const st = await roundTrip({ action: WriteAction.STAT, total: opts.total ?? 0, expected: opts.expected ?? '' });
      const resumedAt = st.offset;
      let offset = st.offset;
      let skip = st.offset;
      for await (const chunk of source as AsyncIterable<Uint8Array> | Iterable<Uint8Array>) {
        let buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        if (skip > 0) {
          const n = Math.min(skip, buf.length);
          skip -= n;
          buf = buf.subarray(n);
          if (buf.length === 0) continue;
        }
        const r = await roundTrip({ action: WriteAction.WRITE, offset, data: buf });
        offset = r.offset;
      }
      if (skip > 0) throw new StrataError('failed precondition', `source ended before the ingest's offset ${resumedAt}`);
      const done = await roundTrip({
        action: WriteAction.COMMIT,
        offset,
        total: opts.total ?? 0,
        expected: opts.expected ?? '',
        labels: opts.labels ?? {},
      });
      call.end();
      return { digest: done.digest, resumedAt };
    } catch (err) {
      call.cancel();
      const e = toStrataError(err);
      if (e instanceof StrataError && e.kind === 'already exists' && opts.expected) {
        return { digest: opts.expected, resumedAt: 0 };
      }
      throw e;
    }
  }

  close(): void {
    this.content.close();
  }
}
