/**
 * Test image builder: OCI image layouts (a directory and a tar archive) from declarative layer specs,
 * deterministic byte for byte (fixed mtimes, uid/gid 0, no user/group names, entries in the given order), so
 * digests are stable across runs (for the busybox preset: for a given /bin/busybox).
 *
 *   const img = await buildImage(dir, {
 *     name: 'docker.io/library/test:1',              // io.containerd.image.name annotation (optional)
 *     platforms: [
 *       { platform: { os: 'linux', architecture: 'amd64' },
 *         layers: [{ entries: [{ path: 'etc/', type: 'dir' }, { path: 'etc/a', content: 'x' }] },
 *                  { compression: 'zstd', entries: [{ path: 'etc/a', type: 'whiteout' }] }],
 *         config: { Cmd: ['sh'] } },
 *       { platform: { os: 'linux', architecture: 'arm64', variant: 'v8' }, layers: [...] },
 *     ],
 *   });
 *   img.target          // the root descriptor an image record points at (manifest, or index if several)
 *   img.manifests[i]    // per platform: descriptor, manifest JSON, config, layers (tar, blob, diffID)
 *   img.layoutDir       // <dir>/<basename>/ : oci-layout, index.json, blobs/sha256/<hex>
 *   img.archivePath     // <dir>/<basename>.tar : the same as a tar (what `ctr image import` reads)
 *
 * Layer entries: { path, type: 'file' (default) | 'dir' | 'symlink' | 'hardlink' | 'whiteout' | 'opaque',
 * content?, mode?, linkname?, uid?, gid? }. 'whiteout' at `a/b` writes `a/.wh.b`; 'opaque' at `a` writes
 * `a/.wh..wh..opq`. Compression: 'gzip' (default), 'zstd' or 'none', with the OCI media type to match
 * (`docker: true` on a platform uses Docker schema 2 media types instead; zstd is not valid there).
 *
 * With one platform, index.json lists the manifest directly (with its platform and the name annotations);
 * with several (or `nestedIndex: true`), an index blob lists the manifests and index.json lists that blob.
 *
 * Also: `busyboxPlatform()` (a one-layer image from the host's /bin/busybox with sh/echo/ls/cat/sleep
 * symlinks), `buildLayer(spec)`, `hostileLayer(kind)` (uncompressed tar buffers that try to escape) and
 * `dockerSaveArchive(dir, ...)` (a `docker save` style archive: manifest.json, <id>.json, <layer>/layer.tar).
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { compress as zstdCompress } from 'zstd-napi';
import { FIXED_MTIME, makeTar, type TarEntry } from './tar.js';

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
}

export type EntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'whiteout' | 'opaque';

export interface LayerEntry {
  path: string;
  type?: EntryType;
  content?: string | Buffer;
  mode?: number;
  linkname?: string;
  uid?: number;
  gid?: number;
}

export type Compression = 'gzip' | 'zstd' | 'none';

export interface LayerSpec {
  entries: LayerEntry[];
  /** A ready-made uncompressed tar used instead of `entries` (hostile layers). */
  tar?: Buffer;
  compression?: Compression;
  /** Overrides the media type derived from the compression. */
  mediaType?: string;
}

export interface PlatformSpec {
  /** Default: the host platform (linux/<GOARCH>). */
  platform?: Platform;
  layers: LayerSpec[];
  /** The config's `config` object (Cmd, Env, Entrypoint, WorkingDir, Labels...). */
  config?: Record<string, unknown>;
  /** Docker schema 2 media types for manifest, config and layers. */
  docker?: boolean;
}

export interface ImageSpec {
  /** io.containerd.image.name annotation on the index.json entry (omitted when undefined). */
  name?: string;
  /** org.opencontainers.image.ref.name annotation (default: the tag of `name`, or none). */
  refName?: string;
  platforms: PlatformSpec[];
  /** Put an index blob at the root even for one platform. */
  nestedIndex?: boolean;
  /** File names: <dir>/<basename>/ and <dir>/<basename>.tar (default 'image'). */
  basename?: string;
}

