/**
 * OCI / Docker schema 2 documents: typed parsing of manifests, indexes and image configs, media type
 * predicates, the children of a blob, chain IDs, containerd's gc.ref labels for a parent blob, the one
 * selection of an index's manifests for a platform (matchingManifests: every caller, from pull to export, uses
 * it), and manifest resolution for a platform (containerd's images.Manifest).
 *
 * Parsing is strict about shape (every descriptor needs a string mediaType, a valid digest and a
 * non-negative integer size; a manifest needs a config; an index needs manifests) and rejects documents whose
 * content contradicts the expected media type (a manifest with `manifests`, an index with `config`/`layers`,
 * schema 1 `fsLayers`), as containerd's validateMediaType does. Every failure is 'invalid argument'.
 */
import { createHash } from 'node:crypto';
import type { BlobReader } from './blob.js';
import { isValidDigest } from '../content/digest.js';
import { invalidArgument, notFound } from '../core/errdefs.js';
import { allPlatforms, formatPlatform, normalizePlatform, platformMatcher, type PlatformMatcher } from './platforms.js';
import { MediaTypeDockerConfig, MediaTypeDockerManifest, MediaTypeDockerManifestList, MediaTypeOCIConfig, MediaTypeOCIIndex, MediaTypeOCIManifest } from './types.js';
import { LABEL_GC_REF_CONTENT } from '../core/labels.js';
import { type Descriptor, type Platform } from '../core/descriptor.js';

