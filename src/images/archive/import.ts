/**
 * Importing image archives, as containerd 1.6's archive.ImportIndex plus client.Import (what `ctr image
 * import` runs):
 *
 *  - an OCI image layout archive (oci-layout, index.json, blobs/<alg>/<hex>): index.json becomes a blob and
 *    the root of the import;
 *  - a `docker save` archive (manifest.json, <config>.json, <id>/layer.tar, or blobs/sha256/<hex> in newer
 *    docker): a Docker schema 2 manifest is synthesized per manifest.json entry (config and layers in the
 *    archive, layer media type from the layer's compression, platform from the config) and an OCI index
 *    listing them, annotated with each RepoTag normalised (busybox:latest → docker.io/library/busybox:latest).
 *    The bytes match what containerd writes, so the same archive gets the same digests in both.
 *
 * The tar is read once, streaming: every regular file that may be a blob is written to the content store as
 * it arrives (a layer is never held in memory), since manifest.json comes after the layers in `docker save`
 * output and index.json after the blobs in `ctr image export` output. Files named blobs/<alg>/<hex> are
 * written with that digest expected: bytes that do not match are refused (failed precondition) and nothing
 * is committed under the wrong digest; a blob the namespace already has is skipped. Other files are committed
 * under the digest computed while writing. Entry names that climb out (`../x`) or are absolute are refused
 * (invalid argument). Docker's legacy per-layer metadata (`<id>/json`, `<id>/VERSION`, `repositories`) is
 * skipped.
 *
 * Then, from the root index: the gc.ref labels containerd puts on parents are set on every index and
 * manifest walked (only children of the selected platforms are walked and labelled: containerd's
 * FilterPlatforms + SetChildrenLabels), and image names are collected from the root index entries:
 * `io.containerd.image.name`, else `org.opencontainers.image.ref.name` translated as ctr does (a bare name
 * without '/', ':' or '@' becomes "<prefix>:<name>", prefix = baseName or "import-<YYYY-MM-DD>"; with a
 * baseName, names outside it are skipped). Each image's target is the index entry (annotations included).
 *
 * Decision: when `opts.images` is given, image records are created, or updated on their target if the name
 * exists (containerd's Update(..., "target") then Create); without it only the names and targets are
 * returned. Platform selection: `allPlatforms` → all; `platform` → exactly that one (ctr's --platform uses
 * OnlyStrict); default → the host platform and what it runs (platforms.Default()). The caller should hold a
 * lease (the content written is not referenced by an image until the records exist).
 */
import type { Readable } from 'node:stream';
import { posix } from 'node:path';
import { createGzip } from 'node:zlib';
import { isValidDigest } from '../../content/digest.js';
import type { ContentStore, ContentWriter } from '../../content/types.js';
import { invalidArgument, isAlreadyExists, isNotFound, notFound, StrataError } from '../../core/errdefs.js';
import { detectCompression } from '../../diff/decompress.js';
import { children, gcRefLabels, isIndexType, isManifestType, parseConfig, parseIndex } from '../manifest.js';
import {
  allPlatforms as matchAll,
  defaultPlatform,
  normalizePlatform,
  platformMatcher,
  platformMatcherStrict,
  type PlatformMatcher,
} from '../platforms.js';
import { normalizeReference } from '../../remotes/reference.js';
import { ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, MediaTypeDockerConfig, MediaTypeDockerManifest, MediaTypeOCIIndex } from '../types.js';
import { LABEL_UNCOMPRESSED } from '../../core/labels.js';
import { type ImageStore } from '../../metadata/images.js';
import { type Descriptor, type Platform } from '../../core/descriptor.js';
import { MAX_DOCUMENT_SIZE, readBlob } from '../blob.js';
import {
  cleanEntryName,
  descriptorJson,
  drainEntry,
  entryRef,
  forEachTarEntry,
  ociReferenceName,
  readEntry,
  writeBlobBytes,
  type EntryData,
} from './common.js';