export interface BuiltLayer {
  descriptor: Descriptor;
  /** The uncompressed tar. */
  tar: Buffer;
  /** The blob as stored (compressed per the spec). */
  blob: Buffer;
  diffID: string;
}

export interface BuiltManifest {
  /** With the platform set, as it appears in the index. */
  descriptor: Descriptor;
  manifest: { schemaVersion: 2; mediaType: string; config: Descriptor; layers: Descriptor[] };
  config: { descriptor: Descriptor; json: Record<string, unknown> };
  layers: BuiltLayer[];
  platform: Platform;
}

export interface BuiltImage {
  layoutDir: string;
  archivePath: string;
  /** The root descriptor (manifest, or the index blob), without annotations or platform. */
  target: Descriptor;
  /** The index blob, when there is one. */
  index?: { descriptor: Descriptor; json: { schemaVersion: 2; mediaType: string; manifests: Descriptor[] } };
  /** The layout's index.json. */
  layoutIndex: { schemaVersion: 2; mediaType: string; manifests: Descriptor[] };
  manifests: BuiltManifest[];
  /** Every blob by digest. */
  blobs: Map<string, Buffer>;
}

export const MEDIA = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export const sha256 = (b: Uint8Array | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export function hostPlatform(): Platform {
  const map: Record<string, Platform> = {
    x64: { os: 'linux', architecture: 'amd64' },
    arm64: { os: 'linux', architecture: 'arm64', variant: 'v8' },
    arm: { os: 'linux', architecture: 'arm', variant: 'v7' },
    ia32: { os: 'linux', architecture: '386' },
    ppc64: { os: 'linux', architecture: 'ppc64le' },
  };
  return map[process.arch] ?? { os: 'linux', architecture: process.arch };
}

function entryHeaders(e: LayerEntry): TarEntry {
  const base = { uid: e.uid ?? 0, gid: e.gid ?? 0 };
  const parent = (p: string) => (p.includes('/') ? p.slice(0, p.lastIndexOf('/') + 1) : '');
  const leaf = (p: string) => p.slice(p.lastIndexOf('/') + 1);
  switch (e.type ?? 'file') {
    case 'file':
      return { ...base, name: e.path, type: 'file', mode: e.mode ?? 0o644, body: e.content ?? '' };
    case 'dir':
      return { ...base, name: e.path.endsWith('/') ? e.path : `${e.path}/`, type: 'directory', mode: e.mode ?? 0o755 };
    case 'symlink':
      return { ...base, name: e.path, type: 'symlink', mode: e.mode ?? 0o777, linkname: e.linkname ?? '' };
    case 'hardlink':
      return { ...base, name: e.path, type: 'link', mode: e.mode ?? 0o644, linkname: e.linkname ?? '' };
    case 'whiteout': {
      const p = e.path.replace(/\/$/, '');
      return { ...base, name: `${parent(p)}.wh.${leaf(p)}`, type: 'file', mode: 0o644 };
    }
    case 'opaque': {
      const p = e.path.replace(/\/$/, '');
      return { ...base, name: `${p ? `${p}/` : ''}.wh..wh..opq`, type: 'file', mode: 0o644 };
    }
  }
}

function layerMediaType(c: Compression, docker: boolean): string {
  if (docker) {
    if (c === 'zstd') throw new Error('Docker schema 2 has no zstd layer type');
    return c === 'gzip' ? MEDIA.dockerLayerGzip : MEDIA.dockerLayer;
  }
  return c === 'gzip' ? MEDIA.ociLayerGzip : c === 'zstd' ? MEDIA.ociLayerZstd : MEDIA.ociLayer;
}

/** Builds one layer: the uncompressed tar, the blob, its descriptor and diffID. */
export async function buildLayer(spec: LayerSpec, docker = false): Promise<BuiltLayer> {
  const tar = spec.tar ?? (await makeTar(spec.entries.map(entryHeaders)));
  const compression = spec.compression ?? 'gzip';
  const blob =
    compression === 'gzip' ? gzipSync(tar, { level: 6 }) : compression === 'zstd' ? Buffer.from(await zstdCompress(tar)) : tar;
  return {
    tar,
    blob,
    diffID: sha256(tar),
    descriptor: { mediaType: spec.mediaType ?? layerMediaType(compression, docker), digest: sha256(blob), size: blob.length },
  };
}

/**
 * An uncompressed layer tar that tries to write outside the directory it is applied to:
 *  - 'traversal': a file named `../strata-escape` (and `a/../../strata-escape2`): cleaned as containerd does,
 *    they land inside;
 *  - 'symlink-escape': a symlink `evil` → `/tmp` (absolute) and `up` → `../../..`, then files written through them;
 *  - 'hardlink-escape': a hard link `passwd` to `../../../../etc/passwd`.
 */
export function hostileLayer(kind: 'traversal' | 'symlink-escape' | 'hardlink-escape'): Promise<Buffer> {
  switch (kind) {
    case 'traversal':
      return makeTar([
        { name: 'ok', type: 'file', mode: 0o644, body: 'fine' },
        { name: '../strata-escape', type: 'file', mode: 0o644, body: 'escaped' },
        { name: 'a/../../strata-escape2', type: 'file', mode: 0o644, body: 'escaped' },
      ]);
    case 'symlink-escape':
      return makeTar([
        { name: 'evil', type: 'symlink', mode: 0o777, linkname: '/tmp' },
        { name: 'evil/strata-escape', type: 'file', mode: 0o644, body: 'escaped' },
        { name: 'up', type: 'symlink', mode: 0o777, linkname: '../../..' },
        { name: 'up/strata-escape', type: 'file', mode: 0o644, body: 'escaped' },
      ]);
    case 'hardlink-escape':
      return makeTar([{ name: 'passwd', type: 'link', mode: 0o644, linkname: '../../../../etc/passwd' }]);
  }
}

function tagOf(name: string | undefined): string | undefined {
  if (!name) return undefined;
  const slash = name.lastIndexOf('/');
  const colon = name.lastIndexOf(':');
  if (name.includes('@')) return undefined;
  return colon > slash ? name.slice(colon + 1) : undefined;
}

async function buildManifest(p: PlatformSpec, put: (b: Buffer, mediaType: string) => Descriptor): Promise<BuiltManifest> {
  const docker = p.docker ?? false;
  const platform = p.platform ?? hostPlatform();
  const layers: BuiltLayer[] = [];
  for (const l of p.layers) {
    const built = await buildLayer(l, docker);
    put(built.blob, built.descriptor.mediaType);
    layers.push(built);
  }
  const created = FIXED_MTIME.toISOString();
  const configJson: Record<string, unknown> = {
    created,
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: p.config ?? { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffID) },
    history: layers.map((_, i) => ({ created, created_by: `strata test layer ${i}` })),
  };
  const config = put(Buffer.from(JSON.stringify(configJson)), docker ? MEDIA.dockerConfig : MEDIA.ociConfig);
  const manifest = {
    schemaVersion: 2 as const,
    mediaType: docker ? MEDIA.dockerManifest : MEDIA.ociManifest,
    config,
    layers: layers.map((l) => l.descriptor),
  };
  const md = put(Buffer.from(JSON.stringify(manifest)), manifest.mediaType);
  return { descriptor: { ...md, platform }, manifest, config: { descriptor: config, json: configJson }, layers, platform };
}