/** An OCI image manifest (also Docker schema 2, which has the same shape). */
export interface Manifest {
  schemaVersion: number;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

/** An OCI image index (also a Docker manifest list). */
export interface Index {
  schemaVersion: number;
  mediaType?: string;
  artifactType?: string;
  manifests: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

/** The runtime part of an image config (OCI `config` / Docker `config`). */
export interface ImageRuntimeConfig {
  User?: string;
  ExposedPorts?: Record<string, object>;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Volumes?: Record<string, object>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  [key: string]: unknown;
}

export interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

/** An OCI image config (Docker's config is a superset; extra fields are kept as they are). */
export interface ImageConfig {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
  created?: string;
  author?: string;
  config?: ImageRuntimeConfig;
  rootfs: { type: string; diff_ids: string[] };
  history?: HistoryEntry[];
  [key: string]: unknown;
}

// ---------------------------------------------------------------- media types

export function isManifestType(mediaType: string): boolean {
  return mediaType === MediaTypeOCIManifest || mediaType === MediaTypeDockerManifest;
}

export function isIndexType(mediaType: string): boolean {
  return mediaType === MediaTypeOCIIndex || mediaType === MediaTypeDockerManifestList;
}

/** The OCI and Docker image config types. */
export function isConfigType(mediaType: string): boolean {
  return mediaType === MediaTypeOCIConfig || mediaType === MediaTypeDockerConfig;
}

const MediaTypeContainerd1Checkpoint = 'application/vnd.containerd.container.criu.checkpoint.criu.tar';
const MediaTypeContainerd1CheckpointConfig = 'application/vnd.containerd.container.checkpoint.config.v1+proto';

/** containerd's IsKnownConfig: image configs and checkpoint configs. */
export function isKnownConfig(mediaType: string): boolean {
  return (
    isConfigType(mediaType) ||
    mediaType === MediaTypeContainerd1Checkpoint ||
    mediaType === MediaTypeContainerd1CheckpointConfig
  );
}

const dockerLayerBases = new Set([
  'application/vnd.docker.image.rootfs.diff.tar',
  'application/vnd.docker.image.rootfs.diff.tar.gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
]);

/** containerd's IsLayerType: any OCI layer type (with any +suffix) and Docker's rootfs types. */
export function isLayerType(mediaType: string): boolean {
  if (mediaType.startsWith('application/vnd.oci.image.layer.')) return true;
  return dockerLayerBases.has(mediaType.split('+')[0]!);
}

// ---------------------------------------------------------------- parsing

type Json = Record<string, unknown>;

function parseJson(bytes: Uint8Array | string, what: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(typeof bytes === 'string' ? bytes : Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw invalidArgument(`invalid ${what}: ${(err as Error).message}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw invalidArgument(`invalid ${what}: not a JSON object`);
  return v as Json;
}

function isStringMap(v: unknown): v is Record<string, string> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every((s) => typeof s === 'string');
}

function checkPlatform(v: unknown, where: string): Platform {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw invalidArgument(`${where}: platform is not an object`);
  const p = v as Json;
  if (typeof p['architecture'] !== 'string' || typeof p['os'] !== 'string') {
    throw invalidArgument(`${where}: platform needs string architecture and os`);
  }
  for (const k of ['variant', 'os.version'] as const) {
    if (p[k] !== undefined && typeof p[k] !== 'string') throw invalidArgument(`${where}: platform ${k} is not a string`);
  }
  if (p['os.features'] !== undefined && !(Array.isArray(p['os.features']) && p['os.features'].every((s) => typeof s === 'string'))) {
    throw invalidArgument(`${where}: platform os.features is not a list of strings`);
  }
  return p as unknown as Platform;
}

/**
 * Checks that `v` is a descriptor (string mediaType, valid digest, non-negative integer size, optional
 * string urls, string annotations, platform) and returns it typed. `where` prefixes error messages.
 */
export function checkDescriptor(v: unknown, where: string): Descriptor {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw invalidArgument(`${where}: descriptor is not an object`);
  const d = v as Json;
  if (typeof d['mediaType'] !== 'string' || d['mediaType'] === '') throw invalidArgument(`${where}: descriptor without mediaType`);
  if (typeof d['digest'] !== 'string' || !isValidDigest(d['digest'])) {
    throw invalidArgument(`${where}: invalid descriptor digest ${JSON.stringify(d['digest'])}`);
  }
  if (typeof d['size'] !== 'number' || !Number.isSafeInteger(d['size']) || d['size'] < 0) {
    throw invalidArgument(`${where}: invalid descriptor size ${JSON.stringify(d['size'])}`);
  }
  if (d['urls'] !== undefined && !(Array.isArray(d['urls']) && d['urls'].every((u) => typeof u === 'string'))) {
    throw invalidArgument(`${where}: descriptor urls is not a list of strings`);
  }
  if (d['annotations'] !== undefined && d['annotations'] !== null && !isStringMap(d['annotations'])) {
    throw invalidArgument(`${where}: descriptor annotations is not a map of strings`);
  }
  if (d['platform'] !== undefined && d['platform'] !== null) checkPlatform(d['platform'], where);
  return d as unknown as Descriptor;
}

function checkCommon(doc: Json, what: string): void {
  if (doc['schemaVersion'] !== undefined && doc['schemaVersion'] !== 2) {
    throw invalidArgument(`${what}: unsupported schemaVersion ${JSON.stringify(doc['schemaVersion'])}`);
  }
  if (doc['fsLayers'] !== undefined) throw invalidArgument(`${what}: media-type: schema 1 not supported`);
  if (doc['mediaType'] !== undefined && typeof doc['mediaType'] !== 'string') throw invalidArgument(`${what}: mediaType is not a string`);
  if (doc['annotations'] !== undefined && doc['annotations'] !== null && !isStringMap(doc['annotations'])) {
    throw invalidArgument(`${what}: annotations is not a map of strings`);
  }
}

/**
 * Parses an OCI / Docker schema 2 image manifest.
 * @throws invalid argument: not JSON, wrong shape, an index, or schema 1.
 */
export function parseManifest(bytes: Uint8Array | string): Manifest {
  const doc = parseJson(bytes, 'manifest');
  checkCommon(doc, 'manifest');
  const mt = doc['mediaType'];
  if (doc['manifests'] !== undefined || (typeof mt === 'string' && isIndexType(mt))) {
    throw invalidArgument('manifest: media-type: expected manifest but found index');
  }
  if (doc['config'] === undefined) throw invalidArgument('manifest: missing config');
  checkDescriptor(doc['config'], 'manifest config');
  const layers = doc['layers'] ?? [];
  if (!Array.isArray(layers)) throw invalidArgument('manifest: layers is not a list');
  layers.forEach((l, i) => checkDescriptor(l, `manifest layer ${i}`));
  if (doc['subject'] !== undefined && doc['subject'] !== null) checkDescriptor(doc['subject'], 'manifest subject');
  return { ...doc, schemaVersion: (doc['schemaVersion'] as number | undefined) ?? 2, layers } as unknown as Manifest;
}

/**
 * Parses an OCI image index or Docker manifest list.
 * @throws invalid argument: not JSON, wrong shape, a manifest, or schema 1.
 */
export function parseIndex(bytes: Uint8Array | string): Index {
  const doc = parseJson(bytes, 'index');
  checkCommon(doc, 'index');
  const mt = doc['mediaType'];
  if (doc['config'] !== undefined || doc['layers'] !== undefined || (typeof mt === 'string' && isManifestType(mt))) {
    throw invalidArgument('index: media-type: expected index but found manifest');
  }
  const manifests = doc['manifests'];
  if (!Array.isArray(manifests)) throw invalidArgument('index: manifests is not a list');
  manifests.forEach((m, i) => checkDescriptor(m, `index manifest ${i}`));
  if (doc['subject'] !== undefined && doc['subject'] !== null) checkDescriptor(doc['subject'], 'index subject');
  return { ...doc, schemaVersion: (doc['schemaVersion'] as number | undefined) ?? 2 } as unknown as Index;
}

/**
 * Parses an image config: an object with string architecture and os and rootfs.diff_ids, a list of valid
 * digests. Unknown fields are kept.
 * @throws invalid argument otherwise.
 */
export function parseConfig(bytes: Uint8Array | string): ImageConfig {
  const doc = parseJson(bytes, 'image config');
  if (typeof doc['architecture'] !== 'string' || typeof doc['os'] !== 'string') {
    throw invalidArgument('image config: architecture and os must be strings');
  }
  const rootfs = doc['rootfs'];
  if (rootfs === null || typeof rootfs !== 'object' || Array.isArray(rootfs)) throw invalidArgument('image config: missing rootfs');
  const diffIDs = (rootfs as Json)['diff_ids'] ?? [];
  if (!Array.isArray(diffIDs) || !diffIDs.every((d) => typeof d === 'string' && isValidDigest(d))) {
    throw invalidArgument('image config: rootfs.diff_ids must be a list of digests');
  }
  if (doc['variant'] !== undefined && typeof doc['variant'] !== 'string') throw invalidArgument('image config: variant is not a string');
  if (doc['history'] !== undefined && doc['history'] !== null && !Array.isArray(doc['history'])) {
    throw invalidArgument('image config: history is not a list');
  }
  return { ...doc, rootfs: { ...(rootfs as Json), type: String((rootfs as Json)['type'] ?? 'layers'), diff_ids: diffIDs } } as ImageConfig;
}

// ---------------------------------------------------------------- structure

/**
 * The immediate children of a blob (containerd's images.Children): an index's manifests; a manifest's
 * config then layers; nothing for anything else (layers, configs, unknown types).
 * @throws invalid argument when the bytes do not parse as the descriptor's media type says.
 */
export function children(desc: Pick<Descriptor, 'mediaType'>, bytes: Uint8Array | string): Descriptor[] {
  if (isManifestType(desc.mediaType)) {
    const m = parseManifest(bytes);
    return [m.config, ...m.layers];
  }
  if (isIndexType(desc.mediaType)) return [...parseIndex(bytes).manifests];
  return [];
}

/**
 * The OCI chain IDs of a stack of layers: chain[0] = diffIDs[0], chain[i] = sha256(chain[i-1] + " " +
 * diffIDs[i]) — the snapshot keys of unpacked layers.
 */
export function chainIDs(diffIDs: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIDs) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? d : `sha256:${createHash('sha256').update(`${prev} ${d}`).digest('hex')}`);
  }
  return out;
}

/** The chain ID of the whole stack (the last of chainIDs), or undefined for no layers. */
export function chainID(diffIDs: readonly string[]): string | undefined {
  return chainIDs(diffIDs).at(-1);
}

/**
 * containerd's ChildGCLabels: the label key prefix by which a parent references a child: configs
 * "containerd.io/gc.ref.content.config", manifests "containerd.io/gc.ref.content.m.", layers
 * "containerd.io/gc.ref.content.l.", anything else (e.g. a nested index) "containerd.io/gc.ref.content.".
 */
export function childGCLabel(child: Pick<Descriptor, 'mediaType'>): string {
  const mt = child.mediaType;
  if (isKnownConfig(mt)) return `${LABEL_GC_REF_CONTENT}.config`;
  if (isManifestType(mt)) return `${LABEL_GC_REF_CONTENT}.m.`;
  if (isLayerType(mt)) return `${LABEL_GC_REF_CONTENT}.l.`;
  return `${LABEL_GC_REF_CONTENT}.`;
}

/**
 * The labels containerd's SetChildrenMappedLabels puts on a parent blob for its children: one label per
 * child, value = child digest, key = childGCLabel(child) with a per-key counter appended when the key ends
 * in '.' (always) or for the second and later use of a key (e.g. `...config`, then `...config1`). So an
 * index gets `gc.ref.content.m.0`, `.m.1`, ...; a manifest `gc.ref.content.config`, `.l.0`, `.l.1`, ...
 * `desc` is the parent (unused by the key scheme; kept for symmetry with containerd's handler).
 */
export function gcRefLabels(_desc: Pick<Descriptor, 'mediaType'> | undefined, kids: readonly Pick<Descriptor, 'mediaType' | 'digest'>[]): Record<string, string> {
  const labels: Record<string, string> = {};
  const counters = new Map<string, number>();
  for (const ch of kids) {
    let key = childGCLabel(ch);
    const idx = counters.get(key) ?? 0;
    counters.set(key, idx + 1);
    if (idx > 0 || key.endsWith('.')) key = `${key}${idx}`;
    labels[key] = ch.digest;
  }
  return labels;
}

// ---------------------------------------------------------------- resolution

/**
 * The one manifest selection: the entries of an index that `matcher` accepts, best first, as containerd's
 * FilterPlatforms then LimitManifests order them. Entries without a platform are kept (resolveManifest checks
 * their config) and sort after every entry with one; the others by `matcher.compare`, ties in index order.
 * The comparator is a total order (a platform-less entry is never "equal" to a platformed one), so the
 * stable sort gives containerd's sort.SliceStable result.
 */
export function matchingManifests(manifests: readonly Descriptor[], matcher: PlatformMatcher): Descriptor[] {
  return manifests
    .filter((d) => !d.platform || matcher(d.platform))
    .sort((a, b) => {
      if (!a.platform) return b.platform ? 1 : 0;
      if (!b.platform) return -1;
      return matcher.compare(a.platform, b.platform);
    });
}

/**
 * The manifests of an index to fetch for `platforms`: the best match (matchingManifests) for each, each once,
 * in platform order; every entry when `all`.
 * @throws not found "no match for platform in manifest: <platforms>" when none matches.
 */
export function selectManifests(index: Descriptor[], platforms: Platform[], all: boolean): Descriptor[] {
  if (all) return index;
  const chosen: Descriptor[] = [];
  for (const p of platforms) {
    const best = matchingManifests(index, platformMatcher(p))[0];
    if (best && !chosen.includes(best)) chosen.push(best);
  }
  if (chosen.length === 0) {
    throw notFound(`no match for platform in manifest: ${platforms.map(formatPlatform).join(', ')}`);
  }
  return chosen;
}

/**
 * containerd's images.Manifest: the manifest of `root` for the platforms `matcher` accepts. An index is walked
 * (nested indexes too): entries whose platform does not match are skipped, entries without a platform are
 * kept and checked against their config's os/architecture; among matches the best by `matcher.compare` wins
 * (stable: index order for ties). With a manifest as root, it is returned whatever its platform.
 * @throws not found "no match for platform in manifest <digest>" / "manifest <digest>".
 */
export async function resolveManifest(
  read: BlobReader,
  root: Descriptor,
  matcher: PlatformMatcher = allPlatforms,
): Promise<{ descriptor: Descriptor; manifest: Manifest }> {
  let wasIndex = false;
  const found: { descriptor: Descriptor; manifest: Manifest }[] = [];

  const visit = async (desc: Descriptor): Promise<void> => {
    if (isManifestType(desc.mediaType)) {
      const manifest = parseManifest(await read(desc));
      if (desc.digest !== root.digest && matcher !== allPlatforms) {
        if (desc.platform && !matcher(desc.platform)) return;
        if (!desc.platform) {
          const cfg = parseConfig(await read(manifest.config));
          if (!matcher(normalizePlatform({ os: cfg.os, architecture: cfg.architecture }))) return;
        }
      }
      found.push({ descriptor: desc, manifest });
      return;
    }
    if (isIndexType(desc.mediaType)) {
      let descs = matchingManifests(parseIndex(await read(desc)).manifests, matcher);
      wasIndex = true;
      // containerd keeps only the best candidate of an index when a platform is given.
      if (matcher !== allPlatforms) descs = descs.slice(0, 1);
      for (const d of descs) await visit(d);
      return;
    }
    throw notFound(`unexpected media type ${desc.mediaType} for ${desc.digest}`);
  };

  await visit(root);
  if (found.length === 0) {
    throw notFound(wasIndex ? `no match for platform in manifest ${root.digest}` : `manifest ${root.digest}`);
  }
  return found[0]!;
}
