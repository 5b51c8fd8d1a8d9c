/**
 * Image conversion to eStargz, as `nerdctl image convert --estargz [--oci]` (containerd's images/converter
 * with stargz-snapshotter's estargz LayerConvertFunc) does it:
 *
 *   - every layer is rebuilt as an eStargz blob (src/estargz's writer, fed by src/diff/tar.ts's parser): a
 *     gzip layer (uncompressed and zstd layers become gzip, media type changed accordingly), stored with
 *     `containerd.io/uncompressed` = its new diffID, its descriptor annotated with the TOC digest
 *     (containerd.io/snapshot/stargz/toc.digest) and the uncompressed size (io.containers.estargz.uncompressed-size);
 *   - each manifest's config is rewritten with the new diff_ids (every other field kept as it was), the
 *     manifest with the new config and layers (and its gc.ref labels pointing at them);
 *   - an index keeps the manifests the platforms select (the host's by default, all with allPlatforms), in
 *     order, the others dropped, as containerd's converter does;
 *   - with `oci`, Docker media types (manifest list, manifest, config, layers) become their OCI equivalents;
 *   - the destination image is created (or replaced) pointing at the new root, with the source's labels.
 *
 * A layer shared by several manifests is converted once. Conversion is deterministic (same input, same
 * chunk size and level: same blob), so converting an image twice gives the same digests.
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { invalidArgument, isAlreadyExists } from '../core/errdefs.js';
import type { Descriptor, Platform } from '../core/descriptor.js';
import { LABEL_UNCOMPRESSED } from '../core/labels.js';
import { MediaTypeDockerConfig, MediaTypeDockerManifest, MediaTypeDockerManifestList, MediaTypeOCIConfig, MediaTypeOCIIndex, MediaTypeOCIManifest } from '../core/mediatypes.js';
import type { ContentStore } from '../content/types.js';
import { decompressStream } from '../diff/decompress.js';
import { compressionOf, mayBeMislabelled } from '../diff/mediatypes.js';
import { encodeHeader, PAX_XATTR, TarParser, type TarHeader, type TypeFlag } from '../diff/tar.js';
import {
  ANNOTATION_TOC_DIGEST,
  ANNOTATION_UNCOMPRESSED_SIZE,
  EstargzWriter,
  type BlobSink,
  type EstargzResult,
  type WriterEntry,
} from '../estargz/index.js';
import type { ImageStore } from '../metadata/images.js';
import { readBlob } from './blob.js';
import type { ProgressFn } from './fetch.js';
import { gcRefLabels, isIndexType, isLayerType, isManifestType } from './manifest.js';
import { defaultPlatform, platformMatcherOrdered, type PlatformMatcher } from './platforms.js';
import { writeBlobBytes } from './archive/common.js';

export interface EstargzLayerOptions {
  /** Bytes of file data per gzip member (default 4 MiB). */
  chunkSize?: number;
  /** gzip level (default 9). */
  compressionLevel?: number;
  /** Members compressed at once (default 2). */
  concurrency?: number;
}

const WRITER_TYPE: Record<TarHeader['type'], [WriterEntry['type'], TypeFlag]> = {
  file: ['reg', '0'],
  link: ['hardlink', '1'],
  symlink: ['symlink', '2'],
  'character-device': ['char', '3'],
  'block-device': ['block', '4'],
  directory: ['dir', '5'],
  fifo: ['fifo', '6'],
};

/**
 * Feeds the entries of a layer tar to `writer`, those `keep` accepts (by their ordinal in the tar), in order.
 * The parser calls back synchronously; the writer's steps are queued and run after each input chunk.
 */
async function feed(tar: AsyncIterable<Buffer>, writer: EstargzWriter, keep: (ordinal: number, h: TarHeader) => boolean): Promise<void> {
  const queue: (() => Promise<void>)[] = [];
  let ordinal = -1;
  let kept = false;
  const parser = new TarParser({
    header: (h) => {
      ordinal++;
      kept = keep(ordinal, h);
      if (!kept) return;
      const [type, flag] = WRITER_TYPE[h.type];
      const entry: WriterEntry = {
        name: h.name,
        type,
        mode: h.mode,
        uid: h.uid,
        gid: h.gid,
        size: h.size,
        mtime: h.mtime,
        ...(h.linkname ? { linkName: h.linkname } : {}),
        ...(type === 'char' || type === 'block' ? { devMajor: h.devmajor, devMinor: h.devminor } : {}),
        ...(h.xattrs.length > 0 ? { xattrs: h.xattrs } : {}),
      };
      const header = encodeHeader({
        name: h.name,
        type: flag,
        mode: h.mode,
        uid: h.uid,
        gid: h.gid,
        size: h.size,
        mtime: BigInt(Math.floor(h.mtime)),
        ...(h.linkname ? { linkname: h.linkname } : {}),
        devmajor: h.devmajor,
        devminor: h.devminor,
        ...(h.xattrs.length > 0 ? { pax: h.xattrs.map(([k, v]) => [`${PAX_XATTR}${k}`, v] as [string, Buffer]) } : {}),
      });
      queue.push(() => writer.begin(entry, header));
    },
    data: (chunk) => {
      if (kept) queue.push(() => writer.data(chunk));
    },
    endEntry: () => {
      if (kept) queue.push(() => writer.end());
    },
  });
  for await (const chunk of tar) {
    parser.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
    for (const step of queue.splice(0)) await step();
  }
  parser.end();
  for (const step of queue.splice(0)) await step();
}

