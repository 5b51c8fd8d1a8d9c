/**
 * The registry client: containerd's docker resolver (remotes/docker) over undici. resolve() turns a
 * reference into its root descriptor (HEAD on /manifests, GET when the registry does not say the digest),
 * fetcher() streams manifests and blobs (resumable with HTTP Range), pusher() uploads blobs (existence
 * check, cross-repository mount, monolithic upload) and manifests. Hosts come from a hosts.toml directory
 * (mirrors first, each failing over to the next) or default to the reference's registry.
 */
import { createHash } from 'node:crypto';
import { Readable, Transform, pipeline, type TransformCallback } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { StrataError, invalidArgument, notFound, unavailable } from '../core/errdefs.js';
import type { Logger } from '../log/index.js';
import { MediaTypeDockerManifest, MediaTypeDockerManifestList, MediaTypeOCIIndex, MediaTypeOCIManifest } from '../core/mediatypes.js';
import { type Descriptor } from '../core/descriptor.js';
import { repositoryScope } from './auth.js';
import { configureHosts, isProxyFor, type HostCapability, type RegistryHost } from './hosts.js';
import { RegistryTransport, drain, header, readBody, statusError, type RegistryResponse } from './http.js';
import { Limiter } from './limit.js';
import { Budget, MIN_PART_SIZE, MultipartStream, type RangeResponse } from './multipart.js';
import { isValidDigest, parseReference, type ParsedReference } from './reference.js';
import type { ByteBudget, FetchOpts, Fetcher, Pusher, Resolved, Resolver, ResolverOptions } from './types.js';

export const MediaTypeDockerSchema1Manifest = 'application/vnd.docker.distribution.manifest.v1+prettyjws';
/** Manifests above this size are refused (containerd's MaxManifestSize). */
export const MAX_MANIFEST_SIZE = 4 * 1024 * 1024;

const MANIFEST_TYPES = new Set([MediaTypeOCIManifest, MediaTypeOCIIndex, MediaTypeDockerManifest, MediaTypeDockerManifestList]);
const FETCH_MANIFEST_TYPES = new Set([...MANIFEST_TYPES, MediaTypeDockerSchema1Manifest]);

/** What resolve() accepts, best first. */
export const MANIFEST_ACCEPT = [MediaTypeDockerManifest, MediaTypeDockerManifestList, MediaTypeOCIManifest, MediaTypeOCIIndex, '*/*'].join(', ');

export const isManifestType = (mediaType: string): boolean => FETCH_MANIFEST_TYPES.has(mediaType);

export interface RegistryResolver extends Resolver {
  /** Closes the keep-alive connections. The resolver cannot be used afterwards. */
  close(): Promise<void>;
}

/** Test and tuning knobs beyond the contract's options. */
export interface ResolverInternals {
  /** Backoff base in ms (default 100). */
  backoffBaseMs?: number;
  /** Connections per origin (default 16). */
  connections?: number;
}

interface Base {
  ref: ParsedReference;
  hosts: RegistryHost[];
}

function mediaTypeOf(res: RegistryResponse): string {
  let ct = header(res.headers, 'content-type') ?? '';
  const sc = ct.indexOf(';');
  if (sc >= 0) ct = ct.slice(0, sc);
  ct = ct.trim();
  // Some registries serve schema1 as text/plain (containerd's special case).
  if (ct === 'text/plain') return MediaTypeDockerSchema1Manifest;
  return ct;
}

/** The media type of a manifest body that came without a useful Content-Type. */
function sniffMediaType(body: Buffer): string | undefined {
  try {
    const j = JSON.parse(body.toString('utf8')) as { mediaType?: unknown; manifests?: unknown; config?: unknown; layers?: unknown; schemaVersion?: unknown; fsLayers?: unknown };
    if (typeof j.mediaType === 'string' && j.mediaType) return j.mediaType;
    if (Array.isArray(j.manifests)) return MediaTypeOCIIndex;
    if (j.config !== undefined && Array.isArray(j.layers)) return MediaTypeOCIManifest;
    if (j.schemaVersion === 1 || Array.isArray(j.fsLayers)) return MediaTypeDockerSchema1Manifest;
  } catch {
    // not JSON
  }
  return undefined;
}

function contentLength(res: RegistryResponse): number | undefined {
  const cl = header(res.headers, 'content-length');
  if (cl === undefined || !/^\d+$/.test(cl.trim())) return undefined;
  return Number(cl);
}

