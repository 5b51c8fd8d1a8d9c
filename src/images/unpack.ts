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
 *
 * Parallel unpack (containerd 2.2's max_concurrent_unpacks on a snapshotter with the `rebase` capability): the
 * layers above the first one to extract are prepared without a parent, extracted concurrently and committed in
 * order onto their parents; see the Unpack class for the order of work and what it keeps from containerd 1.6.
 */
import { crashPoint } from '../core/crashpoint.js';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, lchown, lstat, utimes } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { join } from 'node:path';
import { applyTarget } from '../diff/walking.js';
import { withTempMount } from '../mount/index.js';
import { decompressStream } from '../diff/decompress.js';
import { failedPrecondition, isAlreadyExists, isNotFound } from '../core/errdefs.js';
import { retryOnNoSpace } from '../core/nospace.js';
import type { ContentStore } from '../content/types.js';
import type { Applier } from '../diff/types.js';
import { hasCapability, LABEL_SNAPSHOT_REBASE, SnapshotterCapability, type Snapshotter } from '../snapshots/types.js';
import {
  INHERITED_LABEL_PREFIX,
  LABEL_LAZY_FALLBACK,
  LABEL_REMOTE_SIZE,
  LABEL_REMOTE_URLS,
  LABEL_SNAPSHOT_REF,
  LABEL_STARGZ_DIGEST,
  LABEL_STARGZ_LAYERS,
  LABEL_STARGZ_REFERENCE,
  validateLabelEntries,
} from '../core/labels.js';
import { chainIDs } from './manifest.js';
import { LABEL_GC_REF_SNAPSHOT, LABEL_UNCOMPRESSED } from '../core/labels.js';
import { type Descriptor } from '../core/descriptor.js';
import type { Mount } from '../core/mount.js';

/** `lazy-fallback`: a lazy-pull snapshotter asked for the layer could not provide it (detail: why); it is downloaded. */
export type UnpackStatus = 'exists' | 'unpacking' | 'unpacked' | 'lazy-fallback';

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
  /**
   * Starts the download of layer i's blob without waiting for it (a pull passes it; `ready` then waits). The
   * unpacker calls it only for layers it will read: never for a layer a remote snapshotter provides.
   */
  fetch?: (i: number) => void;
  /**
   * containerd 2.x's `max_concurrent_unpacks`: most layers extracted at once. Above 1, on a snapshotter with
   * the `rebase` capability, layers are extracted concurrently into snapshots prepared without a parent and
   * committed in order onto their parents; otherwise (default 1) one after the other.
   */
  maxConcurrentUnpacks?: number;
  /**
   * Labels for layer i's labelled prepare beyond containerd.io/snapshot.ref and the layer descriptor's
   * `containerd.io/snapshot/` annotations (always copied, as containerd 1.6's unpacker does): a pull for a
   * lazy-pull snapshotter passes remoteSnapshotLabels() here.
   */
  layerLabels?: (i: number) => Record<string, string>;
}

/**
 * The labels stargz-snapshotter reads to fetch layer i lazily, as its containerd 1.6 client handler sets them
 * (fs/source AppendDefaultLabelsHandlerWrapper): the image reference, the layer's digest, the digests of this
 * layer and the ones above it (as many as fit a label), and the layer's urls.
 */
export function remoteSnapshotLabels(ref: string, layers: Descriptor[], i: number): Record<string, string> {
  const layer = layers[i]!;
  const fitting = (key: string, values: string[]): string => {
    let v = '';
    for (const x of values) {
      const next = v ? `${v},${x}` : x;
      try {
        validateLabelEntries({ [key]: next });
      } catch {
        break;
      }
      v = next;
    }
    return v;
  };
  const out: Record<string, string> = {
    [LABEL_STARGZ_REFERENCE]: ref,
    [LABEL_STARGZ_DIGEST]: layer.digest,
    [LABEL_STARGZ_LAYERS]: fitting(LABEL_STARGZ_LAYERS, layers.slice(i).map((l) => l.digest)),
    ...(Number.isSafeInteger(layer.size) && layer.size > 0 ? { [LABEL_REMOTE_SIZE]: String(layer.size) } : {}),
  };
  const urls = fitting(LABEL_REMOTE_URLS, layer.urls ?? []);
  if (urls) out[LABEL_REMOTE_URLS] = urls;
  return out;
}