const MediaTypeDockerLayer = 'application/vnd.docker.image.rootfs.diff.tar';
const MediaTypeDockerLayerGzip = 'application/vnd.docker.image.rootfs.diff.tar.gzip';
const MediaTypeOCILayerZstd = 'application/vnd.oci.image.layer.v1.tar+zstd';
const OCI_LAYOUT_VERSION = '1.0.0';

export interface ImportOptions {
  /** Create or update image records here; without it, only names and targets are returned. */
  images?: ImageStore;
  /** Also keep the archive's root index as an image of this name (ctr import --index-name). */
  indexName?: string;
  /**
   * ctr import --base-name: bare ref names become "<baseName>:<name>" and names outside baseName are
   * skipped. Without it bare names get the prefix "import-<YYYY-MM-DD>" and nothing is skipped.
   */
  baseName?: string;
  /** ctr import --digests: also name each root manifest "<prefix>@<digest>". */
  digests?: boolean;
  /** Every platform's content is walked and labelled (default: the host's, or `platform`). */
  allPlatforms?: boolean;
  /** Only this platform (strict match, as ctr import --platform). */
  platform?: Platform;
  /** Docker archives: gzip uncompressed layers, labelled containerd.io/uncompressed (ctr --compress-blobs). */
  compressBlobs?: boolean;
}

export interface ImportedImage {
  name: string;
  target: Descriptor;
}

export interface ImportResult {
  images: ImportedImage[];
  /** The root index of the archive (index.json, or the synthesized index of a docker archive). */
  index: Descriptor;
}

type BlobRef = { digest: string; size: number };

interface DockerManifestEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

/** The blob name's digest for "blobs/<alg>/<hex>", undefined for other names; invalid digests are refused. */
function blobNameDigest(name: string): string | undefined {
  const parts = name.split('/');
  if (parts.length !== 3 || parts[0] !== 'blobs') return undefined;
  const digest = `${parts[1]}:${parts[2]}`;
  if (!isValidDigest(digest)) throw invalidArgument(`archive entry ${JSON.stringify(name)} is not named by a valid digest`);
  return digest;
}

/** Docker's legacy metadata that no manifest references. */
function isDockerLegacyMetadata(name: string): boolean {
  return name === 'repositories' || /^[^/]+\/(json|VERSION)$/.test(name);
}

async function ingestEntry(content: ContentStore, name: string, size: number, data: EntryData, expected?: string): Promise<BlobRef> {
  const ref = entryRef(name);
  let w: ContentWriter;
  try {
    w = await content.writer({ ref, total: size, ...(expected ? { expected } : {}) });
  } catch (err) {
    if (expected && isAlreadyExists(err)) {
      // The namespace has it: skip the bytes.
      await drainEntry(data);
      return { digest: expected, size };
    }
    throw err;
  }
  let committed = false;
  try {
    if (w.offset === size && expected) {
      // Adopted from another namespace: nothing to send.
      await drainEntry(data);
    } else {
      if (w.offset > 0) await w.truncate(0);
      for await (const chunk of data) await w.write(chunk);
    }
    if (w.offset !== size) throw invalidArgument(`archive entry ${JSON.stringify(name)}: ${w.offset} bytes read, header says ${size}`);
    const digest = expected ?? w.digest();
    try {
      await w.commit(size, digest);
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
    }
    committed = true;
    return { digest, size };
  } catch (err) {
    // e.g. failed precondition: the bytes do not match the digest the entry is named by.
    if (err instanceof StrataError && !err.detail.startsWith('archive entry')) throw err.wrap(`archive entry ${JSON.stringify(name)}`);
    throw err;
  } finally {
    await w.close().catch(() => undefined);
    if (!committed) await content.abort(ref).catch(() => undefined);
  }
}