/**
 * Whether a Content-Range header answers a request for bytes `first`-`last` (`last` undefined: to the end) of
 * a blob of `size` bytes: `bytes <first>-<last>/<size or *>`.
 */
function contentRangeMatches(cr: string, first: number, last: number | undefined, size: number): boolean {
  const m = /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/i.exec(cr.trim());
  if (!m) return false;
  const [a, b, total] = [Number(m[1]), Number(m[2]), m[3]];
  if (a !== first || b < a) return false;
  if (total !== '*' && size >= 0 && Number(total) !== size) return false;
  // A bounded range past the end of a blob of unknown size is answered up to its last byte.
  if (last !== undefined) return b === last || (b < last && total !== '*' && b === Number(total) - 1);
  return size < 0 || b === size - 1;
}

function hashOf(algorithm: string, data: Buffer): string {
  return `${algorithm}:${createHash(algorithm).update(data).digest('hex')}`;
}

/**
 * Passes bytes on after dropping the first `skip` (a registry that answered a range request with the whole
 * blob), and turns transport errors into 'unavailable'. Releases the concurrency slot when it closes.
 */
class FetchStream extends Transform {
  private toSkip: number;
  /** Bytes still to pass on (a bounded read, FetchOpts.length); Infinity when unbounded. */
  private left: number;

  constructor(
    skip: number,
    private readonly what: string,
    private readonly onClose: () => void,
    limit = Infinity,
  ) {
    super();
    this.toSkip = skip;
    this.left = limit;
    this.once('close', onClose);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.toSkip > 0) {
      if (chunk.length <= this.toSkip) {
        this.toSkip -= chunk.length;
        cb();
        return;
      }
      chunk = chunk.subarray(this.toSkip);
      this.toSkip = 0;
    }
    if (this.left !== Infinity) {
      if (this.left <= 0) {
        cb();
        return;
      }
      if (chunk.length > this.left) chunk = chunk.subarray(0, this.left);
      this.left -= chunk.length;
    }
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.toSkip > 0) cb(unavailable(`${this.what}: the response ended before the requested offset`));
    else cb();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (err && !(err instanceof StrataError) && (err as NodeJS.ErrnoException).code !== 'ERR_STREAM_PREMATURE_CLOSE' && err.name !== 'AbortError') {
      cb(unavailable(`${this.what}: ${err.message}`, err));
      return;
    }
    cb(err);
  }
}

class RegistryResolverImpl implements RegistryResolver {
  private readonly transport: RegistryTransport;
  private readonly limiter: Limiter;
  private readonly hostsCache = new Map<string, Promise<RegistryHost[]>>();
  /** Hosts that could not be reached or timed out: tried after the others from then on (see filter()). */
  private readonly unreachable = new Set<RegistryHost>();
  private readonly log: Logger | undefined;
  private readonly backoffBase: number;
  private readonly multipart: { partSize: number; parallelism: number; threshold: number; budget: ByteBudget } | undefined;

