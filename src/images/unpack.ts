/**
 * Unpacking an image's layers into a snapshotter, as containerd's unpacker does, with one difference: a
 * layer is extracted as soon as its blob is in the content store (the caller says when through `ready`), so
 * a pull extracts layer N while layer N+1 is still downloading.
 *
 * Each layer becomes the committed snapshot named by its chainID. Layers already unpacked are skipped (stat
 * of the chainID). The extraction snapshot is prepared with `containerd.io/snapshot.ref` = chainID, which is
 * the remote-snapshot protocol: a lazy-pull snapshotter that already has the layer answers ALREADY_EXISTS,
 * and the layer counts as unpacked without a byte read. Every failure removes the extraction snapshot, so a
 * half-applied layer never survives.
 */
import { crashPoint } from '../core/crashpoint.js';
import { createHash, randomBytes } from 'node:crypto';
import { decompressStream } from '../diff/decompress.js';
import { failedPrecondition, isAlreadyExists, isNotFound } from '../core/errdefs.js';
import { retryOnNoSpace } from '../core/nospace.js';
import type { ContentStore } from '../content/types.js';
import type { Applier } from '../diff/types.js';
import type { Snapshotter } from '../snapshots/types.js';
import { LABEL_SNAPSHOT_REF } from '../core/labels.js';
import { chainIDs } from './manifest.js';
import { LABEL_GC_REF_SNAPSHOT, LABEL_UNCOMPRESSED } from '../core/labels.js';
import { type Descriptor } from '../core/descriptor.js';

export type UnpackStatus = 'exists' | 'unpacking' | 'unpacked';

export interface UnpackOptions {
  /** Name of the snapshotter (for the config blob's gc.ref.snapshot label). */
  snapshotterName: string;
  /** Resolves when layer i's blob is committed in `content`; default: already there. */
  ready?: (i: number) => Promise<void>;
  onProgress?: (layer: Descriptor, status: UnpackStatus, detail?: string) => void;
  /** The config blob to label with the top chainID (so GC keeps the snapshots while the config lives). */
  config?: Descriptor;
  /**
   * Called for a layer snapshot found already there, before relying on it: the caller puts it under its lease
   * so that a collection cannot remove it (it may be garbage of an earlier, dropped image) until the config
   * label refers to it.
   */
  protect?: (chainID: string) => Promise<void> | void;
  /**
   * Runs the check-extract-commit of one layer with that chain to itself (the daemon's SharedWork), so
   * concurrent unpacks of the same chain do not extract it twice: the second waits, then finds it committed.
   */
  exclusive?: <T>(chainID: string, fn: () => Promise<T>) => Promise<T>;
}

export interface UnpackResult {
  /** chainID of the top layer: the snapshot a container's rootfs is prepared from. */
  chainID: string;
  /** Layers extracted now (the rest were there already). */
  extracted: number;
}

/** A unique extraction key in containerd's shape ("extract-<unique> <chainID>"). */
function extractionKey(chainID: string): string {
  return `extract-${Date.now()}-${randomBytes(6).toString('base64url')} ${chainID}`;
}

export async function unpackLayers(
  snapshotter: Snapshotter,
  applier: Applier,
  content: ContentStore,
  layers: Descriptor[],
  diffIDs: string[],
  opts: UnpackOptions,
): Promise<UnpackResult> {
  if (layers.length !== diffIDs.length) {
    throw failedPrecondition(`image has ${layers.length} layers but its config lists ${diffIDs.length} diff ids`);
  }
  const chain = chainIDs(diffIDs);
  let parent = '';
  let extracted = 0;
  /** Layers found unpacked: their blobs get the uncompressed label afterwards (see labelUncompressed). */
  const found: number[] = [];
  for (let i = 0; i < layers.length; i++) {
    const layer = layers[i]!;
    const chainID = chain[i]!;
    const one = () => unpackOne(snapshotter, applier, content, layer, diffIDs[i]!, chainID, parent, () => opts.ready?.(i) ?? Promise.resolve(), opts);
    const outcome = opts.exclusive ? await opts.exclusive(chainID, one) : await one();
    if (outcome === 'found') found.push(i);
    else extracted++;
    parent = chainID;
  }
  for (const i of found) {
    await opts.ready?.(i);
    await labelUncompressed(content, layers[i]!);
  }
  if (opts.config && parent) {
    const label = `${LABEL_GC_REF_SNAPSHOT}.${opts.snapshotterName}`;
    await content.update({ digest: opts.config.digest, labels: { [label]: parent } }, [`labels.${label}`]);
  }
  return { chainID: parent, extracted };
}

