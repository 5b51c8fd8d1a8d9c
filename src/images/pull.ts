/**
 * Pull: resolve a reference, fetch the index/manifests/configs/layers the chosen platforms need into the
 * content store (labelled the way containerd labels them, so GC follows image → index → manifest → config and
 * layers), record the image, and unpack it, pipelined: layers download concurrently (the resolver's limit)
 * while the unpacker extracts each one as soon as it and its parents are in.
 *
 * The caller binds the stores to a namespace and a lease (so everything fetched is protected until the image
 * record exists) and deletes the lease afterwards.
 */
import { notFound } from '../core/errdefs.js';
import type { ContentStore } from '../content/types.js';
import type { Applier } from '../diff/types.js';
import type { Snapshotter } from '../snapshots/types.js';
import { readBlob } from './blob.js';
import { fetchBlob, type ObjectKind, type ProgressFn } from './fetch.js';
import { children, gcRefLabels, isIndexType, isManifestType, parseConfig, parseIndex, parseManifest, selectManifests } from './manifest.js';
import { defaultPlatform } from './platforms.js';
import type { Fetcher, Resolver } from '../remotes/types.js';
import { parseReference } from '../remotes/reference.js';
import { type Image, type ImageStore } from '../metadata/images.js';
import { type Descriptor, type Platform } from '../core/descriptor.js';
import { remoteSnapshotLabels, unpackLayers, type UnpackResult } from './unpack.js';
import { createOrUpdateImage } from './store-util.js';
import type { SharedWork } from './inflight.js';

export interface ImageServices {
  content: ContentStore;
  images: ImageStore;
}

export interface UnpackTarget {
  snapshotter: Snapshotter;
  snapshotterName: string;
  applier: Applier;
  /** Puts an existing layer snapshot under the transfer's lease (see UnpackOptions.protect). */
  protect?: (chainID: string) => Promise<void> | void;
  /** Serialises the unpack of one chain with the daemon's other transfers (see UnpackOptions.exclusive). */
  exclusive?: <T>(chainID: string, fn: () => Promise<T>) => Promise<T>;
  /** containerd 2.x's max_concurrent_unpacks (see UnpackOptions.maxConcurrentUnpacks). */
  maxConcurrentUnpacks?: number;
  /**
   * The snapshotter pulls lazily (stargz): a pull puts stargz-snapshotter's labels on each labelled prepare
   * (remoteSnapshotLabels: the image reference, the layer's digest...) so that it can fetch the layer itself.
   */
  remoteLabels?: boolean;
}

export interface PullOptions {
  /** Platforms to fetch; default the host's. */
  platforms?: Platform[];
  allPlatforms?: boolean;
  /** Unpack the image for the first platform (the host's by default) into this snapshotter. */
  unpack?: UnpackTarget;
  labels?: Record<string, string>;
  onProgress?: ProgressFn;
  /**
   * The daemon's in-flight downloads: a blob another pull is downloading is waited for, not downloaded
   * again (see SharedWork).
   */
  shared?: SharedWork;
}

export interface PullResult {
  image: Image;
  unpacked?: UnpackResult;
}

interface Walked {
  /** Manifests fetched, in platform preference order. */
  manifests: { desc: Descriptor; config: Descriptor; layers: Descriptor[] }[];
}

