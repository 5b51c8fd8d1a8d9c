/**
 * Push: a local image's blobs (layers and configs first, in parallel up to the resolver's limit; then
 * manifests; the root last, by tag) to a registry reference. Blobs the registry has are skipped; blobs known
 * to come from another repository of the same registry (their distribution.source label) are mounted rather
 * than uploaded.
 */
import { notFound } from '../core/errdefs.js';
import type { ContentStore } from '../content/types.js';
import { readBlob } from './blob.js';
import type { ProgressFn } from './fetch.js';
import { children, isIndexType, isManifestType, selectManifests } from './manifest.js';
import type { Resolver } from '../remotes/types.js';
import { parseReference } from '../remotes/reference.js';
import { selectMountCandidate } from '../core/labels.js';
import { type ImageStore } from '../metadata/images.js';
import { type Descriptor, type Platform } from '../core/descriptor.js';

export interface PushOptions {
  /** The local image to push; default `ref`. */
  image?: string;
  /** Push only the manifest for these platforms (the root then becomes that manifest). */
  platforms?: Platform[];
  onProgress?: ProgressFn;
}

export async function push(
  resolver: Resolver,
  ref: string,
  svc: { content: ContentStore; images: ImageStore },
  opts: PushOptions = {},
): Promise<Descriptor> {
  const progress = opts.onProgress ?? (() => undefined);
  const target = parseReference(ref);
  const image = await svc.images.get(opts.image || ref);
  let root = image.target;
  if (opts.platforms && opts.platforms.length > 0 && isIndexType(root.mediaType)) {
    const kids = children(root, await readBlob(svc.content, root));
    root = selectManifests(kids, opts.platforms, false)[0]!;
  }
  const pusher = resolver.pusher(target.name);

  // Collect the graph: parents after their children, each digest once.
  const order: Descriptor[] = [];
  const seen = new Set<string>();
  const walk = async (desc: Descriptor): Promise<void> => {
    if (seen.has(desc.digest)) return;
    seen.add(desc.digest);
    if (isIndexType(desc.mediaType) || isManifestType(desc.mediaType)) {
      for (const c of children(desc, await readBlob(svc.content, desc))) await walk(c);
    }
    order.push(desc);
  };
  await walk(root);

  const isJson = (d: Descriptor) => isIndexType(d.mediaType) || isManifestType(d.mediaType);
  const pushOne = async (desc: Descriptor, tag: boolean) => {
    const info = await svc.content.info(desc.digest).catch(() => {
      throw notFound(`content ${desc.digest} of ${image.name} is not in the content store`);
    });
    // containerd's pusher reads the label to pick one mount source; it does not write labels on push.
    const candidate = selectMountCandidate(info.labels, target.host, target.repository);
    const mountFrom = candidate ? [candidate] : [];
    progress({ ref: desc.digest, kind: isJson(desc) ? 'manifest' : 'blob', status: 'uploading', total: desc.size });
    const result = await pusher.push(desc, () => svc.content.read(desc.digest), { tag, mountFrom });
    progress({ ref: desc.digest, kind: isJson(desc) ? 'manifest' : 'blob', status: result, offset: desc.size, total: desc.size });
  };

  // Blobs in parallel (the pusher limits concurrency), then manifests in order, the root by tag.
  await Promise.all(order.filter((d) => !isJson(d)).map((d) => pushOne(d, false)));
  for (const d of order.filter(isJson)) await pushOne(d, d.digest === root.digest && !!target.tag);
  progress({ ref: target.name, kind: 'image', status: 'pushed', detail: root.digest });
  return root;
}
