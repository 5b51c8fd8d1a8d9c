/**
 * The lazyfs control protocol: one JSON object per line on the unix socket `<root>/lazyfs.sock`, each request
 * `{ id, op, ... }` answered by `{ id, ok: true, result }` or `{ id, ok: false, error: { kind, detail } }`
 * (a StrataError's kind and detail, so the snapshotter rethrows the same kind).
 */
import { StrataError, type ErrorKind } from '../../core/errdefs.js';

export const SOCKET_NAME = 'lazyfs.sock';
export const PID_NAME = 'lazyfs.pid';
export const LOG_NAME = 'lazyfs.log';
/** The first field of /proc/mounts for every lazyfs mount (how a new lazyfs finds a dead one's mounts). */
export const FS_NAME = 'strata-lazyfs';

/** Where a layer comes from (the stargz labels of its snapshot). */
export interface LayerRef {
  /** Image reference ("127.0.0.1:5000/app:v1"). */
  ref: string;
  /** The layer blob's digest. */
  digest: string;
  /** Alternative URLs of the blob (the descriptor's urls). */
  urls?: string[];
  /** The blob's size, when the labels say it (Strata's pull); else learnt from the registry. */
  size?: number;
  /** The TOC digest to check (the layer's containerd.io/snapshot/stargz/toc.digest annotation), if known. */
  tocDigest?: string;
}

/** Registry access of the lazyfs process, as the daemon's pull: hosts.toml dir, docker config credentials. */
export interface RegistryConfig {
  hostsDir?: string;
  /** A docker config.json for credentials ("" = none; absent = $DOCKER_CONFIG or ~/.docker/config.json). */
  dockerConfig?: string;
  /** http:// for every host (loopback hosts use http anyway). */
  plainHttp?: boolean;
}

export interface PolicyConfig {
  prefetch: boolean;
  background: boolean;
  backgroundDelayMs: number;
}

export interface MountRequest {
  op: 'mount';
  mountpoint: string;
  cacheDir: string;
  layer: LayerRef;
  registry: RegistryConfig;
  policy: PolicyConfig;
  /**
   * Digests of the layers that follow this one in its image (the `stargz.layers` label): lazyfs starts reading
   * their footers and TOCs now, in parallel, for their own mount requests.
   */
  neighbours?: string[];
}

export interface MountResult {
  blobSize: number;
  tocDigest: string;
  prefetchSize: number;
  /** Whether this call mounted it (false: it was mounted already). */
  mounted: boolean;
}

export interface MountStatus {
  mountpoint: string;
  digest: string;
  ref: string;
  chunks: number;
  cached: number;
  fetchedBytes: number;
  prefetchDone: boolean;
  backgroundDone: boolean;
}

export type Request =
  | { op: 'hello' }
  | MountRequest
  | { op: 'unmount'; mountpoint: string; dropCache: boolean }
  | { op: 'list' }
  | { op: 'shutdown' };

export interface HelloResult {
  pid: number;
  mounts: number;
}

export type Wire = Request & { id: number };

export type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: { kind: ErrorKind; detail: string } };

export function errorReply(id: number, err: unknown): Reply {
  if (err instanceof StrataError) return { id, ok: false, error: { kind: err.kind, detail: err.detail } };
  return { id, ok: false, error: { kind: 'unknown', detail: err instanceof Error ? err.message : String(err) } };
}

export const fromReplyError = (e: { kind: ErrorKind; detail: string }): StrataError => new StrataError(e.kind, e.detail);