/** The layer descriptor's annotations a snapshotter inherits (containerd's snapshots.FilterInheritedLabels). */
function inheritedAnnotations(layer: Descriptor): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(layer.annotations ?? {})) if (k.startsWith(INHERITED_LABEL_PREFIX)) out[k] = v;
  return out;
}

export interface UnpackResult {
  /** chainID of the top layer: the snapshot a container's rootfs is prepared from. */
  chainID: string;
  /** Layers extracted now (the rest were there already). */
  extracted: number;
  /** Layers a remote snapshotter provided (ALREADY_EXISTS to the labelled prepare): never read. */
  remote: number;
  /** Whether layers were extracted concurrently (the rebase path). */
  parallel: boolean;
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
  return new Unpack(snapshotter, applier, content, layers, diffIDs, opts).run();
}

/** A layer's extraction snapshot: prepared, then applied, then committed. */
interface Extraction {
  key: string;
  mounts: Mount[];
  /** Directories the layer implied without entries, made 0755 root (see ApplyOpts.onImplicitDirs). */
  implicit?: string[];
}

/**
 * One unpack. The order of work, per layer from the bottom:
 *
 *  1. The handshake, as containerd 1.6 does it: `stat(chainID)` (there already: the layer is found), else
 *     `prepare(extract-key, parent chainID, {containerd.io/snapshot.ref: chainID})`. ALREADY_EXISTS means a remote
 *     snapshotter provides the layer: it is never downloaded nor extracted. The parent is always the committed
 *     snapshot of the layer below, so a remote snapshotter can commit the layer onto it (containerd 2.2 asked
 *     with no parent in its parallel path, so a remote snapshotter committed layers without their parents:
 *     #13264). The handshake walks up as long as layers are found or provided.
 *  2. At the first layer to extract, the layers above it cannot be asked about yet (their parents do not
 *     exist). If the snapshotter can rebase, `maxConcurrentUnpacks` > 1 and it provided no layer of this image
 *     (a remote snapshotter can only be asked a layer at a time, on its committed parent, so with one the unpack
 *     stays sequential), each layer above is prepared without a parent (LABEL_SNAPSHOT_REBASE, so whiteouts are
 *     written in the backend's own format: #13030), extracted concurrently up to the limit, and committed in
 *     order onto the layer below (`commit(..., {parent})`). Otherwise each layer is extracted and committed
 *     before the next one is asked about (the sequential path).
 *
 * Any failure removes every extraction snapshot not committed (after the extractions in flight stop), so a
 * half-applied layer never survives; the committed ones are under the caller's lease like any layer.
 */
class Unpack {
  private readonly chain: string[];
  /** Layers found committed already (their blobs get the uncompressed label afterwards). */
  private readonly found: number[] = [];
  /** Layers a remote snapshotter provided. */
  private readonly remote: number[] = [];
  private extracted = 0;
  private parallel = false;
  /** The uncompressed labels of the layers committed, being written (see commit()). */
  private readonly labels: Promise<void>[] = [];
  private prefetched = false;

  constructor(
    private readonly sn: Snapshotter,
    private readonly applier: Applier,
    private readonly content: ContentStore,
    private readonly layers: Descriptor[],
    private readonly diffIDs: string[],
    private readonly opts: UnpackOptions,
  ) {
    this.chain = chainIDs(diffIDs);
  }

  async run(): Promise<UnpackResult> {
    try {
      return await this.unpack();
    } finally {
      await Promise.all(this.labels);
    }
  }