/** Writes an OCI layout (directory and archive) for `spec` under `dir`. */
export async function buildImage(dir: string, spec: ImageSpec): Promise<BuiltImage> {
  if (spec.platforms.length === 0) throw new Error('buildImage: at least one platform');
  const base = spec.basename ?? 'image';
  const layoutDir = join(dir, base);
  const archivePath = join(dir, `${base}.tar`);
  await rm(layoutDir, { recursive: true, force: true });
  await mkdir(join(layoutDir, 'blobs', 'sha256'), { recursive: true });

  const blobs = new Map<string, Buffer>();
  const put = (b: Buffer, mediaType: string): Descriptor => {
    const digest = sha256(b);
    blobs.set(digest, b);
    return { mediaType, digest, size: b.length };
  };

  const manifests: BuiltManifest[] = [];
  for (const p of spec.platforms) manifests.push(await buildManifest(p, put));

  const annotations: Record<string, string> = {};
  if (spec.name) annotations['io.containerd.image.name'] = spec.name;
  const refName = spec.refName ?? tagOf(spec.name);
  if (refName) annotations['org.opencontainers.image.ref.name'] = refName;
  const withAnnotations = (d: Descriptor): Descriptor => (Object.keys(annotations).length ? { ...d, annotations } : d);

  let target: Descriptor;
  let index: BuiltImage['index'];
  let layoutIndex: BuiltImage['layoutIndex'];
  if (manifests.length > 1 || spec.nestedIndex) {
    const allDocker = spec.platforms.every((p) => p.docker);
    const json = {
      schemaVersion: 2 as const,
      mediaType: allDocker ? MEDIA.dockerManifestList : MEDIA.ociIndex,
      manifests: manifests.map((m) => m.descriptor),
    };
    const d = put(Buffer.from(JSON.stringify(json)), json.mediaType);
    index = { descriptor: d, json };
    target = d;
    layoutIndex = { schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [withAnnotations(d)] };
  } else {
    const { platform: _p, ...d } = manifests[0]!.descriptor;
    target = d;
    layoutIndex = { schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [withAnnotations(manifests[0]!.descriptor)] };
  }

  for (const [digest, b] of blobs) await writeFile(join(layoutDir, 'blobs', 'sha256', digest.slice(7)), b);
  const indexJson = Buffer.from(JSON.stringify(layoutIndex));
  const ociLayout = Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(join(layoutDir, 'index.json'), indexJson);
  await writeFile(join(layoutDir, 'oci-layout'), ociLayout);

  const sorted = [...blobs.keys()].sort();
  await writeFile(
    archivePath,
    await makeTar([
      { name: 'oci-layout', type: 'file', mode: 0o644, body: ociLayout },
      { name: 'index.json', type: 'file', mode: 0o644, body: indexJson },
      { name: 'blobs/', type: 'directory', mode: 0o755 },
      { name: 'blobs/sha256/', type: 'directory', mode: 0o755 },
      ...sorted.map((d) => ({ name: `blobs/sha256/${d.slice(7)}`, type: 'file' as const, mode: 0o644, body: blobs.get(d)! })),
    ]),
  );
  return { layoutDir, archivePath, target, ...(index ? { index } : {}), layoutIndex, manifests, blobs };
}