  constructor(
    private readonly opts: ResolverOptions,
    internals: ResolverInternals = {},
  ) {
    const maxConcurrent = opts.maxConcurrent ?? 3;
    if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) throw invalidArgument(`maxConcurrent must be a positive integer, got ${opts.maxConcurrent}`);
    const retries = opts.retries ?? 3;
    if (!Number.isInteger(retries) || retries < 0) throw invalidArgument(`retries must be a non-negative integer, got ${opts.retries}`);
    this.limiter = new Limiter(maxConcurrent);
    this.log = opts.logger;
    const mp = opts.multipart;
    if (mp && mp.partSize >= MIN_PART_SIZE && mp.parallelism > 1) {
      for (const [k, v] of Object.entries({ partSize: mp.partSize, parallelism: mp.parallelism, threshold: mp.threshold })) {
        if (!Number.isSafeInteger(v) || v < 0) throw invalidArgument(`multipart ${k} must be a non-negative integer, got ${v}`);
      }
      this.multipart = { ...mp, budget: mp.budget ?? new Budget(mp.partSize * mp.parallelism) };
    }
    this.backoffBase = internals.backoffBaseMs ?? 100;
    this.transport = new RegistryTransport({
      retries,
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
      ...(internals.backoffBaseMs !== undefined ? { backoffBaseMs: internals.backoffBaseMs } : {}),
      connections: internals.connections ?? Math.max(16, maxConcurrent * 2),
      ...(opts.connectTimeoutMs !== undefined ? { connectTimeoutMs: opts.connectTimeoutMs } : {}),
      ...(opts.responseHeaderTimeoutMs !== undefined ? { responseHeaderTimeoutMs: opts.responseHeaderTimeoutMs } : {}),
    });
  }

  /** The concurrency limiter (for tests). */
  get limit(): Limiter {
    return this.limiter;
  }

  private async base(ref: string): Promise<Base> {
    const parsed = parseReference(ref);
    let hosts = this.hostsCache.get(parsed.host);
    if (!hosts) {
      hosts = configureHosts(parsed.host, {
        ...(this.opts.hostsDir !== undefined ? { hostsDir: this.opts.hostsDir } : {}),
        ...(this.opts.plainHttp !== undefined ? { plainHttp: this.opts.plainHttp } : {}),
      });
      hosts.catch(() => this.hostsCache.delete(parsed.host));
      this.hostsCache.set(parsed.host, hosts);
    }
    return { ref: parsed, hosts: await hosts };
  }

  private path(base: Base, host: RegistryHost, ...parts: string[]): string {
    let p = `${host.path}/${base.ref.repository}/${parts.join('/')}`.replace(/\/{2,}/g, '/');
    if (!p.startsWith('/')) p = '/' + p;
    if (isProxyFor(host, base.ref.host)) p += `?ns=${encodeURIComponent(base.ref.host)}`;
    return p;
  }

  /**
   * The hosts with `caps`, in configuration order, except that hosts this resolver found unreachable (a
   * connection refused, a timeout) come last: one pull pays for a dead or hanging mirror once, not once per
   * request (containerd tries it again every time). They are still tried when every other host fails.
   */
  private filter(base: Base, caps: HostCapability[]): RegistryHost[] {
    const capable = base.hosts.filter((h) => caps.every((c) => h.capabilities.includes(c)));
    return [...capable.filter((h) => !this.unreachable.has(h)), ...capable.filter((h) => this.unreachable.has(h))];
  }

  /** Notes a transport failure (thrown, not a status) of a mirror (never of the configured server). */
  private noteFailure(base: Base, host: RegistryHost, err: StrataError): void {
    if (err.kind === 'unavailable' && host !== base.hosts[base.hosts.length - 1]) this.unreachable.add(host);
  }

  /** Retries for a request to a host: only the configured last one (the server) retries; for a mirror, the next host is the retry. */
  private retriesFor(base: Base, host: RegistryHost): { retries?: number } {
    return host === base.hosts[base.hosts.length - 1] ? {} : { retries: 0 };
  }

  async resolve(ref: string): Promise<Resolved> {
    const base = await this.base(ref);
    const { ref: p } = base;
    const dgst = p.digest;
    const paths: string[][] = dgst ? [['manifests', dgst], ['blobs', dgst]] : [['manifests', p.tag!]];
    const hosts = this.filter(base, dgst ? ['pull'] : ['pull', 'resolve']);
    if (hosts.length === 0) throw notFound(`no resolve hosts for ${p.name}`);
    const scopes = [repositoryScope(p.repository, false)];
    let firstErr: StrataError | undefined;
    let sawNotFound = false;

    for (const parts of paths) {
      for (const host of hosts) {
        const path = this.path(base, host, ...parts);
        const where = `${host.scheme}://${host.host}${path}`;
        try {
          const retries = this.retriesFor(base, host);
          let res = await this.transport.roundTrip({ host, method: 'HEAD', path, headers: { accept: MANIFEST_ACCEPT }, scopes, ...retries });
          if (res.status === 405) {
            // Registries without HEAD on manifests.
            await drain(res);
            res = await this.transport.roundTrip({ host, method: 'GET', path, headers: { accept: MANIFEST_ACCEPT }, scopes, ...retries });
          }
          if (res.status === 404) {
            await drain(res);
            sawNotFound = true;
            this.log?.debug('resolve: not found on host, trying the next one', { host: host.host, ref: p.name });
            continue;
          }
          if (res.status > 299) {
            const err = await statusError(res, `resolve ${p.name} on ${host.host}`);
            if (err.kind === 'permission denied') {
              firstErr ??= new StrataError('permission denied', `pull access denied, repository does not exist or may require authorization: ${err.detail}`);
            } else firstErr ??= err;
            this.log?.info('resolve failed on host, trying the next one', { host: host.host, ref: p.name, error: err });
            continue;
          }
          let size = contentLength(res);
          let mediaType = mediaTypeOf(res);
          let digest = dgst;
          if (!digest) {
            const dh = header(res.headers, 'docker-content-digest');
            if (dh && size !== undefined) {
              if (!isValidDigest(dh)) throw invalidArgument(`resolve ${p.name}: ${JSON.stringify(dh)} in Docker-Content-Digest is not a valid digest`);
              digest = dh;
            }
          }
          const knownType = FETCH_MANIFEST_TYPES.has(mediaType);
          await drain(res);
          if (!digest || size === undefined || !knownType) {
            const get = await this.transport.roundTrip({ host, method: 'GET', path, headers: { accept: MANIFEST_ACCEPT }, scopes, ...retries });
            if (get.status > 299) {
              firstErr ??= await statusError(get, `resolve ${p.name} on ${host.host}`);
              continue;
            }
            const body = await readBody(get.body, MAX_MANIFEST_SIZE);
            if (body.length > MAX_MANIFEST_SIZE) {
              firstErr ??= notFound(`rejecting manifest over ${MAX_MANIFEST_SIZE} bytes for ${p.name}`);
              continue;
            }
            mediaType = mediaTypeOf(get);
            if (!FETCH_MANIFEST_TYPES.has(mediaType)) mediaType = sniffMediaType(body) ?? mediaType;
            digest ??= hashOf('sha256', body);
            size = body.length;
          }
          if (size > MAX_MANIFEST_SIZE) {
            firstErr ??= notFound(`rejecting ${size} byte manifest for ${p.name}`);
            continue;
          }
          this.log?.debug('resolved', { ref: p.name, host: host.host, digest, mediaType, size, via: where });
          return { name: p.name, desc: { mediaType, digest, size } };
        } catch (err) {
          if (!(err instanceof StrataError)) throw err;
          if (err.kind === 'invalid argument') throw err;
          firstErr ??= err;
          this.noteFailure(base, host, err);
          this.log?.info('resolve failed on host, trying the next one', { host: host.host, ref: p.name, error: err });
        }
      }
    }
    // Like containerd, the first real error wins over 404s, except that a host that could not be reached
    // does not hide another host's authoritative "not found" (a dead mirror in front of the registry).
    if (!firstErr || (sawNotFound && firstErr.kind === 'unavailable')) throw notFound(p.name);
    throw firstErr;
  }

  fetcher(ref: string): Fetcher {
    const basePromise = this.base(ref);
    basePromise.catch(() => undefined); // reported by fetch()
    return { fetch: (desc, opts) => this.fetch(basePromise, desc, opts) };
  }

  private async fetch(basePromise: Promise<Base>, desc: Descriptor, opts: FetchOpts = {}): Promise<Readable> {
    const base = await basePromise;
    if (!isValidDigest(desc.digest)) throw invalidArgument(`invalid digest ${JSON.stringify(desc.digest)}`);
    const offset = opts.offset ?? 0;
    if (!Number.isSafeInteger(offset) || offset < 0 || (desc.size >= 0 && offset > desc.size)) {
      throw invalidArgument(`fetch ${desc.digest}: offset ${offset} outside 0..${desc.size}`);
    }
    if (offset > 0 && offset === desc.size) return Readable.from([]);
    if (opts.length !== undefined) {
      const length = opts.length;
      if (!Number.isSafeInteger(length) || length <= 0) throw invalidArgument(`fetch ${desc.digest}: length ${length} must be positive`);
      // Never past the end of a blob of known size (the Range would be unsatisfiable).
      const bounded = desc.size >= 0 ? Math.min(length, desc.size - offset) : length;
      return (await this.open(base, desc, offset, bounded, true, opts.onBlobSize)).body;
    }
    const mp = this.multipart;
    if (!mp || isManifestType(desc.mediaType) || !Number.isSafeInteger(desc.size) || desc.size - offset <= Math.max(mp.threshold, mp.partSize)) {
      return (await this.open(base, desc, offset, undefined, false, opts.onBlobSize)).body;
    }
    // The probe: an open-ended range from the offset. Only a registry that honours it (and says so) is split;
    // its answer is read as the first part, or as the whole download when it is not split.
    const probe = await this.open(base, desc, offset, undefined, true);
    if (!probe.ranged || !probe.acceptRanges) {
      this.log?.debug('multipart fetch: one stream', { digest: desc.digest, ranged: probe.ranged, acceptRanges: probe.acceptRanges });
      return probe.body;
    }
    const what = `${desc.digest} (${desc.mediaType})`;
    const stream = new MultipartStream({
      what,
      size: desc.size,
      start: offset,
      partSize: mp.partSize,
      parallelism: mp.parallelism,
      budget: mp.budget,
      probe: probe.body,
      open: (o, len) => this.open(base, desc, o, len, true),
      openSingle: async (o) => (o >= desc.size ? Readable.from([]) : (await this.open(base, desc, o, undefined, false)).body),
      onEvent: (e) => this.log?.info(`multipart fetch: ${e.type}`, { digest: desc.digest, ...e }),
    });
    this.log?.debug('multipart fetch', { digest: desc.digest, offset, parts: stream.partCount, partSize: mp.partSize });
    return stream;
  }

  /**
   * One GET of a blob or manifest from `offset`: bounded to `length` bytes when given (`bytes=a-b`), else to
   * the end. `forceRange` sends the Range header even from offset 0 (the multipart probe); otherwise offset
   * 0 goes without one, as containerd's requests do (some registries mishandle `bytes=0-`). Holds a slot of
   * the concurrency limit until the body ends or is destroyed.
   */
  private async open(
    base: Base,
    desc: Descriptor,
    offset: number,
    length: number | undefined,
    forceRange: boolean,
    onBlobSize?: (size: number) => void,
  ): Promise<RangeResponse> {
    const hosts = this.filter(base, ['pull']);
    if (hosts.length === 0) throw notFound(`no pull hosts for ${base.ref.name}`);
    const what = `${desc.digest} (${desc.mediaType})`;
    const isManifest = isManifestType(desc.mediaType);
    const accept = isManifest ? [desc.mediaType, MANIFEST_ACCEPT].join(', ') : `${desc.mediaType}, */*`;
    const headers: Record<string, string> = { accept };
    const ranged = offset > 0 || forceRange || length !== undefined;
    const last = length !== undefined ? offset + length - 1 : desc.size - 1;
    if (ranged) headers['range'] = length !== undefined ? `bytes=${offset}-${last}` : `bytes=${offset}-`;
    const scopes = [repositoryScope(base.ref.repository, false)];

    const release = await this.limiter.acquire();
    try {
      let firstErr: StrataError | undefined;
      let sawNotFound = false;
      const attempt = async (res: RegistryResponse, source: string): Promise<RangeResponse | undefined> => {
        if (res.status === 404) {
          await drain(res);
          sawNotFound = true;
          firstErr ??= notFound(`content ${what} at ${source}`);
          return undefined;
        }
        if (res.status > 299) {
          firstErr ??= await statusError(res, `fetch ${what} from ${source}`);
          return undefined;
        }
        let skip = 0;
        let partial = false;
        if (ranged) {
          const cr = header(res.headers, 'content-range');
          if (res.status === 206 || cr) {
            if (!cr || !contentRangeMatches(cr, offset, length !== undefined ? last : undefined, desc.size)) {
              await drain(res);
              firstErr ??= unavailable(`fetch ${what} from ${source}: unexpected content range ${JSON.stringify(cr ?? '')} for bytes ${offset}-${length !== undefined ? last : ''}`);
              return undefined;
            }
            partial = true;
            const total = /\/(\d+)\s*$/.exec(cr)?.[1];
            if (total !== undefined) onBlobSize?.(Number(total));
          } else {
            skip = offset; // the whole blob came back: drop the head ourselves
          }
        }
        if (!partial) {
          const cl = contentLength(res);
          if (cl !== undefined) onBlobSize?.(cl);
        }
        const encoding = (header(res.headers, 'content-encoding') ?? '').trim().toLowerCase();
        const acceptRanges = /(^|,)\s*bytes\s*(,|$)/i.test(header(res.headers, 'accept-ranges') ?? '');
        // A bounded read that got more than it asked for (the whole blob) stops passing bytes at its end.
        const out = new FetchStream(skip, `fetch ${what} from ${source}`, release, length !== undefined ? length : Infinity);
        pipeline(res.body, out, () => undefined);
        return { body: out, ranged: partial && (encoding === '' || encoding === 'identity'), acceptRanges };
      };

      // Alternative URLs (foreign layers) first, unauthenticated.
      for (const u of desc.urls ?? []) {
        let url: URL;
        try {
          url = new URL(u);
        } catch {
          continue;
        }
        if (url.protocol !== 'http:' && url.protocol !== 'https:') continue;
        const host: RegistryHost = {
          scheme: url.protocol === 'http:' ? 'http' : 'https',
          host: url.host,
          path: '',
          capabilities: ['pull'],
          skipVerify: false,
          caFiles: [],
          clientPairs: [],
          header: {},
        };
        try {
          const res = await this.transport.roundTrip({ host, method: 'GET', path: url.pathname + url.search, headers, scopes: [], auth: false });
          const s = await attempt(res, url.origin);
          if (s) return s;
        } catch (err) {
          if (!(err instanceof StrataError)) throw err;
          firstErr ??= err;
        }
      }

      for (const host of hosts) {
        const path = this.path(base, host, isManifest ? 'manifests' : 'blobs', desc.digest);
        try {
          const res = await this.transport.roundTrip({ host, method: 'GET', path, headers, scopes, ...this.retriesFor(base, host) });
          const s = await attempt(res, host.host);
          if (s) return s;
        } catch (err) {
          if (!(err instanceof StrataError)) throw err;
          firstErr ??= err;
          this.noteFailure(base, host, err);
          this.log?.info('fetch failed on host, trying the next one', { host: host.host, digest: desc.digest, error: err });
        }
      }
      if (!firstErr || firstErr.kind === 'not found' || (sawNotFound && firstErr.kind === 'unavailable')) throw notFound(`content ${what}`);
      throw firstErr;
    } catch (err) {
      release();
      throw err;
    }
  }

  pusher(ref: string): Pusher {
    const basePromise = this.base(ref);
    basePromise.catch(() => undefined);
    return { push: (desc, open, opts) => this.push(basePromise, desc, open, opts) };
  }

  private async push(
    basePromise: Promise<Base>,
    desc: Descriptor,
    open: () => Promise<Readable>,
    opts: { tag?: boolean; mountFrom?: string[] } = {},
  ): Promise<'exists' | 'mounted' | 'pushed'> {
    const base = await basePromise;
    const p = base.ref;
    if (!isValidDigest(desc.digest)) throw invalidArgument(`invalid digest ${JSON.stringify(desc.digest)}`);
    if (!Number.isSafeInteger(desc.size) || desc.size < 0) throw invalidArgument(`invalid size ${desc.size} for ${desc.digest}`);
    const hosts = this.filter(base, ['push']);
    const host = hosts[0];
    if (!host) throw notFound(`no push hosts for ${p.name}`);
    const isManifest = MANIFEST_TYPES.has(desc.mediaType);
    const what = `${desc.digest} (${desc.mediaType})`;
    const scopes = [repositoryScope(p.repository, true)];

    return this.limiter.run(async () => {
      // Existence check.
      const object = isManifest ? (opts.tag && p.tag !== undefined && (p.digest === undefined || p.digest === desc.digest) ? p.tag : desc.digest) : desc.digest;
      const checkPath = this.path(base, host, isManifest ? 'manifests' : 'blobs', object);
      const head = await this.transport.roundTrip({
        host,
        method: 'HEAD',
        path: checkPath,
        headers: { accept: isManifest ? [desc.mediaType, MANIFEST_ACCEPT].join(', ') : `${desc.mediaType}, */*` },
        scopes,
      });
      if (head.status === 200) {
        const dh = header(head.headers, 'docker-content-digest');
        await drain(head);
        if (object === desc.digest || dh === desc.digest) return 'exists';
      } else if (head.status === 404 || head.status === 401 || head.status === 403) {
        // Missing, or not visible to us: go on (the upload reports a real permission problem).
        await drain(head);
      } else {
        throw await statusError(head, `push ${what}: check existence on ${host.host}`);
      }

      if (isManifest) {
        const path = this.path(base, host, 'manifests', object);
        const res = await this.transport.roundTrip({
          host,
          method: 'PUT',
          path,
          headers: { 'content-type': desc.mediaType, 'content-length': String(desc.size) },
          scopes,
          body: open,
        });
        if (res.status === 200 || res.status === 201 || res.status === 204) {
          await drain(res);
          return 'pushed';
        }
        throw await statusError(res, `push manifest ${what} to ${p.host}/${p.repository}:${object}`);
      }
      return this.uploadBlob(base, host, desc, open, opts.mountFrom ?? []);
    });
  }

  /** The repository to mount from: the first candidate on the same host that is not the target. */
  private mountCandidate(base: Base, mountFrom: string[]): string | undefined {
    for (const m of mountFrom) {
      let repo = m;
      const slash = m.indexOf('/');
      const first = slash > 0 ? m.slice(0, slash) : '';
      if (first && (/[.:]/.test(first) || first === 'localhost')) {
        // "host/repo": only the reference's own host can mount.
        const hostPart = first === 'index.docker.io' ? 'docker.io' : first;
        if (hostPart !== base.ref.host) continue;
        repo = m.slice(slash + 1);
      }
      if (repo && repo !== base.ref.repository) return repo;
    }
    return undefined;
  }

  private async uploadBlob(base: Base, host: RegistryHost, desc: Descriptor, open: () => Promise<Readable>, mountFrom: string[]): Promise<'mounted' | 'pushed'> {
    const p = base.ref;
    const what = `${desc.digest} (${desc.mediaType})`;
    const scopes = [repositoryScope(p.repository, true)];
    const retries = this.opts.retries ?? 3;
    const from = this.mountCandidate(base, mountFrom);
    for (let attempt = 0; ; attempt++) {
      try {
        let start: RegistryResponse | undefined;
        if (from) {
          const mountScopes = [...scopes, repositoryScope(from, false)];
          const uploads = this.path(base, host, 'blobs', 'uploads/');
          const path = `${uploads}${uploads.includes('?') ? '&' : '?'}mount=${encodeURIComponent(desc.digest)}&from=${encodeURIComponent(from)}`;
          const res = await this.transport.roundTrip({ host, method: 'POST', path, headers: { 'content-length': '0' }, scopes: mountScopes });
          if (res.status === 201) {
            await drain(res);
            this.log?.debug('push: mounted', { digest: desc.digest, from, to: p.repository });
            return 'mounted';
          }
          if (res.status === 401 || res.status === 403) {
            // The source repository is private to us: upload instead.
            await drain(res);
          } else start = res;
        }
        start ??= await this.transport.roundTrip({ host, method: 'POST', path: this.path(base, host, 'blobs', 'uploads/'), headers: { 'content-length': '0' }, scopes });
        if (start.status === 201) {
          // The registry already has it (some answer a plain POST so).
          await drain(start);
          return 'mounted';
        }
        if (start.status !== 202 && start.status !== 200 && start.status !== 204) throw await statusError(start, `push ${what}: start upload on ${host.host}`);
        const location = header(start.headers, 'location');
        await drain(start);
        if (!location) throw new StrataError('unknown', `push ${what}: the registry did not give an upload location`);
        const lurl = new URL(location, `${host.scheme}://${host.host}`);
        lurl.searchParams.append('digest', desc.digest);
        const sameOrigin = lurl.host === host.host && lurl.protocol === `${host.scheme}:`;
        const target: RegistryHost = sameOrigin ? host : { ...host, scheme: lurl.protocol === 'http:' ? 'http' : 'https', host: lurl.host, header: {} };
        const put = await this.transport.roundTrip({
          host: target,
          method: 'PUT',
          path: lurl.pathname + lurl.search,
          headers: { 'content-type': 'application/octet-stream', 'content-length': String(desc.size) },
          scopes,
          body: open,
          auth: sameOrigin,
          retries: 0, // a failed PUT may have consumed the session: start over from the POST instead
        });
        if (put.status === 201 || put.status === 200 || put.status === 204) {
          await drain(put);
          return 'pushed';
        }
        throw await statusError(put, `push ${what} to ${p.host}/${p.repository}`);
      } catch (err) {
        if (err instanceof StrataError && err.kind === 'unavailable' && attempt < retries) {
          this.log?.debug('push: upload failed, starting over', { digest: desc.digest, attempt, error: err });
          const ms = this.backoffBase * 2 ** attempt;
          await sleep(ms / 2 + Math.random() * ms);
          continue;
        }
        throw err;
      }
    }
  }

  close(): Promise<void> {
    return this.transport.close();
  }
}

/** A registry resolver (containerd's docker resolver) with its own connection pool and concurrency limit. */
export function createResolver(opts: ResolverOptions = {}, internals: ResolverInternals = {}): RegistryResolver {
  return new RegistryResolverImpl(opts, internals);
}