const writerOptions = (opts: EstargzLayerOptions, prioritized: boolean) => ({
  ...(opts.chunkSize ? { chunkSize: opts.chunkSize } : {}),
  ...(opts.compressionLevel !== undefined ? { compressionLevel: opts.compressionLevel } : {}),
  ...(opts.concurrency ? { concurrency: opts.concurrency } : {}),
  prioritized,
});

/**
 * Rebuilds an uncompressed layer tar (`tar`, any chunking) as an eStargz blob written to `sink`. The entries
 * keep their order; a TOC or landmark already in the tar is dropped (converting an eStargz layer again).
 */
export async function tarToEstargz(tar: AsyncIterable<Buffer>, sink: BlobSink, opts: EstargzLayerOptions = {}): Promise<EstargzResult> {
  const writer = new EstargzWriter(sink, writerOptions(opts, false));
  await feed(tar, writer, () => true);
  return writer.close();
}

/** A tar entry's name as a path under the root ('' for the root itself); '..' components are dropped as stargz does. */
const cleanPath = (name: string) => name.split('/').filter((c) => c !== '' && c !== '.' && c !== '..').join('/');

/**
 * The ordinals of the entries to put before the prefetch landmark for `prioritized` paths, as stargz's
 * Build chooses them: each listed path with its parent directories and, for a hard link, its target (and
 * the target's parents); every entry of such a name (a name the tar holds twice moves with all its entries,
 * so the later one still wins). Paths the tar does not have are skipped (ctr-remote and nerdctl allow them).
 */
function prioritizedOrdinals(entries: { name: string; type: TarHeader['type']; linkname: string }[], prioritized: readonly string[]): Set<number> {
  const byName = new Map<string, number[]>();
  for (const [i, e] of entries.entries()) {
    const n = cleanPath(e.name);
    byName.set(n, [...(byName.get(n) ?? []), i]);
  }
  const out = new Set<number>();
  const done = new Set<string>();
  const move = (name: string, depth: number): void => {
    if (done.has(name) || depth > 64) return;
    done.add(name);
    if (name !== '') move(name.includes('/') ? name.slice(0, name.lastIndexOf('/')) : '', depth + 1);
    for (const i of byName.get(name) ?? []) {
      if (entries[i]!.type === 'link') move(cleanPath(entries[i]!.linkname), depth + 1);
      out.add(i);
    }
  };
  for (const p of prioritized) move(cleanPath(p), 0);
  return out;
}

/**
 * As tarToEstargz, with `prioritized` paths (ctr-remote's record of what a container read at start) first,
 * then the prefetch landmark, then everything else. `open` gives the layer's tar afresh: it is read three times
 * (an index of the entries, the prioritized ones, the rest), so nothing is buffered however big the layer.
 * Within each part entries keep their tar order (stargz's Build orders the prioritized part by the list
 * instead; a snapshotter fetches the part as one span, so the order inside it does not matter).
 */
export async function tarToEstargzPrioritized(
  open: () => Promise<AsyncIterable<Buffer>>,
  prioritized: readonly string[],
  sink: BlobSink,
  opts: EstargzLayerOptions = {},
): Promise<EstargzResult> {
  const entries: { name: string; type: TarHeader['type']; linkname: string }[] = [];
  const indexer = new TarParser({ header: (h) => void entries.push({ name: h.name, type: h.type, linkname: h.linkname }), data: () => undefined, endEntry: () => undefined });
  for await (const chunk of await open()) indexer.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
  indexer.end();
  const first = prioritizedOrdinals(entries, prioritized);
  const writer = new EstargzWriter(sink, writerOptions(opts, true));
  await feed(await open(), writer, (i) => first.has(i));
  await writer.prefetchLandmark();
  await feed(await open(), writer, (i) => !first.has(i));
  return writer.close();
}

/** The gzip media type for a layer's type (uncompressed and zstd layers become gzip). */
function gzipLayerType(mediaType: string, oci: boolean): string {
  let t = mediaType;
  if (t.startsWith('application/vnd.docker.image.rootfs.')) {
    if (!t.endsWith('.gzip')) t = `${t}.gzip`;
    if (oci) {
      t = t.includes('foreign')
        ? 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip'
        : 'application/vnd.oci.image.layer.v1.tar+gzip';
    }
    return t;
  }
  return t.replace(/\+zstd$/, '+gzip').replace(/\.tar$/, '.tar+gzip');
}