/**
 * The busybox preset: one layer with /bin/busybox (Debian's busybox-static), applet symlinks (sh, echo, ls,
 * cat, sleep → busybox), /etc/passwd, /etc/group and /tmp. Uncompressed by default (its digest is its diffID).
 */
export async function busyboxPlatform(opts: { compression?: Compression; platform?: Platform; docker?: boolean } = {}): Promise<PlatformSpec> {
  const busybox = await readFile('/bin/busybox');
  return {
    ...(opts.platform ? { platform: opts.platform } : {}),
    ...(opts.docker ? { docker: true } : {}),
    config: { Env: ['PATH=/bin'], Cmd: ['sh'], WorkingDir: '/' },
    layers: [
      {
        compression: opts.compression ?? 'none',
        entries: [
          { path: 'bin', type: 'dir' },
          { path: 'bin/busybox', content: busybox, mode: 0o755 },
          ...['sh', 'echo', 'ls', 'cat', 'sleep'].map((a) => ({ path: `bin/${a}`, type: 'symlink' as const, linkname: 'busybox' })),
          { path: 'etc', type: 'dir' },
          { path: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' },
          { path: 'etc/group', content: 'root:x:0:\nnogroup:x:65534:\n' },
          { path: 'tmp', type: 'dir', mode: 0o1777 },
        ],
      },
    ],
  };
}

export interface DockerSaveImage {
  repoTags: string[];
  platform?: Platform;
  layers: LayerEntry[][];
  config?: Record<string, unknown>;
}

export interface BuiltDockerArchive {
  archivePath: string;
  /** Per image: config digest, layer diffIDs (= digests of layer.tar files). */
  images: { configDigest: string; diffIDs: string[]; repoTags: string[]; layerTars: Buffer[] }[];
}

/**
 * A `docker save` archive (legacy layout): `<layerid>/layer.tar` (+ VERSION, json), `<config hex>.json`,
 * `manifest.json` [{Config, RepoTags, Layers}] and `repositories`. `manifestFirst` puts manifest.json at the
 * start of the tar instead of the end (docker writes it last).
 */
export async function dockerSaveArchive(dir: string, images: DockerSaveImage[], opts: { basename?: string; manifestFirst?: boolean } = {}): Promise<BuiltDockerArchive> {
  const entries: TarEntry[] = [];
  const manifest: { Config: string; RepoTags: string[]; Layers: string[] }[] = [];
  const out: BuiltDockerArchive['images'] = [];
  const seen = new Set<string>();
  for (const img of images) {
    const platform = img.platform ?? hostPlatform();
    const layerTars: Buffer[] = [];
    const layerPaths: string[] = [];
    for (const l of img.layers) {
      const tar = await makeTar(l.map(entryHeaders));
      layerTars.push(tar);
      const id = createHash('sha256').update(`layer ${sha256(tar)}`).digest('hex');
      const p = `${id}/layer.tar`;
      layerPaths.push(p);
      if (!seen.has(id)) {
        seen.add(id);
        entries.push({ name: `${id}/`, type: 'directory', mode: 0o755 });
        entries.push({ name: `${id}/VERSION`, type: 'file', mode: 0o644, body: '1.0' });
        entries.push({ name: `${id}/json`, type: 'file', mode: 0o644, body: JSON.stringify({ id }) });
        entries.push({ name: p, type: 'file', mode: 0o644, body: tar });
      }
    }
    const diffIDs = layerTars.map((t) => sha256(t));
    const config = Buffer.from(
      JSON.stringify({
        architecture: platform.architecture,
        os: platform.os,
        ...(platform.variant ? { variant: platform.variant } : {}),
        created: FIXED_MTIME.toISOString(),
        config: img.config ?? { Cmd: ['sh'] },
        rootfs: { type: 'layers', diff_ids: diffIDs },
      }),
    );
    const configDigest = sha256(config);
    entries.push({ name: `${configDigest.slice(7)}.json`, type: 'file', mode: 0o644, body: config });
    manifest.push({ Config: `${configDigest.slice(7)}.json`, RepoTags: img.repoTags, Layers: layerPaths });
    out.push({ configDigest, diffIDs, repoTags: img.repoTags, layerTars });
  }
  const manifestEntry = { name: 'manifest.json', type: 'file' as const, mode: 0o644, body: JSON.stringify(manifest) };
  const repositories = { name: 'repositories', type: 'file' as const, mode: 0o644, body: '{}' };
  const all = opts.manifestFirst ? [manifestEntry, ...entries, repositories] : [...entries, manifestEntry, repositories];
  const archivePath = join(dir, `${opts.basename ?? 'docker-save'}.tar`);
  await writeFile(archivePath, await makeTar(all));
  return { archivePath, images: out };
}