/** Layer media type from the blob's first bytes (containerd's detectLayerMediaType, plus zstd). */
async function detectLayerMediaType(content: ContentStore, d: BlobRef): Promise<string> {
  if (d.size === 0) return MediaTypeDockerLayer;
  const stream = await content.read(d.digest, { offset: 0, size: Math.min(10, d.size) });
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  switch (detectCompression(Buffer.concat(chunks))) {
    case 'gzip':
      return MediaTypeDockerLayerGzip;
    case 'zstd':
      // containerd 1.6 labels any compressed layer as Docker gzip; a zstd one gets the OCI zstd type here so
      // that the differ decompresses it correctly.
      return MediaTypeOCILayerZstd;
    default:
      return MediaTypeDockerLayer;
  }
}

/** Gzips a blob into the content store, labelled with its uncompressed digest (containerd's compressBlob). */
async function compressBlob(content: ContentStore, d: BlobRef): Promise<BlobRef> {
  const ref = `compress-blob-${d.digest.replace(':', '-')}`;
  const w = await content.writer({ ref });
  let committed = false;
  try {
    if (w.offset > 0) await w.truncate(0);
    const gz = createGzip();
    const src = await content.read(d.digest);
    const feeding = (async () => {
      try {
        for await (const c of src) if (!gz.write(c)) await new Promise((r) => gz.once('drain', r));
        gz.end();
      } catch (err) {
        gz.destroy(err as Error);
      }
    })();
    for await (const c of gz) await w.write(c as Buffer);
    await feeding;
    const digest = w.digest();
    const size = w.offset;
    try {
      await w.commit(size, digest, { labels: { [LABEL_UNCOMPRESSED]: d.digest } });
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
    }
    committed = true;
    return { digest, size };
  } finally {
    await w.close().catch(() => undefined);
    if (!committed) await content.abort(ref).catch(() => undefined);
  }
}

async function resolveDockerLayers(content: ContentStore, files: string[], blobs: Map<string, BlobRef>, compress: boolean): Promise<Descriptor[]> {
  const layers: Descriptor[] = [];
  for (const f of files) {
    const b = blobs.get(cleanEntryName(f));
    if (!b) throw notFound(`layer ${JSON.stringify(f)} not found`);
    layers.push({ mediaType: '', digest: b.digest, size: b.size });
  }
  // A compressed version written by an earlier import (containerd.io/uncompressed=<digest>) is used instead.
  if (layers.length > 0) {
    const filters = layers.map((l) => `labels."${LABEL_UNCOMPRESSED}"==${l.digest}`);
    const infos = await content.list(filters);
    for (const info of infos) {
      const unc = info.labels[LABEL_UNCOMPRESSED];
      for (const l of layers) {
        if (l.digest === unc && l.mediaType === '') {
          l.digest = info.digest;
          l.size = info.size;
          l.mediaType = await detectLayerMediaType(content, l);
        }
      }
    }
  }
  for (const l of layers) {
    if (l.mediaType !== '') continue;
    const mt = await detectLayerMediaType(content, l);
    if (mt === MediaTypeDockerLayer && compress) {
      const c = await compressBlob(content, l);
      l.digest = c.digest;
      l.size = c.size;
      l.mediaType = MediaTypeDockerLayerGzip;
    } else {
      l.mediaType = mt;
    }
  }
  return layers;
}

async function writeJsonBlob(content: ContentStore, value: unknown, mediaType: string): Promise<Descriptor> {
  const bytes = Buffer.from(JSON.stringify(value));
  const digest = await writeBlobBytes(content, bytes);
  return { mediaType, digest, size: bytes.length };
}

