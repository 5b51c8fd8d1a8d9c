/**
 * The lazyfs process: serves every FUSE mount of one stargz snapshotter root, detached from the daemon that
 * started it (like a task monitor, src/runtime/monitor.ts), so a container reading a lazily pulled layer keeps
 * reading when stratad or `stratad serve-snapshotter` is killed (-9), restarted or upgraded. The restarted
 * snapshotter finds it again through `<root>/lazyfs.sock`; one lazyfs per root (a second one started by a race
 * sees the first answering on the socket and exits).
 *
 *   <root>/lazyfs.sock    control socket (protocol.ts), 0600
 *   <root>/lazyfs.pid     its pid
 *   <root>/lazyfs.log     its log (the spawner opens it as stdout/stderr)
 *   <root>/cache/<id>/    the verified chunks of snapshot <id>'s layer (source.ts)
 *
 * It reads layers through src/remotes (hosts.toml mirrors, docker config credentials, retries; plain http for
 * loopback), with bounded Range requests. A lazyfs that starts finds the mounts a dead one left under
 * `<root>/snapshots` (fsname FS_NAME in /proc/self/mountinfo) and detaches them; the snapshotter then mounts
 * again every remote layer it has records of.
 */
import { chmodSync, mkdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { dirname, join, resolve } from 'node:path';
import { invalidArgument, unavailable } from '../../core/errdefs.js';
import { socketAnswers } from '../../core/socket.js';
import { openEstargz, type EstargzLayer } from '../../estargz/index.js';
import { mountReadOnly, preloadFuse, type FuseMount } from '../../fuse/index.js';
import { createLogger, type Logger } from '../../log/index.js';
import { createResolver, credentialsFromDockerConfig, type Fetcher } from '../../remotes/index.js';
import { EstargzSource, SpanReader, TaskLimit } from './source.js';
import { WholeBlob } from './whole-blob.js';
import { detach, lazyfsMountsUnder } from './mounts.js';
import {
  errorReply,
  FS_NAME,
  PID_NAME,
  SOCKET_NAME,
  type HelloResult,
  type LayerRef,
  type MountRequest,
  type MountResult,
  type MountStatus,
  type RegistryConfig,
  type Reply,
  type Wire,
} from './protocol.js';

/** The media type asked for when reading a layer (the registry serves a blob whatever it is). */
const LAYER_MEDIA_TYPE = 'application/vnd.oci.image.layer.v1.tar+gzip';
/** Bytes read from the end of a blob to open it: the footer and the TOC of most layers, in one request. */
const TAIL_BYTES = 256 << 10;
/** Most background chunk fetches at once, for every layer of this process together. */
const BACKGROUND_CONCURRENCY = 2;

/**
 * A Range read of a mounted layer that takes longer than this fails (a registry that accepts and stalls must not
 * hang a container's read): the layer then falls back to a whole-blob download, which fails when no byte comes
 * for this long.
 */
export const DEFAULT_FETCH_TIMEOUT_MS = 60_000;
/** After a layer's registry could not be reached at all, reads of chunks not yet fetched fail at once for this long. */
const UNREACHABLE_RETRY_MS = 5_000;

interface Served {
  req: MountRequest;
  mount: FuseMount;
  source: EstargzSource;
  result: MountResult;
  /** Stops the layer's whole-blob download, if one runs, and drops its file. */
  stop: () => void;
}

/** Most layers opened ahead of their mount request (the following layers of a pull). */
const MAX_NEIGHBOURS = 8;
/** How long a layer opened ahead waits for its mount request. */
const NEIGHBOUR_KEEP_MS = 60_000;

interface Opened {
  blob: RemoteBlob;
  span: SpanReader;
  layer: EstargzLayer;
}

/**
 * A layer's blob in the registry, read with bounded Range requests. Once its layer is mounted (attach), a failed
 * Range read falls back to one download of the whole blob (reads wait for their bytes in it); when that fails
 * too, the registry is taken as gone: reads of chunks not yet fetched fail (EIO) at once for a few seconds, then
 * try again. Before the mount, a failure is the caller's (the snapshot falls back to an ordinary download).
 */
class RemoteBlob {
  private source: EstargzSource | undefined;
  private wholePath = '';
  private mountpoint = '';
  private whole: WholeBlob | undefined;
  private unreachableUntil = 0;
  private stopped = false;
  urls: string[] | undefined;

  constructor(
    private readonly fetcher: Fetcher,
    private readonly layerRef: LayerRef,
    public size: number,
    private readonly fetchTimeoutMs: number,
    private readonly log: Logger,
  ) {
    this.urls = layerRef.urls;
  }

  private desc() {
    return { mediaType: LAYER_MEDIA_TYPE, digest: this.layerRef.digest, size: this.size, ...(this.urls?.length ? { urls: this.urls } : {}) };
  }

  attach(source: EstargzSource, cacheDir: string, mountpoint: string): void {
    this.source = source;
    this.wholePath = join(cacheDir, 'blob');
    this.mountpoint = mountpoint;
  }

  stop(): void {
    this.stopped = true;
    this.whole?.stop();
    if (this.wholePath) rmSync(this.wholePath, { force: true });
  }

  /** One bounded Range request, given up after fetchTimeoutMs. */
  private async rangeRead(offset: number, length: number): Promise<Buffer> {
    const digest = this.layerRef.digest;
    let timer: NodeJS.Timeout | undefined;
    let stream: Readable | undefined;
    let timedOut: Error | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        timedOut = unavailable(`layer ${digest}: no answer to a Range read in ${this.fetchTimeoutMs} ms`);
        stream?.destroy(timedOut);
        reject(timedOut);
      }, this.fetchTimeoutMs);
    });
    const read = (async () => {
      stream = await this.fetcher.fetch(this.desc(), { offset, length, onBlobSize: (n) => (this.size = this.size < 0 ? n : this.size) });
      if (timedOut) {
        stream.destroy(timedOut); // frees the fetcher's concurrency slot
        throw timedOut;
      }
      const parts: Buffer[] = [];
      let got = 0;
      for await (const chunk of stream) {
        parts.push(chunk as Buffer);
        got += (chunk as Buffer).length;
      }
      this.source?.noteFetched(got);
      const want = this.size >= 0 ? Math.min(length, this.size - offset) : length;
      if (got !== want) throw unavailable(`layer ${digest}: read ${got} bytes at ${offset}, expected ${want}`);
      return Buffer.concat(parts, got);
    })();
    read.catch(() => undefined);
    try {
      return await Promise.race([read, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private unreachable(err: unknown): Error {
    this.whole = undefined;
    if (Date.now() >= this.unreachableUntil) {
      this.log.error('lazyfs: layer unreachable: reads of its files not yet fetched fail with EIO until the registry answers again', {
        digest: this.layerRef.digest,
        ref: this.layerRef.ref,
        mountpoint: this.mountpoint,
        error: err instanceof Error ? err.message : String(err),
      });
    }
    this.unreachableUntil = Date.now() + UNREACHABLE_RETRY_MS;
    return err instanceof Error ? err : new Error(String(err));
  }

  readonly readAt = async (offset: number, length: number): Promise<Buffer> => {
    if (!this.source) return this.rangeRead(offset, length); // opening the layer: a failure is the snapshot's fallback
    const digest = this.layerRef.digest;
    if (this.whole && !this.whole.failed) return this.whole.readAt(offset, length).catch((err: unknown) => Promise.reject(this.unreachable(err)));
    if (Date.now() < this.unreachableUntil) throw unavailable(`layer ${digest}: the registry is unreachable`);
    try {
      return await this.rangeRead(offset, length);
    } catch (err) {
      if (this.stopped) throw err;
      if (!this.whole || this.whole.failed) {
        this.log.warn('lazyfs: a Range read failed; downloading the whole layer instead', { digest, ref: this.layerRef.ref, error: err instanceof Error ? err.message : String(err) });
        mkdirSync(dirname(this.wholePath), { recursive: true, mode: 0o700 });
        this.whole = WholeBlob.start(() => this.fetcher.fetch(this.desc()), this.wholePath, this.size, digest, this.fetchTimeoutMs);
      }
      const w = this.whole;
      try {
        return await w.readAt(offset, length);
      } catch (err2) {
        if (this.whole === w) throw this.unreachable(err2);
        throw err2;
      }
    }
  };
}

class Lazyfs {
  private readonly served = new Map<string, Served>();
  /** Mounts in progress by mountpoint: a second request for the same one waits for the first. */
  private readonly mounting = new Map<string, Promise<MountResult>>();
  private readonly background = new TaskLimit(BACKGROUND_CONCURRENCY);
  private readonly resolvers = new Map<string, ReturnType<typeof createResolver>>();
  /** Layers opened ahead of their mount request (openNeighbours), by ref, digest and registry settings. */
  private readonly opening = new Map<string, Promise<Opened>>();

  private idleTimer: NodeJS.Timeout | undefined;
  /** Connections open on the control socket: a snapshotter that started it at open keeps one. */
  private clients = 0;

  constructor(
    private readonly root: string,
    private readonly log: Logger,
    /** With no mount for this long, the process exits (a snapshotter starts a new one when it needs one). */
    private readonly idleExitMs: number,
    /** Limit of one Range read of a mounted layer (DEFAULT_FETCH_TIMEOUT_MS). */
    private readonly fetchTimeoutMs: number = DEFAULT_FETCH_TIMEOUT_MS,
  ) {}

  /**
   * Arms the idle exit when nothing is mounted or being mounted and no snapshotter is connected (a snapshotter
   * holds its connection while it is open: the lazyfs it started at open stays beside it, as
   * containerd-stargz-grpc beside containerd); disarms it otherwise.
   */
  checkIdle(): void {
    if (this.served.size > 0 || this.mounting.size > 0 || this.clients > 0) {
      if (this.idleTimer) clearTimeout(this.idleTimer);
      this.idleTimer = undefined;
      return;
    }
    this.idleTimer ??= setTimeout(() => {
      if (this.served.size === 0 && this.mounting.size === 0 && this.clients === 0) {
        this.log.info('lazyfs: nothing mounted, exiting');
        this.exit();
      }
      this.idleTimer = undefined;
    }, this.idleExitMs);
  }

  private fetcherFor(layerRef: string, registry: RegistryConfig): Fetcher {
    const key = JSON.stringify(registry);
    let r = this.resolvers.get(key);
    if (!r) {
      r = createResolver({
        ...(registry.hostsDir ? { hostsDir: registry.hostsDir } : {}),
        ...(registry.plainHttp ? { plainHttp: true } : {}),
        ...(registry.dockerConfig !== '' ? { credentials: credentialsFromDockerConfig(registry.dockerConfig) } : {}),
        logger: this.log,
      });
      this.resolvers.set(key, r);
    }
    return r.fetcher(layerRef);
  }

  async handle(req: Wire): Promise<unknown> {
    switch (req.op) {
      case 'hello':
        return { pid: process.pid, mounts: this.served.size } satisfies HelloResult;
      case 'mount': {
        const mp = resolve(req.mountpoint);
        const pending = this.mounting.get(mp);
        if (pending) return pending;
        const p = this.mount({ ...req, mountpoint: mp });
        this.mounting.set(mp, p);
        this.checkIdle();
        try {
          return await p;
        } finally {
          this.mounting.delete(mp);
          this.checkIdle();
        }
      }
      case 'unmount':
        await this.unmount(resolve(req.mountpoint), req.dropCache);
        this.checkIdle();
        return {};
      case 'list':
        return [...this.served.values()].map((s) => this.status(s));
      case 'shutdown':
        for (const mp of [...this.served.keys()]) await this.unmount(mp, false);
        setTimeout(() => this.exit(), 50);
        return {};
      default:
        throw invalidArgument(`unknown lazyfs request ${JSON.stringify((req as { op: unknown }).op)}`);
    }
  }

  private status(s: Served): MountStatus {
    return { mountpoint: s.req.mountpoint, digest: s.req.layer.digest, ref: s.req.layer.ref, ...s.source.stats() };
  }

  /** Opens a layer: its size (one byte's Range answer when not given), its footer and TOC from the blob's tail. */
  private async openLayer(layerRef: LayerRef, registry: RegistryConfig): Promise<Opened> {
    const { ref, digest } = layerRef;
    const size = layerRef.size !== undefined && Number.isSafeInteger(layerRef.size) && layerRef.size > 0 ? layerRef.size : -1;
    const blob = new RemoteBlob(this.fetcherFor(ref, registry), layerRef, size, this.fetchTimeoutMs, this.log);
    // The blob's size: stargz-snapshotter's labels name only its digest, so one byte's Range answer tells it
    // (Strata's pull passes it along: no request).
    if (blob.size < 0) await blob.readAt(0, 1);
    if (blob.size < 0) throw unavailable(`layer ${digest}: the registry did not say the blob's size`);
    const span = new SpanReader(blob.readAt);
    try {
      // The footer and (for all but huge layers) the TOC in one request: the blob's tail, held while opening.
      const tail = Math.min(blob.size, TAIL_BYTES);
      await span.hold(blob.size - tail, tail);
      try {
        return { blob, span, layer: await openEstargz(span.readAt, blob.size, layerRef.tocDigest ? { tocDigest: layerRef.tocDigest } : {}) };
      } finally {
        span.release();
      }
    } catch (err) {
      throw (err instanceof Error && 'kind' in err ? err : unavailable(`layer ${digest}: ${(err as Error).message}`, err)) as Error;
    }
  }

  private static openKey(ref: string, digest: string, registry: RegistryConfig): string {
    return `${ref}\n${digest}\n${JSON.stringify(registry)}`;
  }

  /**
   * Starts opening the layers that follow the one being mounted (its `stargz.layers` label), so that their
   * footers and TOCs are read in parallel with this one's, not one after the other as the unpack prepares them.
   * An opened layer is kept for NEIGHBOUR_KEEP_MS for its mount request.
   */
  private openNeighbours(req: MountRequest): void {
    const mine = new Set([...this.served.values()].map((s) => s.req.layer.digest));
    let n = 0;
    for (const digest of req.neighbours ?? []) {
      if (digest === req.layer.digest || mine.has(digest) || n >= MAX_NEIGHBOURS) continue;
      const key = Lazyfs.openKey(req.layer.ref, digest, req.registry);
      if (this.opening.has(key)) continue;
      n++;
      const p = this.openLayer({ ref: req.layer.ref, digest }, req.registry);
      p.catch(() => this.opening.get(key) === p && this.opening.delete(key));
      this.opening.set(key, p);
      setTimeout(() => this.opening.get(key) === p && this.opening.delete(key), NEIGHBOUR_KEEP_MS).unref();
    }
  }

  /** The layer opened ahead for this request (checked against its TOC digest), or opened now. */
  private async opened(req: MountRequest): Promise<Opened> {
    const key = Lazyfs.openKey(req.layer.ref, req.layer.digest, req.registry);
    const ahead = this.opening.get(key);
    this.opening.delete(key);
    if (ahead) {
      const o = await ahead.catch(() => undefined);
      if (o && (!req.layer.tocDigest || o.layer.tocDigest === req.layer.tocDigest)) {
        if (req.layer.urls?.length) o.blob.urls = req.layer.urls;
        return o;
      }
    }
    return this.openLayer(req.layer, req.registry);
  }

  private async mount(req: MountRequest): Promise<MountResult> {
    const have = this.served.get(req.mountpoint);
    if (have) {
      if (have.req.layer.digest !== req.layer.digest) throw invalidArgument(`a different layer is mounted at snapshot ${req.cacheDir.split('/').pop()}`);
      return { ...have.result, mounted: false };
    }
    // What a dead lazyfs left there.
    if (lazyfsMountsUnder(join(req.mountpoint, '..')).includes(req.mountpoint)) await detach(req.mountpoint);
    const { ref, digest } = req.layer;
    const t0 = performance.now();
    this.openNeighbours(req);
    const { blob, span, layer } = await this.opened(req);
    const t1 = performance.now();
    const source = new EstargzSource(layer, req.cacheDir, this.log);
    blob.attach(source, req.cacheDir, req.mountpoint);
    mkdirSync(req.mountpoint, { recursive: true });
    const mount = await mountReadOnly(req.mountpoint, source, { fsName: FS_NAME, log: this.log });
    const result: MountResult = { blobSize: blob.size, tocDigest: layer.tocDigest, prefetchSize: layer.prefetchSize, mounted: true };
    this.served.set(req.mountpoint, { req, mount, source, result, stop: () => blob.stop() });
    this.log.info('lazyfs: mounted', {
      digest,
      ref,
      prefetchSize: layer.prefetchSize,
      blobSize: blob.size,
      openMs: Math.round(t1 - t0),
      mountMs: Math.round(performance.now() - t1),
    });
    // The prefetch span is held in memory while its chunks are verified and cached, then released.
    source.start({ ...req.policy, backgroundLimit: this.background }, span);
    return result;
  }

  private async unmount(mountpoint: string, dropCache: boolean): Promise<void> {
    const s = this.served.get(mountpoint);
    this.served.delete(mountpoint);
    if (s) {
      s.source.close();
      s.stop();
      await s.mount.unmount();
      if (dropCache) s.source.dropCache();
      this.log.info('lazyfs: unmounted', { digest: s.req.layer.digest });
    } else if (lazyfsMountsUnder(join(mountpoint, '..')).includes(mountpoint)) {
      await detach(mountpoint);
    }
  }

  exit(): void {
    try {
      unlinkSync(join(this.root, SOCKET_NAME));
    } catch {
      // gone
    }
    try {
      unlinkSync(join(this.root, PID_NAME));
    } catch {
      // gone
    }
    process.exit(0);
  }

  /** Detaches what a dead lazyfs left under the root's snapshots. */
  async detachLeftovers(): Promise<void> {
    for (const mp of lazyfsMountsUnder(join(this.root, 'snapshots'))) {
      this.log.info('lazyfs: detaching a mount left by an earlier lazyfs', { mountpoint: mp });
      await detach(mp);
    }
  }

  serve(): void {
    const sock = join(this.root, SOCKET_NAME);
    const server = createServer((conn) => this.accept(conn));
    server.on('error', (err) => {
      this.log.error('lazyfs: control socket failed', { error: err.message });
      process.exit(1);
    });
    try {
      unlinkSync(sock);
    } catch {
      // no stale socket
    }
    const old = process.umask(0o077);
    server.listen(sock, () => {
      chmodSync(sock, 0o600);
      writeFileSync(join(this.root, PID_NAME), `${process.pid}\n`);
      this.log.info('lazyfs: ready', { pid: process.pid });
    });
    process.umask(old);
  }

  private accept(conn: Socket): void {
    let buf = '';
    this.clients++;
    this.checkIdle();
    conn.on('error', () => undefined);
    conn.once('close', () => {
      this.clients--;
      this.checkIdle();
    });
    conn.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        let req: Wire;
        try {
          req = JSON.parse(line) as Wire;
        } catch {
          conn.write(JSON.stringify(errorReply(0, invalidArgument('lazyfs: a request is not JSON'))) + '\n');
          continue;
        }
        this.handle(req).then(
          (result) => conn.writable && conn.write(JSON.stringify({ id: req.id, ok: true, result } satisfies Reply) + '\n'),
          (err: unknown) => {
            this.log.warn('lazyfs: request failed', { op: req.op, error: err });
            if (conn.writable) conn.write(JSON.stringify(errorReply(req.id, err)) + '\n');
          },
        );
      }
    });
  }
}

