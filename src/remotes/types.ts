/**
 * The registry client contract (OCI distribution API over undici). Pull and push orchestration
 * (src/images/pull.ts, push.ts) see only these interfaces.
 */
import type { Readable } from 'node:stream';
import type { Descriptor } from '../core/descriptor.js';
import type { Logger } from '../log/index.js';

export interface Credentials {
  username: string;
  /** Password or identity token. */
  secret: string;
}

export interface ResolverOptions {
  /** hosts.toml directory tree as containerd's (`<dir>/<host[:port]>/hosts.toml`), for mirrors; optional. */
  hostsDir?: string;
  /** Use http:// for every host. Loopback hosts (127.0.0.0/8, ::1, localhost) fall back to http anyway. */
  plainHttp?: boolean;
  /** Credentials for a registry host ("127.0.0.1:5000", "registry-1.docker.io"); undefined = anonymous. */
  credentials?: (host: string) => Credentials | undefined;
  /** Most concurrent blob downloads (or uploads) per resolver; default 3 (containerd's max_concurrent_downloads). */
  maxConcurrent?: number;
  /**
   * Retries of a failed request (connection error, 5xx, 429) with exponential backoff; default 3. Only the
   * last host of a mirror list is retried: a failing mirror is given up at once for the next host, as
   * containerd does. Timeouts are never retried on the same host.
   */
  retries?: number;
  /** TCP connect + TLS handshake limit, ms; default 30 s (containerd's dialer timeout). */
  connectTimeoutMs?: number;
  /** Request → response headers limit per host, ms; default 30 s (a hanging mirror is then skipped). */
  responseHeaderTimeoutMs?: number;
  logger?: Logger;
  /**
   * Multipart fetch (containerd 2.1's parallel layer fetch, done as docs/registry.md says): a blob larger than
   * the threshold is fetched as bounded HTTP Range parts, several at once, and handed out in order. Off when
   * absent or when `partSize` is 0.
   */
  multipart?: MultipartOptions;
}

export interface MultipartOptions {
  /** Bytes per part (containerd's concurrent_layer_fetch_buffer); under 512 turns multipart off, as containerd. */
  partSize: number;
  /** Part requests of one blob in flight at once (containerd: max_concurrent_downloads). */
  parallelism: number;
  /** Only blobs (the part still to fetch) larger than this, and than one part, are split. */
  threshold: number;
  /**
   * The bytes that parts fetched ahead of the one being handed out may hold, shared by every blob that uses
   * this budget (give one budget to all of a daemon's resolvers). Default: parallelism × partSize per resolver.
   */
  budget?: ByteBudget;
}

/** A shared allowance of bytes (see MultipartOptions.budget); src/remotes/multipart.ts implements it. */
export interface ByteBudget {
  readonly capacity: number;
  /** Takes `n` bytes if they are free now. */
  tryTake(n: number): boolean;
  give(n: number): void;
  /** Calls `fn` once, the next time bytes are given back. Returns a function that cancels it. */
  onGive(fn: () => void): () => void;
}

export interface Resolved {
  /** The normalized reference, e.g. "docker.io/library/busybox:latest" or "127.0.0.1:5000/busybox@sha256:..". */
  name: string;
  /** The root descriptor (manifest or index) the reference names. */
  desc: Descriptor;
}

export interface FetchOpts {
  /** Resume: start at this byte (HTTP Range). The stream then yields bytes from offset on. */
  offset?: number;
  /**
   * Read at most this many bytes from `offset` (a bounded HTTP Range, `bytes=offset-(offset+length-1)`), as a
   * lazy-pull snapshotter reads one chunk of a layer. The stream ends after `length` bytes (fewer at the
   * blob's end) even when a registry ignores the Range and sends the whole blob. Never split into parts.
   */
  length?: number;
  /**
   * Called with the blob's total size once the registry says it (Content-Range `/<size>`, or Content-Length of a
   * whole answer): how a caller that knows only a digest (a snapshot label) learns where the blob ends.
   */
  onBlobSize?: (size: number) => void;
}

export interface Fetcher {
  /**
   * The bytes of `desc` (manifest by digest, or blob). Not verified here: the content writer checks the
   * digest. Errors: 'not found' (404), 'permission denied' (401/403), 'unavailable' (after retries).
   * The concurrency limit is held until the returned stream ends or is destroyed.
   */
  fetch(desc: Descriptor, opts?: FetchOpts): Promise<Readable>;
}

export interface Pusher {
  /**
   * Pushes `desc`, reading it from `open()` when the registry lacks it. Blobs: HEAD first (skip when present),
   * cross-repo mount when `mountFrom` names another repository on the same host, else upload.
   * Manifests and indexes: PUT by digest, or by the reference's tag when `tag` is true.
   */
  push(desc: Descriptor, open: () => Promise<Readable>, opts?: { tag?: boolean; mountFrom?: string[] }): Promise<'exists' | 'mounted' | 'pushed'>;
}

export interface Resolver {
  resolve(ref: string): Promise<Resolved>;
  fetcher(ref: string): Fetcher;
  pusher(ref: string): Pusher;
}
