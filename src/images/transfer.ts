/**
 * Image transfers inside the daemon: pull, push, import, export and unpack over the namespaced stores. Each
 * transfer that writes runs under its own lease (expiring after a day, as containerd's clients create them),
 * so what it fetched is protected until the image record refers to it; the lease is deleted at the end.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { finished } from 'node:stream/promises';
import { dirname, basename, join } from 'node:path';
import { invalidArgument, isNoSpace, notFound, StrataError } from '../core/errdefs.js';
import { retryOnNoSpace } from '../core/nospace.js';
import type { Logger } from '../log/index.js';
import { generateLeaseId, type MetadataStore, type OpContext } from '../metadata/index.js';
import { LABEL_GC_EXPIRE } from '../core/labels.js';
import { parseGoDuration } from '../gc/scheduler.js';
import type { Differ } from '../diff/types.js';
import type { ContentStore } from '../content/types.js';
import { readBlob } from './blob.js';
import type { ProgressFn } from './fetch.js';
import { children, isIndexType, isManifestType, parseConfig, parseManifest, selectManifests } from './manifest.js';
import { defaultPlatform, parsePlatform, platformMatcher } from './platforms.js';
import { pull, type PullResult, type UnpackTarget } from './pull.js';
import { push } from './push.js';
import { createResolver } from '../remotes/resolver.js';
import { Budget, MIN_PART_SIZE } from '../remotes/multipart.js';
import type { Credentials, MultipartOptions, ResolverOptions } from '../remotes/types.js';
import { importArchive, exportArchive } from './archive/index.js';
import { unpackLayers, type UnpackResult } from './unpack.js';
import { convertImage, type ConvertResult } from './convert.js';
import { SharedWork } from './inflight.js';
import { GroupCommit } from '../snapshots/storage.js';
import type { Image, ImageStore } from '../metadata/images.js';
import type { Descriptor } from '../core/descriptor.js';

export interface TransferConfig {
  /** Most concurrent blob downloads/uploads per transfer (containerd's max_concurrent_downloads). */
  max_concurrent_downloads: number;
  /** Snapshotter used when a request names none; "" = overlayfs if loaded, else native. */
  snapshotter: string;
  /** Default hosts.toml directory for mirrors ("" = none); containerd's CRI `registry.config_path`. */
  config_path: string;
  /** Per connection to a registry host: TCP connect + TLS handshake limit (Go duration; containerd's 30s). */
  connect_timeout: string;
  /** Per request to a registry host: the limit for the response headers, after which the next host is tried. */
  response_header_timeout: string;
  /**
   * containerd 2.x's name for the default snapshotter: `[{ platform = "linux/amd64", snapshotter = "..." }]`, the
   * first entry whose platform the host runs gives the snapshotter when `snapshotter` is "" (`differ` is not read).
   */
  unpack_config?: { platform: string; snapshotter: string; differ?: string }[];
  /**
   * Multipart fetch: bytes per HTTP Range part of a big blob (containerd 2.1's name and meaning); 0 (the
   * default, as containerd's) turns it off, as does any value under 512. Parts of one blob in flight are
   * at most max_concurrent_downloads, as containerd's.
   */
  concurrent_layer_fetch_buffer: number;
  /** Strata's: only blobs larger than this (and than one part) are split. */
  concurrent_layer_fetch_threshold: number;
  /**
   * Strata's: bytes the parts fetched ahead of the one being written may hold in memory, for all of the
   * daemon's pulls together; 0 = max_concurrent_downloads × concurrent_layer_fetch_buffer.
   */
  concurrent_layer_fetch_memory: number;
  /**
   * containerd 2.2's name: most layers of one image extracted at once. Above 1, on a snapshotter with the
   * `rebase` capability (overlayfs), independent layers are extracted concurrently and committed in order; 0 or
   * 1: one after the other. Default 1, as containerd's: on a busy 2-core machine the parallel path was not
   * shown faster for unpack alone (bench/RESULTS.md, "Parallel unpack"), so it is opt-in until it is.
   */
  max_concurrent_unpacks: number;
  /**
   * Strata's: snapshotters that pull lazily: a pull unpacking into one of them puts stargz-snapshotter's labels
   * (`containerd.io/snapshot/remote/stargz.*`, `.../remote/urls`) on each layer's labelled prepare, as
   * stargz-snapshotter's containerd client (ctr-remote rpull) does, so the snapshotter fetches layers itself.
   */
  remote_snapshotters: string[];
}