  private async unpack(): Promise<UnpackResult> {
    const n = this.layers.length;
    const limit = Math.max(1, Math.floor(this.opts.maxConcurrentUnpacks ?? 1));
    const canRebase = limit > 1 && hasCapability(this.sn, SnapshotterCapability.Rebase);
    let parent = '';
    for (let i = 0; i < n; i++) {
      const release = await this.lock(i);
      try {
        const asked = await this.ask(i, parent);
        if (asked === 'found' || asked === 'remote') {
          (asked === 'found' ? this.found : this.remote).push(i);
          parent = this.chain[i]!;
          continue;
        }
        // The first layer to read: from here on the blobs are needed, unless a remote snapshotter may still
        // provide some of the layers above (then each is fetched once asked about).
        if (this.remote.length === 0) this.prefetch(i);
        if (canRebase && this.remote.length === 0 && i < n - 1) {
          await this.concurrently(i, asked, limit, release);
          parent = this.chain[n - 1]!;
          break;
        }
        try {
          await this.extract(i, asked);
          await this.commit(i, asked, undefined);
        } catch (err) {
          // On a full disk the removal itself may be refused (its record cannot be written): retried in the background.
          await retryOnNoSpace(() => this.sn.remove(asked.key));
          throw err;
        }
        parent = this.chain[i]!;
      } finally {
        release();
      }
    }
    for (const i of this.found) {
      await this.opts.ready?.(i);
      await labelUncompressed(this.content, this.layers[i]!);
    }
    if (this.opts.config && parent) {
      const label = `${LABEL_GC_REF_SNAPSHOT}.${this.opts.snapshotterName}`;
      await this.content.update({ digest: this.opts.config.digest, labels: { [label]: parent } }, [`labels.${label}`]);
    }
    return { chainID: parent, extracted: this.extracted, remote: this.remote.length, parallel: this.parallel };
  }

  /**
   * The parallel path from layer `first` (prepared on its committed parent by the handshake, its lock held
   * by the caller) to the top: see the class comment.
   */
  private async concurrently(first: number, firstExtraction: Extraction, limit: number, releaseFirst: () => void): Promise<void> {
    const n = this.layers.length;
    const releases: (() => void)[] = [releaseFirst];
    const slots = new Map<number, { x: Extraction; done?: Promise<void>; committed?: boolean }>();
    let failed = false;
    const queue = new Limiter(limit);
    // Each layer starts as soon as its snapshot is prepared (the layers above are prepared meanwhile), and takes
    // an extraction slot only once its blob is in the store: a slot never waits for a download while another
    // layer's blob is there to extract. A freed slot goes to the lowest layer waiting, not to the first blob
    // in: small blobs arrive first, and the big layers (the longest extractions, which the in-order commits
    // wait for) would otherwise all be left to the end. Commits stay in order.
    const start = (k: number, x: Extraction) => {
      const slot: { x: Extraction; done?: Promise<void>; committed?: boolean } = { x };
      slots.set(k, slot);
      slot.done = (async () => {
        this.opts.fetch?.(k);
        await this.opts.ready?.(k);
        await queue.run(k, async () => {
          if (failed) throw failedPrecondition('unpack stopped');
          await this.extract(k, x);
        });
      })();
      slot.done.catch(() => (failed = true));
    };
    const prepares: Promise<void>[] = [];
    try {
      start(first, firstExtraction);
      for (let k = first + 1; k < n; k++) {
        releases.push(await this.lock(k));
        const chainID = this.chain[k]!;
        if (await exists(this.sn, chainID)) {
          await this.opts.protect?.(chainID);
          if (await exists(this.sn, chainID)) {
            this.opts.onProgress?.(this.layers[k]!, 'exists');
            this.found.push(k);
            continue;
          }
        }
        // Not awaited here: the prepares of the layers above run together, so they share the metadata's and the
        // backend's syncs (GroupCommit) instead of taking two each in turn, while extractions write beside them.
        const key = extractionKey(chainID);
        prepares.push(
          this.sn.prepare(key, '', { labels: { [LABEL_SNAPSHOT_REBASE]: 'true' } }).then((mounts) => {
            crashPoint('unpack.layer.after-prepare');
            start(k, { key, mounts });
          }),
        );
        if (failed) break; // an extraction failed already: the catch below reports it
      }
      // Every prepare settled (the prepared ones have their slots, for the cleanup below), the first failure thrown.
      for (const r of await Promise.allSettled(prepares)) if (r.status === 'rejected') throw r.reason;
      if (slots.size > 1) this.parallel = true;
      // Commit in order: each layer onto the one below it, committed just before.
      for (let k = first; k < n; k++) {
        const slot = slots.get(k);
        if (!slot) continue;
        await slot.done;
        await this.commit(k, slot.x, k === first ? undefined : this.chain[k - 1]!);
        slot.committed = true;
      }
    } catch (err) {
      failed = true;
      await Promise.allSettled(prepares);
      await Promise.allSettled([...slots.values()].map((s) => s.done));
      for (const slot of slots.values()) if (!slot.committed) await retryOnNoSpace(() => this.sn.remove(slot.x.key));
      throw err;
    } finally {
      for (const r of releases) r();
    }
  }