/**
 * Makes sure layer `chainID` is a committed snapshot: 'found' when it was there (or a remote snapshotter or
 * a concurrent unpack provided it), 'extracted' when this call applied the layer.
 */
async function unpackOne(
  snapshotter: Snapshotter,
  applier: Applier,
  content: ContentStore,
  layer: Descriptor,
  diffID: string,
  chainID: string,
  parent: string,
  ready: () => Promise<void>,
  opts: UnpackOptions,
): Promise<'found' | 'extracted'> {
  if (await exists(snapshotter, chainID)) {
    await opts.protect?.(chainID);
    // Protected now; if a collection removed it between the stat and the protection, unpack it again.
    if (await exists(snapshotter, chainID)) {
      opts.onProgress?.(layer, 'exists');
      return 'found';
    }
  }
  await ready();
  opts.onProgress?.(layer, 'unpacking');
  const key = extractionKey(chainID);
  let mounts;
  try {
    mounts = await snapshotter.prepare(key, parent, { labels: { [LABEL_SNAPSHOT_REF]: chainID } });
    crashPoint('unpack.layer.after-prepare');
  } catch (err) {
    // ALREADY_EXISTS: a remote snapshotter has the layer (or a concurrent unpack committed it).
    if (isAlreadyExists(err) && (await exists(snapshotter, chainID))) {
      await opts.protect?.(chainID);
      opts.onProgress?.(layer, 'exists', 'remote snapshot');
      return 'found';
    }
    throw err;
  }
  try {
    const applied = await applier.apply(layer, mounts, content);
    crashPoint('unpack.layer.after-apply');
    if (applied.digest !== diffID) {
      throw failedPrecondition(`wrong diff id calculated on extraction: ${applied.digest}, expected ${diffID}`);
    }
    try {
      await snapshotter.commit(chainID, key);
      crashPoint('unpack.layer.after-commit');
    } catch (err) {
      // Committed meanwhile by a concurrent unpack of the same layer (outside this daemon's serialisation):
      // theirs is as good as ours, once it is under our lease too.
      if (!isAlreadyExists(err)) throw err;
      await snapshotter.remove(key).catch(() => undefined);
      await opts.protect?.(chainID);
    }
  } catch (err) {
    // On a full disk the removal itself may be refused (its record cannot be written): retried in the background.
    await retryOnNoSpace(() => snapshotter.remove(key));
    throw err;
  }
  await content
    .update({ digest: layer.digest, labels: { [LABEL_UNCOMPRESSED]: diffID } }, [`labels.${LABEL_UNCOMPRESSED}`])
    .catch(() => undefined);
  crashPoint('unpack.layer.after-label');
  opts.onProgress?.(layer, 'unpacked');
  return 'extracted';
}

/**
 * Gives a layer blob found already unpacked its `containerd.io/uncompressed` label when it lacks one, the
 * way containerd's images.GetDiffID memorises it: the value is computed from the blob (decompressed and
 * hashed), never taken on trust from the image config. A blob not in the store is left alone.
 */
async function labelUncompressed(content: ContentStore, layer: Descriptor): Promise<void> {
  let info;
  try {
    info = await content.info(layer.digest);
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
  if (info.labels[LABEL_UNCOMPRESSED]) return;
  const hash = createHash('sha256');
  for await (const chunk of decompressStream(await content.read(layer.digest), 'detect')) hash.update(chunk as Buffer);
  const diffID = `sha256:${hash.digest('hex')}`;
  await content.update({ digest: layer.digest, labels: { [LABEL_UNCOMPRESSED]: diffID } }, [`labels.${LABEL_UNCOMPRESSED}`]).catch(() => undefined);
}

async function exists(sn: Snapshotter, key: string): Promise<boolean> {
  try {
    await sn.stat(key);
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}