export const defaultTransferConfig = (): TransferConfig => ({
  max_concurrent_downloads: 3,
  max_concurrent_unpacks: 1,
  remote_snapshotters: ['stargz'],
  snapshotter: '',
  config_path: '',
  connect_timeout: '30s',
  response_header_timeout: '30s',
  concurrent_layer_fetch_buffer: 0,
  concurrent_layer_fetch_threshold: 64 << 20,
  concurrent_layer_fetch_memory: 0,
});

/**
 * The snapshotter containerd 2.x's `unpack_config` gives this host: the first entry whose platform the host runs
 * ('' without one). Each entry needs a platform and a snapshotter, as containerd's plugin requires.
 */
export function unpackConfigSnapshotter(v: unknown, host = defaultPlatform()): string {
  if (v === undefined) return '';
  if (!Array.isArray(v)) throw invalidArgument('transfer config: unpack_config must be a list of tables');
  for (const [i, e] of v.entries()) {
    const entry = (typeof e === 'object' && e !== null && !Array.isArray(e) ? e : undefined) as Record<string, unknown> | undefined;
    if (!entry) throw invalidArgument(`transfer config: unpack_config[${i}] must be a table`);
    const { platform, snapshotter } = entry;
    if (typeof snapshotter !== 'string' || snapshotter === '') {
      throw invalidArgument(`transfer config: unpack_config[${i}].snapshotter must be a snapshotter name`);
    }
    let p;
    try {
      p = parsePlatform(typeof platform === 'string' ? platform : '');
    } catch {
      throw invalidArgument(`transfer config: unpack_config[${i}].platform ${JSON.stringify(platform)} is not a platform such as "linux/amd64"`);
    }
    if (platformMatcher(p)(host)) return snapshotter;
  }
  return '';
}

/** A whole number of bytes from the transfer config. */
function configBytes(key: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw invalidArgument(`transfer config: ${key} must be a whole number of bytes, not ${JSON.stringify(v)}`);
  }
  return v;
}

/** A positive Go duration from the transfer config, in ms. */
function configDuration(key: string, v: unknown): number {
  let ms = NaN;
  try {
    if (typeof v === 'string') ms = parseGoDuration(v);
  } catch {
    // reported below
  }
  if (!(ms > 0)) throw invalidArgument(`transfer config: ${key} must be a positive duration such as "30s", not ${JSON.stringify(v)}`);
  return ms;
}

export interface RegistryRequest {
  plainHttp?: boolean;
  credentials?: Credentials;
  hostsDir?: string;
  maxConcurrent?: number;
}

/** One pull's outcome, for the metrics endpoint. */
export interface PullRecord {
  ok: boolean;
  seconds: number;
  /** Bytes downloaded from the registry (blobs already present count nothing). */
  bytes: number;
}

/** Wraps a progress function to count the bytes each blob's download moved, from its start or resume offset. */
function countDownloads(onProgress: ProgressFn | undefined): { progress: ProgressFn; bytes(): number } {
  const from = new Map<string, number>();
  const to = new Map<string, number>();
  return {
    progress: (p) => {
      // Only the fetcher's reports carry an offset (the unpacker's 'done' for a layer does not).
      if (p.offset !== undefined && (p.status === 'downloading' || p.status === 'resuming' || p.status === 'done')) {
        if (!from.has(p.ref)) from.set(p.ref, p.status === 'done' ? 0 : p.offset);
        to.set(p.ref, p.offset);
      }
      onProgress?.(p);
    },
    bytes: () => {
      let n = 0;
      for (const [ref, end] of to) n += Math.max(0, end - from.get(ref)!);
      return n;
    },
  };
}