/** containerd's ImportIndex for a docker archive: one schema 2 manifest per entry, an OCI index over them. */
async function synthesizeDockerIndex(
  content: ContentStore,
  mfsts: DockerManifestEntry[],
  blobs: Map<string, BlobRef>,
  symlinks: Map<string, string>,
  compress: boolean,
): Promise<Descriptor> {
  for (const [name, target] of symlinks) {
    const d = blobs.get(target);
    if (!d) throw notFound(`no target for symlink layer from ${JSON.stringify(name)} to ${JSON.stringify(target)}`);
    blobs.set(name, d);
  }
  const manifests: Descriptor[] = [];
  for (const m of mfsts) {
    if (typeof m?.Config !== 'string' || !Array.isArray(m.Layers) || !m.Layers.every((l) => typeof l === 'string')) {
      throw invalidArgument('manifest.json: entries need a Config and a list of Layers');
    }
    const cfg = blobs.get(cleanEntryName(m.Config));
    if (!cfg) throw notFound(`image config ${JSON.stringify(m.Config)} not found`);
    const config: Descriptor = { mediaType: MediaTypeDockerConfig, digest: cfg.digest, size: cfg.size };
    const layers = await resolveDockerLayers(content, m.Layers, blobs, compress);
    const manifest = {
      schemaVersion: 2,
      mediaType: MediaTypeDockerManifest,
      config: descriptorJson(config),
      layers: layers.map(descriptorJson),
    };
    const desc = await writeJsonBlob(content, manifest, MediaTypeDockerManifest);
    const cfgJson = parseConfig(await readBlob(content, config));
    desc.platform = normalizePlatform({ os: cfgJson.os, architecture: cfgJson.architecture });
    delete desc.platform['os.version'];
    const tags = m.RepoTags ?? [];
    if (tags.length === 0) {
      manifests.push(desc);
    } else {
      for (const ref of tags) {
        let normalized: string;
        try {
          normalized = normalizeReference(ref);
        } catch (err) {
          throw invalidArgument(`normalize image ref ${JSON.stringify(ref)}: ${(err as Error).message}`);
        }
        manifests.push({
          ...desc,
          annotations: { [ANNOTATION_IMAGE_NAME]: normalized, [ANNOTATION_REF_NAME]: ociReferenceName(normalized) },
        });
      }
    }
  }
  // Go's ocispec.Index: schemaVersion, (mediaType omitted when empty), manifests.
  return writeJsonBlob(content, { schemaVersion: 2, manifests: manifests.map(descriptorJson) }, MediaTypeOCIIndex);
}

/** Reads the archive into the content store and returns its root index. */
export async function importIndex(input: Readable, content: ContentStore, opts: { compressBlobs?: boolean } = {}): Promise<Descriptor> {
  let ociLayout: { imageLayoutVersion?: unknown } | undefined;
  let mfsts: DockerManifestEntry[] | undefined;
  const blobs = new Map<string, BlobRef>();
  const symlinks = new Map<string, string>();

  await forEachTarEntry(input, async (header, data) => {
    const name = cleanEntryName(header.name);
    if (header.type === 'symlink') {
      const target = cleanEntryName(posix.join(posix.dirname(name), header.linkname ?? ''));
      symlinks.set(name, target);
    }
    if (header.type !== 'file' && header.type !== 'contiguous-file') {
      await drainEntry(data);
      return;
    }
    if (name === 'oci-layout') {
      ociLayout = parseJsonEntry(await readEntry(data, MAX_DOCUMENT_SIZE, name), name) as { imageLayoutVersion?: unknown };
    } else if (name === 'manifest.json') {
      const v = parseJsonEntry(await readEntry(data, MAX_DOCUMENT_SIZE, name), name);
      if (!Array.isArray(v)) throw invalidArgument('manifest.json: not a list');
      mfsts = v as DockerManifestEntry[];
    } else if (isDockerLegacyMetadata(name)) {
      await drainEntry(data);
    } else {
      const expected = blobNameDigest(name);
      blobs.set(name, await ingestEntry(content, name, header.size ?? 0, data, expected));
    }
  });

  if (ociLayout) {
    const version = ociLayout.imageLayoutVersion;
    if (version !== undefined && version !== '') {
      if (version !== OCI_LAYOUT_VERSION) throw invalidArgument(`unsupported OCI version ${String(version)}`);
      const idx = blobs.get('index.json');
      if (!idx) throw invalidArgument(`missing index.json in OCI layout ${OCI_LAYOUT_VERSION}`);
      return { mediaType: MediaTypeOCIIndex, digest: idx.digest, size: idx.size };
    }
  }
  if (!mfsts) throw invalidArgument('unrecognized image format');
  return synthesizeDockerIndex(content, mfsts, blobs, symlinks, opts.compressBlobs ?? false);
}