  /** The handshake for layer i on its committed parent (see the class comment). */
  private async ask(i: number, parent: string): Promise<'found' | 'remote' | Extraction> {
    const layer = this.layers[i]!;
    const chainID = this.chain[i]!;
    if (await exists(this.sn, chainID)) {
      await this.opts.protect?.(chainID);
      // Protected now; if a collection removed it between the stat and the protection, unpack it again.
      if (await exists(this.sn, chainID)) {
        this.opts.onProgress?.(layer, 'exists');
        return 'found';
      }
    }
    const key = extractionKey(chainID);
    const labels: Record<string, string> = { ...inheritedAnnotations(layer), ...this.opts.layerLabels?.(i), [LABEL_SNAPSHOT_REF]: chainID };
    try {
      const mounts = await this.sn.prepare(key, parent, { labels });
      crashPoint('unpack.layer.after-prepare');
      if (labels[LABEL_STARGZ_DIGEST] !== undefined) await this.reportFallback(layer, key);
      return { key, mounts };
    } catch (err) {
      // ALREADY_EXISTS: a remote snapshotter has the layer (or a concurrent unpack committed it).
      if (isAlreadyExists(err) && (await exists(this.sn, chainID))) {
        await this.opts.protect?.(chainID);
        this.opts.onProgress?.(layer, 'exists', 'remote snapshot');
        return 'remote';
      }
      throw err;
    }
  }

  /**
   * A prepare that asked for a remote layer and got an ordinary snapshot: a lazy-pull snapshotter says why in
   * LABEL_LAZY_FALLBACK on it (Strata's stargz snapshotter), which the pull's progress reports.
   */
  private async reportFallback(layer: Descriptor, key: string): Promise<void> {
    const why = await this.sn.stat(key).then(
      (info) => info.labels[LABEL_LAZY_FALLBACK],
      () => undefined,
    );
    if (why !== undefined) this.opts.onProgress?.(layer, 'lazy-fallback', why);
  }

  /** Applies layer i into its extraction snapshot and checks its diffID. */
  private async extract(i: number, x: Extraction): Promise<void> {
    const layer = this.layers[i]!;
    this.opts.fetch?.(i);
    await this.opts.ready?.(i);
    this.opts.onProgress?.(layer, 'unpacking');
    const applied = await this.applier.apply(layer, x.mounts, this.content, { onImplicitDirs: (paths) => (x.implicit = paths) });
    crashPoint('unpack.layer.after-apply');
    if (applied.digest !== this.diffIDs[i]) {
      throw failedPrecondition(`wrong diff id calculated on extraction: ${applied.digest}, expected ${this.diffIDs[i]}`);
    }
  }

  /** Commits layer i's extraction snapshot as its chainID (onto `parent` when it was prepared without one). */
  private async commit(i: number, x: Extraction, parent: string | undefined): Promise<void> {
    const chainID = this.chain[i]!;
    const layer = this.layers[i]!;
    if (parent) await this.inheritImplicitDirs(x, parent);
    try {
      await this.sn.commit(chainID, x.key, parent ? { parent } : undefined);
      crashPoint('unpack.layer.after-commit');
    } catch (err) {
      // Committed meanwhile by a concurrent unpack of the same layer (outside this daemon's serialisation):
      // theirs is as good as ours, once it is under our lease too.
      if (!isAlreadyExists(err)) throw err;
      await this.sn.remove(x.key).catch(() => undefined);
      await this.opts.protect?.(chainID);
    }
    this.extracted++;
    // The blob's uncompressed label is not waited for here: its record and sync would hold up the next layer's
    // commit (in the parallel path, the chain of commits that follows the last extraction). run() waits for all.
    this.labels.push(
      this.content
        .update({ digest: layer.digest, labels: { [LABEL_UNCOMPRESSED]: this.diffIDs[i]! } }, [`labels.${LABEL_UNCOMPRESSED}`])
        .then(
          () => crashPoint('unpack.layer.after-label'),
          () => undefined,
        ),
    );
    this.opts.onProgress?.(layer, 'unpacked');
  }