const DOCKER_TO_OCI: Record<string, string> = {
  [MediaTypeDockerManifestList]: MediaTypeOCIIndex,
  [MediaTypeDockerManifest]: MediaTypeOCIManifest,
  [MediaTypeDockerConfig]: MediaTypeOCIConfig,
};

export interface ConvertOptions extends EstargzLayerOptions {
  /** Paths to put first in every layer, before the prefetch landmark (ctr-remote's and nerdctl's --estargz-record-in). */
  prioritizedFiles?: string[];
  /** Docker media types become OCI ones (nerdctl's --oci). */
  oci?: boolean;
  /** Manifests of an index to keep (and convert); default: the host platform's only. */
  platforms?: Platform[];
  allPlatforms?: boolean;
  onProgress?: ProgressFn;
}

export interface ConvertResult {
  /** The new image's target. */
  target: Descriptor;
  /** Layers converted (source digest -> new descriptor). */
  layers: Map<string, Descriptor>;
}

type Json = Record<string, unknown>;

/** `fn` over `items`, at most `limit` at once, results in order; after a failure no new item starts, and it is thrown once the running ones settle. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (next < items.length && !failed) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  const settled = await Promise.allSettled(Array.from({ length: Math.min(limit, items.length) }, worker));
  const rejected = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (rejected) throw rejected.reason;
  return out;
}

class Converter {
  private readonly layerWork = new Map<string, Promise<{ desc: Descriptor; diffID: string }>>();
  readonly converted = new Map<string, Descriptor>();

  constructor(
    private readonly content: ContentStore,
    private readonly matcher: PlatformMatcher | undefined,
    private readonly opts: ConvertOptions,
  ) {}

  private async readJson(desc: Descriptor): Promise<Json> {
    const v = JSON.parse((await readBlob(this.content, desc)).toString('utf8')) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalidArgument(`blob ${desc.digest} is not a JSON object`);
    return v as Json;
  }

  private async writeJson(obj: Json, from: Descriptor, mediaType: string, labels: Record<string, string>): Promise<Descriptor> {
    const bytes = Buffer.from(JSON.stringify(obj));
    const digest = await writeBlobBytes(this.content, bytes, labels);
    const out: Descriptor = { ...from, mediaType, digest, size: bytes.length };
    return out;
  }

  private mediaType(t: string): string {
    return this.opts.oci ? (DOCKER_TO_OCI[t] ?? t) : t;
  }

  async convert(desc: Descriptor): Promise<Descriptor> {
    if (isIndexType(desc.mediaType)) return this.index(desc);
    if (isManifestType(desc.mediaType)) return this.manifest(desc);
    throw invalidArgument(`cannot convert a ${desc.mediaType} (${desc.digest}): not an index or a manifest`);
  }

  private async index(desc: Descriptor): Promise<Descriptor> {
    const index = await this.readJson(desc);
    const manifests = Array.isArray(index.manifests) ? (index.manifests as Descriptor[]) : [];
    const out: Descriptor[] = [];
    for (const m of manifests) {
      if (this.matcher && m.platform && !this.matcher(m.platform)) continue;
      out.push(isIndexType(m.mediaType) || isManifestType(m.mediaType) ? await this.convert(m) : m);
    }
    if (out.length === 0) throw invalidArgument(`image index ${desc.digest} has no manifest for the requested platforms`);
    const mediaType = this.mediaType(desc.mediaType);
    const next: Json = { ...index, manifests: out };
    if (typeof index.mediaType === 'string') next.mediaType = mediaType;
    return this.writeJson(next, desc, mediaType, gcRefLabels(desc, out));
  }

  private async manifest(desc: Descriptor): Promise<Descriptor> {
    const manifest = await this.readJson(desc);
    const layers = (Array.isArray(manifest.layers) ? manifest.layers : []) as Descriptor[];
    const configDesc = manifest.config as Descriptor | undefined;
    if (!configDesc || typeof configDesc.digest !== 'string') throw invalidArgument(`manifest ${desc.digest} has no config`);
    const config = await this.readJson(configDesc);
    const rootfs = config.rootfs as { diff_ids?: string[] } | undefined;
    const diffIDs = Array.isArray(rootfs?.diff_ids) ? [...rootfs.diff_ids] : [];
    // One layer at a time: each compresses two members at once on libuv's threads (its pool of 4 also serves
    // every file operation of the daemon); containerd's converter runs all layers at once.
    const results = await mapLimit(layers, 1, (l) => (isLayerType(l.mediaType) ? this.layer(l) : Promise.resolve(undefined)));
    const newLayers: Descriptor[] = [];
    let li = 0;
    for (const [i, l] of layers.entries()) {
      const r = results[i];
      if (!r) {
        newLayers.push(l);
        continue;
      }
      newLayers.push(r.desc);
      if (li < diffIDs.length) diffIDs[li] = r.diffID;
      li++;
    }
    const newConfig: Json = { ...config, rootfs: { ...(rootfs ?? { type: 'layers' }), diff_ids: diffIDs } };
    const configOut = await this.writeJson(newConfig, configDesc, this.mediaType(configDesc.mediaType), {});
    const mediaType = this.mediaType(desc.mediaType);
    const next: Json = { ...manifest, config: configOut, layers: newLayers };
    if (typeof manifest.mediaType === 'string') next.mediaType = mediaType;
    return this.writeJson(next, desc, mediaType, gcRefLabels(desc, [configOut, ...newLayers]));
  }

  private layer(l: Descriptor): Promise<{ desc: Descriptor; diffID: string }> {
    let p = this.layerWork.get(l.digest);
    if (!p) {
      p = this.convertLayer(l);
      this.layerWork.set(l.digest, p);
    }
    return p.then((r) => ({ ...r, desc: { ...r.desc, ...(l.platform ? { platform: l.platform } : {}) } }));
  }

  private async convertLayer(l: Descriptor): Promise<{ desc: Descriptor; diffID: string }> {
    this.opts.onProgress?.({ ref: l.digest, kind: 'layer', status: 'converting', total: l.size });
    const compression = mayBeMislabelled(l.mediaType) ? 'detect' : compressionOf(l.mediaType);
    const open = async () => decompressStream((await this.content.read(l.digest)) as Readable, compression) as AsyncIterable<Buffer>;
    const prioritized = this.opts.prioritizedFiles ?? [];
    const ref = `convert-estargz-${randomBytes(6).toString('hex')}-from-${l.digest}`;
    const w = await this.content.writer({ ref });
    let result: EstargzResult;
    try {
      const sink = (b: Buffer) => w.write(b);
      result = prioritized.length > 0
        ? await tarToEstargzPrioritized(open, prioritized, sink, this.opts)
        : await tarToEstargz(await open(), sink, this.opts);
      try {
        await w.commit(result.blobSize, result.blobDigest, { labels: { [LABEL_UNCOMPRESSED]: result.diffID } });
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
        // The same blob is already stored (converted before, or pulled): it gets the label all the same.
        await this.content.update({ digest: result.blobDigest, labels: { [LABEL_UNCOMPRESSED]: result.diffID } }, [`labels.${LABEL_UNCOMPRESSED}`]);
      }
    } catch (err) {
      await w.close().catch(() => undefined);
      await this.content.abort(ref).catch(() => undefined);
      throw err;
    }
    await w.close().catch(() => undefined);
    const { urls: _urls, ...rest } = l; // the new blob is not at a foreign layer's URLs
    const desc: Descriptor = {
      ...rest,
      mediaType: gzipLayerType(l.mediaType, this.opts.oci ?? false),
      digest: result.blobDigest,
      size: result.blobSize,
      annotations: {
        ...(l.annotations ?? {}),
        [ANNOTATION_TOC_DIGEST]: result.tocDigest,
        [ANNOTATION_UNCOMPRESSED_SIZE]: String(result.uncompressedSize),
      },
    };
    this.converted.set(l.digest, desc);
    this.opts.onProgress?.({ ref: l.digest, kind: 'layer', status: 'converted', detail: result.blobDigest, total: result.blobSize });
    return { desc, diffID: result.diffID };
  }
}

/**
 * Converts image `src` to eStargz as image `dst` (created, or replaced when it exists; `dst` may equal `src`).
 * The caller holds a lease over the content written.
 */
export async function convertImage(
  content: ContentStore,
  images: ImageStore,
  src: string,
  dst: string,
  opts: ConvertOptions = {},
): Promise<ConvertResult> {
  if (!dst) throw invalidArgument('convert: the destination image name must be set');
  const image = await images.get(src);
  let matcher: PlatformMatcher | undefined;
  if (!opts.allPlatforms) {
    // nerdctl: platforms.Ordered(--platform...), else DefaultStrict (the host's platform alone).
    matcher = platformMatcherOrdered(opts.platforms && opts.platforms.length > 0 ? opts.platforms : [defaultPlatform()]);
  }
  const c = new Converter(content, matcher, opts);
  const target = await c.convert(image.target);
  const record = { name: dst, target, labels: image.labels ?? {} };
  if (dst === src) {
    await images.update(record, ['target']);
  } else {
    try {
      await images.delete(dst);
    } catch {
      // not there
    }
    await images.create(record);
  }
  return { target, layers: c.converted };
}