function parseJsonEntry(bytes: Buffer, name: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw invalidArgument(`untar ${name}: ${(err as Error).message}`);
  }
}

function isImagePrefix(s: string, prefix: string): boolean {
  if (!s.startsWith(prefix)) return false;
  return s.length === prefix.length || '/:@'.includes(s[prefix.length]!);
}

/** ctr import's image ref translator (archive.AddRefPrefix / FilterRefPrefix). */
function refTranslator(baseName: string | undefined): (ref: string) => string {
  const prefix = baseName || `import-${new Date().toISOString().slice(0, 10)}`;
  return (ref) => {
    if (/[/:@]/.test(ref)) return baseName && !isImagePrefix(ref, baseName) ? '' : ref;
    return `${prefix}:${ref}`;
  };
}

/** The children of an index or manifest (read from the store); nothing for other types. */
async function childrenOf(content: ContentStore, desc: Descriptor): Promise<Descriptor[]> {
  if (!isIndexType(desc.mediaType) && !isManifestType(desc.mediaType)) return [];
  return children(desc, await readBlob(content, desc));
}

/**
 * Imports an image archive (OCI layout or docker save) from `input` into `content`: see the file header.
 * @throws invalid argument (hostile names, malformed archive or documents), failed precondition (a blob whose
 * bytes do not match its name), not found (a referenced blob missing from the archive).
 */
export async function importArchive(input: Readable, content: ContentStore, opts: ImportOptions = {}): Promise<ImportResult> {
  const index = await importIndex(input, content, { compressBlobs: opts.compressBlobs ?? false });

  const matcher: PlatformMatcher = opts.allPlatforms
    ? matchAll
    : opts.platform
      ? platformMatcherStrict(opts.platform)
      : platformMatcher(defaultPlatform());
  const translate = refTranslator(opts.baseName);
  const prefix = opts.baseName || `import-${new Date().toISOString().slice(0, 10)}`;

  const imgs: ImportedImage[] = [];
  if (opts.indexName) imgs.push({ name: opts.indexName, target: index });

  // Walk from the root (containerd's WalkNotEmpty with FilterPlatforms and SetChildrenLabels).
  let empty = true;
  const walk = async (desc: Descriptor, root: boolean): Promise<void> => {
    let kids: Descriptor[];
    if (root) {
      const idx = parseIndex(await readBlob(content, desc));
      for (const m of idx.manifests) {
        const ann = m.annotations ?? {};
        let name = ann[ANNOTATION_IMAGE_NAME] ?? '';
        if (!name && ann[ANNOTATION_REF_NAME]) name = translate(ann[ANNOTATION_REF_NAME]);
        if (name) imgs.push({ name, target: m });
        if (opts.digests) imgs.push({ name: `${prefix}@${m.digest}`, target: m });
      }
      kids = idx.manifests;
    } else {
      kids = await childrenOf(content, desc);
    }
    kids = kids.filter((d) => !d.platform || matcher(d.platform));
    if (kids.length === 0) return;
    empty = false;
    const labels = gcRefLabels(desc, kids);
    await content.update({ digest: desc.digest, labels }, Object.keys(labels).map((k) => `labels.${k}`));
    for (const k of kids) await walk(k, false);
  };
  await walk(index, true);
  if (empty) throw notFound('image might be filtered out');

  if (opts.images) {
    const store = opts.images;
    for (const img of imgs) {
      try {
        await store.update({ name: img.name, target: img.target }, ['target']);
      } catch (err) {
        if (!isNotFound(err)) throw err;
        await store.create({ name: img.name, target: img.target });
      }
    }
  }
  return { images: imgs, index };
}