/** The process: `node lazyfs-main.js --root DIR [--log-level LEVEL]`. */
export async function runLazyfs(argv: string[]): Promise<void> {
  const i = argv.indexOf('--root');
  const root = i >= 0 ? argv[i + 1] : undefined;
  if (!root) {
    process.stderr.write('usage: lazyfs --root DIR\n');
    process.exit(2);
  }
  const lv = argv.indexOf('--log-level');
  const log = createLogger((lv >= 0 ? argv[lv + 1] : 'info') as 'info');
  const abs = resolve(root);
  if (await socketAnswers(join(abs, SOCKET_NAME))) {
    log.info('lazyfs: another lazyfs serves this root', { root: abs });
    process.exit(0);
  }
  // It outlives whoever started it: terminal signals are not for it (shutdown comes over the socket).
  process.on('SIGHUP', () => undefined);
  process.on('SIGINT', () => undefined);
  process.on('SIGPIPE', () => undefined);
  const ie = argv.indexOf('--idle-exit-ms');
  const idle = ie >= 0 ? Number(argv[ie + 1]) : 60_000;
  const ft = argv.indexOf('--fetch-timeout-ms');
  const fetchTimeout = ft >= 0 ? Number(argv[ft + 1]) : DEFAULT_FETCH_TIMEOUT_MS;
  const fs = new Lazyfs(abs, log, Number.isFinite(idle) && idle > 0 ? idle : 60_000, Number.isFinite(fetchTimeout) && fetchTimeout > 0 ? fetchTimeout : DEFAULT_FETCH_TIMEOUT_MS);
  process.on('SIGTERM', () => {
    void fs.handle({ id: 0, op: 'shutdown' });
  });
  await fs.detachLeftovers();
  fs.serve();
  try {
    preloadFuse();
  } catch (err) {
    log.warn('lazyfs: the FUSE binding does not load', { error: err instanceof Error ? err.message : String(err) });
  }
  fs.checkIdle();
}