/** How long a transfer's lease protects its work if the daemon dies before deleting it. */
const LEASE_TTL_MS = 24 * 60 * 60 * 1000;

/**
 * The archive a client asks to import, opened before anything starts: a path that is not there is `not found`,
 * one the daemon may not read `permission denied`, each naming the path as the client gave it (a plain read
 * stream failed later with Node's "ENOENT: no such file or directory, open", kind unknown, logged as a daemon
 * error; found by test/fuzz/grpc.test.ts).
 */
async function openArchive(path: string) {
  // Node refuses a path with a NUL with a TypeError (which read as the daemon's failure; bench/fuzz.ts).
  if (path.includes('\0')) throw invalidArgument(`archive path ${JSON.stringify(path.slice(0, 200))}: contains a NUL`);
  try {
    const fh = await open(path, 'r');
    if ((await fh.stat()).isDirectory()) {
      await fh.close();
      throw invalidArgument(`archive ${JSON.stringify(path)}: is a directory`);
    }
    return createReadStream('', { fd: fh });
  } catch (err) {
    if (err instanceof StrataError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw notFound(`archive ${JSON.stringify(path)}: not found`, err);
    if (code === 'EACCES' || code === 'EPERM') throw new StrataError('permission denied', `archive ${JSON.stringify(path)}: permission denied`, { cause: err });
    if (code === 'ENAMETOOLONG' || code === 'ELOOP') throw invalidArgument(`archive path ${JSON.stringify(path.slice(0, 200))}: ${code}`, err);
    throw err;
  }
}

export class ImageTransfers {
  private readonly connectTimeoutMs: number;
  private readonly responseHeaderTimeoutMs: number;
  /** The configured default snapshotter: `snapshotter`, else what `unpack_config` gives this host ('' = none). */
  private readonly defaultSnapshotter: string;
  /** Multipart fetch settings, with one memory budget for every transfer of the daemon; undefined = off. */
  private readonly multipart: MultipartOptions | undefined;
  /** max_concurrent_unpacks, at least 1. */
  private readonly maxConcurrentUnpacks: number;
  /** remote_snapshotters: unpacks into these carry stargz-snapshotter's labels. */
  private readonly remoteSnapshotters: Set<string>;
  /** Downloads and unpacks in flight, shared by this daemon's concurrent transfers. */
  readonly shared = new SharedWork();

  constructor(
    private readonly md: MetadataStore,
    private readonly differ: Differ,
    private readonly config: TransferConfig,
    private readonly log: Logger,
  ) {
    const defaults = defaultTransferConfig();
    this.connectTimeoutMs = configDuration('connect_timeout', config.connect_timeout ?? defaults.connect_timeout);
    this.responseHeaderTimeoutMs = configDuration('response_header_timeout', config.response_header_timeout ?? defaults.response_header_timeout);
    const unpacks = config.max_concurrent_unpacks ?? defaults.max_concurrent_unpacks;
    if (typeof unpacks !== 'number' || !Number.isInteger(unpacks) || unpacks < 0) {
      throw invalidArgument('transfer config: max_concurrent_unpacks must be a whole number, 0 or more');
    }
    this.maxConcurrentUnpacks = Math.max(1, unpacks);
    const remote: unknown = config.remote_snapshotters ?? defaults.remote_snapshotters;
    if (!Array.isArray(remote) || !remote.every((x) => typeof x === 'string')) {
      throw invalidArgument('transfer config: remote_snapshotters must be a list of snapshotter names');
    }
    this.remoteSnapshotters = new Set(remote as string[]);
    const unpackDefault = unpackConfigSnapshotter(config.unpack_config);
    this.defaultSnapshotter = config.snapshotter || unpackDefault;
    const partSize = configBytes('concurrent_layer_fetch_buffer', config.concurrent_layer_fetch_buffer ?? defaults.concurrent_layer_fetch_buffer);
    const threshold = configBytes('concurrent_layer_fetch_threshold', config.concurrent_layer_fetch_threshold ?? defaults.concurrent_layer_fetch_threshold);
    const memory = configBytes('concurrent_layer_fetch_memory', config.concurrent_layer_fetch_memory ?? defaults.concurrent_layer_fetch_memory);
    const parallelism = config.max_concurrent_downloads ?? defaults.max_concurrent_downloads;
    if (partSize >= MIN_PART_SIZE && parallelism > 1) {
      const capacity = memory > 0 ? memory : parallelism * partSize;
      if (capacity < partSize) {
        throw invalidArgument(`transfer config: concurrent_layer_fetch_memory (${capacity}) must hold at least one part (concurrent_layer_fetch_buffer = ${partSize})`);
      }
      this.multipart = { partSize, parallelism, threshold, budget: new Budget(capacity) };
    }
  }

  private snapshotterName(requested: string | undefined): string {
    const name = requested || this.defaultSnapshotter || (this.md.snapshotters.has('overlayfs') ? 'overlayfs' : 'native');
    if (!this.md.snapshotters.has(name)) throw invalidArgument(`snapshotter not loaded: ${name}`);
    return name;
  }

  private resolverOptions(r: RegistryRequest = {}): ResolverOptions {
    const hostsDir = r.hostsDir || this.config.config_path;
    return {
      plainHttp: r.plainHttp ?? false,
      maxConcurrent: r.maxConcurrent && r.maxConcurrent > 0 ? r.maxConcurrent : this.config.max_concurrent_downloads,
      ...(hostsDir ? { hostsDir } : {}),
      connectTimeoutMs: this.connectTimeoutMs,
      responseHeaderTimeoutMs: this.responseHeaderTimeoutMs,
      ...(this.multipart ? { multipart: this.multipart } : {}),
      ...(r.credentials ? { credentials: () => r.credentials } : {}),
      logger: this.log,
    };
  }

  /** Runs `fn` with stores bound to a fresh lease on `namespace`, deleting the lease afterwards. */
  private async leased<T>(namespace: string, fn: (ctx: OpContext) => Promise<T>): Promise<T> {
    const expire = new Date(Date.now() + LEASE_TTL_MS).toISOString();
    // The lease's records go through the metadata's group commit, not a synchronous fdatasync on the event loop
    // each (which stalled every download and extraction of the daemon meanwhile). The creation needs no sync of
    // its own: whatever it protects is made durable later by a sync that covers it too (the WAL is in order).
    const commits = GroupCommit.of(this.md.db);
    const lease = commits.write(() => this.md.leases.create(namespace, generateLeaseId(), { [LABEL_GC_EXPIRE]: expire }));
    try {
      return await fn({ namespace, lease: lease.id });
    } finally {
      try {
        commits.write(() => this.md.leases.delete(namespace, lease.id));
        await commits.durable();
      } catch (err) {
        this.log.warn('could not delete transfer lease', { lease: lease.id, error: String(err) });
        // A full disk: again once there is room (else the lease's expiry hands it to the garbage collector).
        if (isNoSpace(err)) void retryOnNoSpace(async () => this.md.leases.delete(namespace, lease.id));
      }
    }
  }

  private unpackTarget(ctx: OpContext, snapshotter: string | undefined): UnpackTarget {
    const name = this.snapshotterName(snapshotter);
    const lease = ctx.lease;
    return {
      snapshotter: this.md.snapshotters.get(name)!.bind(ctx),
      snapshotterName: name,
      applier: this.differ,
      ...(lease ? { protect: (chainID: string) => this.md.leases.addResource(ctx.namespace, lease, { type: `snapshots/${name}`, id: chainID }) } : {}),
      // Snapshots are namespaced: the same chain in two namespaces is two snapshots, unpacked separately.
      exclusive: <T>(chainID: string, fn: () => Promise<T>) => this.shared.unpack(`${name}\u0000${ctx.namespace}\u0000${chainID}`, fn),
      maxConcurrentUnpacks: this.maxConcurrentUnpacks,
      ...(this.remoteSnapshotters.has(name) ? { remoteLabels: true } : {}),
    };
  }

  private stores(ctx: OpContext): { content: ContentStore; images: ImageStore } {
    return { content: this.md.content.bind(ctx), images: this.md.images.bind(ctx) };
  }

  private readonly pullListeners = new Set<(p: PullRecord) => void>();

  /** Calls `fn` after every pull, with its outcome, duration and bytes downloaded (the metrics' feed). */
  onPull(fn: (p: PullRecord) => void): () => void {
    this.pullListeners.add(fn);
    return () => this.pullListeners.delete(fn);
  }

  async pull(
    namespace: string,
    ref: string,
    opts: { platforms?: string[]; allPlatforms?: boolean; unpack?: boolean; snapshotter?: string; labels?: Record<string, string>; registry?: RegistryRequest },
    onProgress?: ProgressFn,
  ): Promise<PullResult> {
    const resolver = createResolver(this.resolverOptions(opts.registry));
    const platforms = (opts.platforms ?? []).map(parsePlatform);
    const counted = this.pullListeners.size > 0 ? countDownloads(onProgress) : undefined;
    const progress = counted?.progress ?? onProgress;
    const start = performance.now();
    let ok = false;
    try {
      const r = await this.leased(namespace, async (ctx) =>
        pull(resolver, ref, this.stores(ctx), {
          platforms,
          allPlatforms: opts.allPlatforms ?? false,
          ...(opts.unpack ? { unpack: this.unpackTarget(ctx, opts.snapshotter) } : {}),
          labels: opts.labels ?? {},
          ...(progress ? { onProgress: progress } : {}),
          shared: this.shared,
        }),
      );
      ok = true;
      return r;
    } finally {
      if (counted) {
        const record = { ok, seconds: (performance.now() - start) / 1000, bytes: counted.bytes() };
        for (const fn of this.pullListeners) fn(record);
      }
    }
  }

  async push(
    namespace: string,
    ref: string,
    opts: { image?: string; platforms?: string[]; registry?: RegistryRequest },
    onProgress?: ProgressFn,
  ): Promise<Descriptor> {
    const resolver = createResolver(this.resolverOptions(opts.registry));
    const ctx = { namespace };
    return push(resolver, ref, this.stores(ctx), {
      ...(opts.image ? { image: opts.image } : {}),
      platforms: (opts.platforms ?? []).map(parsePlatform),
      ...(onProgress ? { onProgress } : {}),
    });
  }

  /**
   * Converts stored image `source` to eStargz as image `target` (src/images/convert.ts), under a lease so the
   * new blobs are protected until the image refers to them.
   */
  async convert(
    namespace: string,
    source: string,
    target: string,
    opts: { oci?: boolean; platforms?: string[]; allPlatforms?: boolean; chunkSize?: number; compressionLevel?: number; prioritizedFiles?: string[] },
    onProgress?: ProgressFn,
  ): Promise<ConvertResult> {
    return this.leased(namespace, async (ctx) => {
      const { content, images } = this.stores(ctx);
      return convertImage(content, images, source, target, {
        oci: opts.oci ?? false,
        platforms: (opts.platforms ?? []).map(parsePlatform),
        allPlatforms: opts.allPlatforms ?? false,
        ...(opts.chunkSize ? { chunkSize: opts.chunkSize } : {}),
        ...(opts.compressionLevel ? { compressionLevel: opts.compressionLevel } : {}),
        ...(opts.prioritizedFiles && opts.prioritizedFiles.length > 0 ? { prioritizedFiles: opts.prioritizedFiles } : {}),
        ...(onProgress ? { onProgress } : {}),
      });
    });
  }

  /** Unpacks a stored image for a platform (default the host's) into a snapshotter. */
  async unpack(
    namespace: string,
    name: string,
    opts: { snapshotter?: string; platforms?: string[] },
    onProgress?: ProgressFn,
  ): Promise<UnpackResult> {
    return this.leased(namespace, async (ctx) => {
      const { content, images } = this.stores(ctx);
      const image = await images.get(name);
      return this.unpackImage(content, image, this.unpackTarget(ctx, opts.snapshotter), opts.platforms, onProgress);
    });
  }

  private async unpackImage(
    content: ContentStore,
    image: Image,
    target: UnpackTarget,
    platforms: string[] | undefined,
    onProgress?: ProgressFn,
  ): Promise<UnpackResult> {
    let desc = image.target;
    const wanted = platforms && platforms.length > 0 ? platforms.map(parsePlatform) : [defaultPlatform()];
    while (isIndexType(desc.mediaType)) {
      desc = selectManifests(children(desc, await readBlob(content, desc)), wanted, false)[0]!;
    }
    if (!isManifestType(desc.mediaType)) throw invalidArgument(`image ${image.name}: cannot unpack a ${desc.mediaType}`);
    const manifest = parseManifest(await readBlob(content, desc));
    const config = parseConfig(await readBlob(content, manifest.config));
    return unpackLayers(target.snapshotter, target.applier, content, manifest.layers, config.rootfs.diff_ids, {
      snapshotterName: target.snapshotterName,
      config: manifest.config,
      ...(target.protect ? { protect: target.protect } : {}),
      ...(target.exclusive ? { exclusive: target.exclusive } : {}),
      ...(target.maxConcurrentUnpacks ? { maxConcurrentUnpacks: target.maxConcurrentUnpacks } : {}),
      onProgress: (layer, status, detail) =>
        onProgress?.({ ref: layer.digest, kind: 'layer', status, total: layer.size, ...(detail ? { detail } : {}) }),
    });
  }

  async import(
    namespace: string,
    path: string,
    opts: { indexName?: string; platforms?: string[]; allPlatforms?: boolean; unpack?: boolean; snapshotter?: string },
    onProgress?: ProgressFn,
  ): Promise<Image[]> {
    return this.leased(namespace, async (ctx) => {
      const { content, images } = this.stores(ctx);
      const platforms = (opts.platforms ?? []).map(parsePlatform);
      const result = await importArchive(await openArchive(path), content, {
        images,
        ...(opts.indexName ? { indexName: opts.indexName } : {}),
        allPlatforms: opts.allPlatforms ?? false,
        ...(platforms[0] ? { platform: platforms[0] } : {}),
      });
      for (const img of result.images) {
        onProgress?.({ ref: img.name, kind: 'image', status: 'created', detail: img.target.digest });
        if (opts.unpack) {
          const image = await images.get(img.name);
          await this.unpackImage(content, image, this.unpackTarget(ctx, opts.snapshotter), opts.platforms, onProgress);
          onProgress?.({ ref: img.name, kind: 'image', status: 'unpacked' });
        }
      }
      return Promise.all(result.images.map((i) => images.get(i.name)));
    });
  }

  /** Writes the archive next to `path` and renames it into place, so a failed export leaves no partial file. */
  async export(
    namespace: string,
    path: string,
    names: string[],
    opts: { platforms?: string[]; allPlatforms?: boolean },
    onProgress?: ProgressFn,
  ): Promise<void> {
    if (names.length === 0) throw invalidArgument('export needs at least one image');
    const { content, images } = this.stores({ namespace });
    const targets = [];
    for (const n of names) {
      const img = await images.get(n).catch((err: unknown) => {
        throw notFound(`image ${n}: not found`, err);
      });
      targets.push({ name: img.name, target: img.target });
    }
    const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
    const platforms = (opts.platforms ?? []).map(parsePlatform);
    try {
      const out = createWriteStream(tmp, { mode: 0o644 });
      const closed = finished(out);
      closed.catch(() => undefined);
      await exportArchive(out, content, targets, {
        ...(platforms[0] ? { platform: platforms[0] } : {}),
        allPlatforms: opts.allPlatforms ?? false,
      });
      if (!out.writableEnded) out.end();
      await closed;
      await rename(tmp, path);
      onProgress?.({ ref: path, kind: 'archive', status: 'exported' });
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }
}