  /**
   * A layer extracted without its parent made the directories it implies without entries 0755 root; an in-order
   * apply takes their metadata from the layers below (so a layer adding tmp/x keeps tmp 1777). Before the
   * commit onto `parent`, each gets the owner, mode and times the parent has for it, read through a view of the
   * parent. Paths crossing a symlink on either side are left alone.
   */
  private async inheritImplicitDirs(x: Extraction, parent: string): Promise<void> {
    if (!x.implicit || x.implicit.length === 0) return;
    const target = applyTarget(x.mounts);
    if (target.kind !== 'dir') return;
    const upper = target.dir;
    const viewKey = `${x.key} parent-view`;
    const mounts = await this.sn.view(viewKey, parent);
    try {
      await withTempMount(mounts, async (root) => {
        for (const rel of x.implicit!) {
          const theirs = await dirWithin(root, rel);
          const ours = theirs && (await dirWithin(upper, rel));
          if (!theirs || !ours) continue;
          await lchown(ours.path, theirs.st.uid, theirs.st.gid);
          await chmod(ours.path, theirs.st.mode & 0o7777);
          await utimes(ours.path, theirs.st.atime, theirs.st.mtime);
        }
      });
    } finally {
      await this.sn.remove(viewKey).catch(() => undefined);
    }
  }

  /** Starts the downloads of every layer from `from` up, and of the layers found below it (once). */
  private prefetch(from: number): void {
    if (this.prefetched || !this.opts.fetch) return;
    this.prefetched = true;
    for (const i of this.found) this.opts.fetch(i);
    for (let i = from; i < this.layers.length; i++) this.opts.fetch(i);
  }

  /** Holds layer i's chain to this unpack (UnpackOptions.exclusive) until the returned function is called. */
  private lock(i: number): Promise<() => void> {
    const exclusive = this.opts.exclusive;
    if (!exclusive) return Promise.resolve(() => undefined);
    return new Promise((resolve, reject) => {
      let release!: () => void;
      const held = new Promise<void>((r) => (release = r));
      exclusive(this.chain[i]!, async () => {
        resolve(release);
        await held;
      }).catch(reject);
    });
  }
}

/** `rel` under `root` when it is a directory reached without crossing a symlink (lstat of each component). */
async function dirWithin(root: string, rel: string): Promise<{ path: string; st: Stats } | undefined> {
  let path = root;
  let st: Stats | undefined;
  for (const c of rel.split('/')) {
    if (!c || c === '.' || c === '..') return undefined;
    path = join(path, c);
    st = await lstat(path).catch(() => undefined);
    if (!st || !st.isDirectory()) return undefined;
  }
  return st ? { path, st } : undefined;
}

/** Runs at most `limit` tasks at a time; a freed slot goes to the waiting task of the lowest `rank`. */
class Limiter {
  private running = 0;
  private readonly waiting: { rank: number; go: () => void }[] = [];
  constructor(private readonly limit: number) {}

  async run<T>(rank: number, task: () => Promise<T>): Promise<T> {
    // A finishing task hands its slot straight to the next waiter (the count does not drop in between).
    if (this.running >= this.limit) await new Promise<void>((go) => this.waiting.push({ rank, go }));
    else this.running++;
    try {
      return await task();
    } finally {
      let best = -1;
      for (let w = 0; w < this.waiting.length; w++) if (best < 0 || this.waiting[w]!.rank < this.waiting[best]!.rank) best = w;
      if (best >= 0) this.waiting.splice(best, 1)[0]!.go();
      else this.running--;
    }
  }
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
