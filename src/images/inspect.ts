/**
 * Questions about a stored image that `image ls` and `image check` ask, as containerd's images package
 * answers them: which platforms it has, and which blobs it needs for a platform (their sizes add up to
 * containerd's image.Size) and which of those are present. Written over a blob reader so the CLI can ask
 * through the content API and the daemon through its store.
 */
import { isNotFound } from '../core/errdefs.js';
import type { BlobReader } from './blob.js';
import { children, isIndexType, isManifestType, matchingManifests, parseConfig } from './manifest.js';
import { platformMatcher } from './platforms.js';
import type { Descriptor, Platform } from '../core/descriptor.js';

/** Every platform the image has: from index entries, or from the config of a single manifest. */
export async function imagePlatforms(read: BlobReader, target: Descriptor): Promise<Platform[]> {
  const out: Platform[] = [];
  const visit = async (desc: Descriptor): Promise<void> => {
    if (isIndexType(desc.mediaType)) {
      for (const c of children(desc, await read(desc))) {
        if (c.platform && isManifestType(c.mediaType)) out.push(c.platform);
        else await visit(c);
      }
    } else if (isManifestType(desc.mediaType)) {
      const [config] = children(desc, await read(desc));
      if (!config) return;
      const c = parseConfig(await read(config));
      out.push({ os: c.os, architecture: c.architecture, ...(c.variant ? { variant: c.variant } : {}) });
    }
  };
  await visit(target);
  return out;
}

/**
 * The descriptors an image needs for `platform`: the root, the best-matching manifest of each index, its
 * config and layers. Missing manifests or indexes end the walk there (their children are unknown).
 */
export async function requiredDescriptors(
  read: BlobReader,
  target: Descriptor,
  platform: Platform,
): Promise<{ required: Descriptor[]; missing: Descriptor[]; complete: boolean }> {
  const match = platformMatcher(platform);
  const required: Descriptor[] = [];
  const missing: Descriptor[] = [];
  let complete = true;
  const visit = async (desc: Descriptor): Promise<void> => {
    required.push(desc);
    if (!isIndexType(desc.mediaType) && !isManifestType(desc.mediaType)) return;
    let raw: Uint8Array;
    try {
      raw = await read(desc);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      missing.push(desc);
      complete = false;
      return;
    }
    let kids = children(desc, raw);
    if (isIndexType(desc.mediaType)) kids = matchingManifests(kids, match).slice(0, 1);
    for (const k of kids) await visit(k);
  };
  await visit(target);
  return { required, missing, complete };
}

/** Go's humanize as containerd's progress.Bytes prints sizes: "%02.1f <unit>" in powers of 1024. */
export function formatBytes(size: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB', 'ZiB', 'YiB'];
  let i = 0;
  while (size >= 1024 && i < units.length - 1) {
    size /= 1024;
    i++;
  }
  return `${size.toFixed(1)} ${units[i]}`;
}