export async function pull(resolver: Resolver, ref: string, svc: ImageServices, opts: PullOptions = {}): Promise<PullResult> {
  const progress = opts.onProgress ?? (() => undefined);
  progress({ ref, kind: 'image', status: 'resolving' });
  const resolved = await resolver.resolve(ref);
  const fetcher = resolver.fetcher(resolved.name);
  const parsed = parseReference(resolved.name);
  // Every object walked gets the distribution-source label merged in, fetched now or found already.
  const source = { registryHost: parsed.host, repository: parsed.repository };
  const platforms = opts.platforms && opts.platforms.length > 0 ? opts.platforms : [defaultPlatform()];

  const fetch = (desc: Descriptor, kind: ObjectKind) => {
    const one = () => fetchBlob(svc.content, fetcher, desc, kind, { source, onProgress: progress });
    if (!opts.shared) return one();
    return opts.shared.download(desc.digest, one, () =>
      progress({ ref: desc.digest, kind, status: 'waiting', offset: 0, total: desc.size }),
    );
  };

  // Walk index → manifests → config, fetching as we go; layers start downloading as soon as their manifest
  // is known, and the unpacker waits on them one by one.
  const walked: Walked = { manifests: [] };
  let unpackingStarted = false;
  const layerFetches = new Map<string, Promise<unknown>>();
  const startLayer = (layer: Descriptor): Promise<unknown> => {
    let p = layerFetches.get(layer.digest);
    if (!p) {
      p = fetch(layer, 'layer');
      p.catch(() => undefined); // observed below; never an unhandled rejection
      layerFetches.set(layer.digest, p);
    }
    return p;
  };

  const visit = async (desc: Descriptor): Promise<void> => {
    if (isIndexType(desc.mediaType)) {
      await fetch(desc, 'index');
      const index = parseIndex(await readBlob(svc.content, desc));
      const selected = selectManifests(index.manifests, platforms, opts.allPlatforms ?? false);
      await labelChildren(svc.content, desc, selected);
      for (const m of selected) await visit(m);
      return;
    }
    if (isManifestType(desc.mediaType)) {
      await fetch(desc, 'manifest');
      const raw = await readBlob(svc.content, desc);
      const manifest = parseManifest(raw);
      // The config first (the unpacker needs its diffIDs), then every layer: downloads are served in the
      // order they queue for the concurrency limit, so a config queued behind the layers would hold the
      // unpacking back until most of them were in.
      const config = fetch(manifest.config, 'config');
      // The image to unpack (the first manifest) has its layers fetched by the unpacker, which asks the
      // snapshotter first: a layer a remote snapshotter provides is never downloaded.
      const unpacking = opts.unpack !== undefined && walked.manifests.length === 0 && !unpackingStarted;
      unpackingStarted ||= unpacking;
      if (!unpacking) for (const l of manifest.layers) startLayer(l);
      await config;
      await labelChildren(svc.content, desc, children(desc, raw));
      walked.manifests.push({ desc, config: manifest.config, layers: manifest.layers });
      return;
    }
    throw notFound(`${resolved.name}: unsupported media type ${desc.mediaType} for the image root`);
  };

  try {
    await visit(resolved.desc);
    let unpacked: UnpackResult | undefined;
    if (opts.unpack && walked.manifests.length > 0) {
      const target = walked.manifests[0]!;
      const config = parseConfig(await readBlob(svc.content, target.config));
      unpacked = await unpackLayers(
        opts.unpack.snapshotter,
        opts.unpack.applier,
        svc.content,
        target.layers,
        config.rootfs.diff_ids,
        {
          snapshotterName: opts.unpack.snapshotterName,
          config: target.config,
          ...(opts.unpack.protect ? { protect: opts.unpack.protect } : {}),
          ...(opts.unpack.exclusive ? { exclusive: opts.unpack.exclusive } : {}),
          ...(opts.unpack.maxConcurrentUnpacks ? { maxConcurrentUnpacks: opts.unpack.maxConcurrentUnpacks } : {}),
          ...(opts.unpack.remoteLabels ? { layerLabels: (i: number) => remoteSnapshotLabels(resolved.name, target.layers, i) } : {}),
          fetch: (i) => void startLayer(target.layers[i]!),
          ready: async (i) => void (await startLayer(target.layers[i]!)),
          onProgress: (layer, status, detail) =>
            progress({ ref: layer.digest, kind: 'layer', status, total: layer.size, ...(detail ? { detail } : {}) }),
        },
      );
    }
    await Promise.all(layerFetches.values());
    const image = await createOrUpdateImage(svc.images, resolved.name, resolved.desc, opts.labels ?? {});
    progress({ ref: image.name, kind: 'image', status: 'done', detail: resolved.desc.digest });
    return { image, ...(unpacked ? { unpacked } : {}) };
  } finally {
    // Let every download finish or fail before the caller drops the lease that protects it.
    await Promise.allSettled(layerFetches.values());
  }
}

/** Labels a parent blob with containerd's gc.ref.content.* references to the children that were fetched. */
async function labelChildren(content: ContentStore, parent: Descriptor, kids: Descriptor[]): Promise<void> {
  const labels = gcRefLabels(parent, kids);
  const keys = Object.keys(labels);
  if (keys.length > 0) await content.update({ digest: parent.digest, labels }, keys.map((k) => `labels.${k}`));
}

export type { Fetcher };
