/**
 * The walking differ (containerd's diff/apply fsApplier + diff/walking walkingDiff): applies layers onto
 * mounts and computes layers between mounts. Stateless: the content store comes with each call.
 *
 * Apply targets, as containerd's fast paths:
 *  1. one overlay mount with an upperdir: the layer is written straight into the upperdir, whiteouts as overlay
 *     whiteouts (0/0 character devices, opaque xattr; user.* with `userxattr`), the lowerdirs as "parents"
 *     (implicit directories copy their attributes);
 *  2. one writable bind mount: written into its source, whiteouts delete;
 *  3. anything else: mounted on a temporary directory, written there (whiteouts delete), unmounted.
 * The blob is streamed from the content store through the decompressor into the tar applier; nothing is
 * buffered whole. The diffID is returned, not checked (the unpacker compares it with the image config).
 *
 * Compare: see ./compare.ts (and the modules it names) for the changes and the tar; here the tar is hashed
 * (diffID), compressed (gzip unless the plain tar type is asked for) and written into the content store,
 * committed with the containerd.io/uncompressed label.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { pipeline as pipelineCb, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import type { ContentStore } from '../content/types.js';
import { invalidArgument, isAlreadyExists, notImplemented, StrataError } from '../core/errdefs.js';
import { LABEL_UNCOMPRESSED } from '../core/labels.js';
import { type Descriptor } from '../core/descriptor.js';
import { silentLogger, type Logger } from '../log/index.js';
import type { Mount } from '../core/mount.js';
import { applyTar } from './apply.js';
import { isBindMount, parseOverlayOptions, withTempMount } from '../mount/index.js';
import { withDiffTar, type DiffMethod } from './compare.js';
import { decompressStream } from './decompress.js';
import { differDefaults, type LayerLimits } from './limits.js';
import { compressionOf, mayBeMislabelled, MediaTypeImageLayer, MediaTypeImageLayerGzip } from './mediatypes.js';
import type { ApplyOpts, CompareOpts, Differ } from './types.js';

/** Where apply writes: a directory as is (with its whiteout mode), or the mounts on a temporary directory. */
export type ApplyTarget =
  | { kind: 'dir'; dir: string; whiteouts: 'overlay' | 'delete'; userxattr: boolean; parents: string[] }
  | { kind: 'mount'; mounts: Mount[] };

/** containerd's choice of apply target (diff/apply/apply_linux.go, plus the bind shortcut). */
export function applyTarget(mounts: Mount[]): ApplyTarget {
  if (mounts.length === 1) {
    const m = mounts[0]!;
    const overlay = m.type === 'overlay' ? parseOverlayOptions(m.options) : undefined;
    // Overlay whiteouts are character devices: making them needs CAP_MKNOD (containerd: not in a user namespace).
    if (overlay?.upperdir !== undefined && process.getuid?.() === 0) {
      // The lower layers, top first: a directory the layer implies without an entry of its own takes its
      // attributes from them (containerd's WithParents).
      return { kind: 'dir', dir: overlay.upperdir, whiteouts: 'overlay', userxattr: overlay.userxattr, parents: overlay.lowerdirs };
    }
    if (isBindMount(m) && !m.options.includes('ro')) {
      return { kind: 'dir', dir: m.source, whiteouts: 'delete', userxattr: false, parents: [] };
    }
  }
  return { kind: 'mount', mounts };
}

function uniqueRef(): string {
  return `diff-${Date.now()}-${randomBytes(6).toString('base64url')}`;
}

export interface WalkingDifferOptions {
  log?: Logger;
  /** Limits on what a layer may expand to (default: differDefaults(), see ./limits.ts). */
  limits?: LayerLimits;
}

export class WalkingDiffer implements Differ {
  private readonly log: Logger;
  readonly limits: LayerLimits;

  constructor(opts: WalkingDifferOptions = {}) {
    this.log = opts.log ?? silentLogger;
    this.limits = opts.limits ?? differDefaults();
  }

  async apply(desc: Descriptor, mounts: Mount[], content: ContentStore, opts: ApplyOpts = {}): Promise<Descriptor> {
    const compression = mayBeMislabelled(desc.mediaType) ? 'detect' : compressionOf(desc.mediaType);
    const target = applyTarget(mounts);
    const started = Date.now();
    // Open the blob first: a missing blob fails before anything is mounted.
    const source = await content.read(desc.digest);
    // The blob's own size, not the caller's word, bounds the expansion ratio.
    const compressedSize = await content.info(desc.digest).then(
      (i) => i.size,
      () => desc.size,
    );
    // Which failed first tells a source failure (which the decompressor sees too) from a decompression
    // failure (which destroys the source with the same error).
    let sourceError: unknown;
    let streamError: unknown;
    // A premature close is never a cause: it is what the apply's own failure (its streams destroyed, e.g. after a
    // full disk stopped the worker) does to the source and the decompressor, and must not hide that failure.
    const consequence = (err: unknown) => (err as { code?: unknown } | null)?.code === 'ERR_STREAM_PREMATURE_CLOSE';
    source.on('error', (err: unknown) => {
      if (streamError === undefined && !consequence(err)) sourceError ??= err;
    });
    let stream: Readable;
    try {
      stream = decompressStream(source, compression);
    } catch (err) {
      source.destroy();
      throw err;
    }
    stream.on('error', (err: unknown) => {
      if (sourceError === undefined && !consequence(err)) streamError ??= err;
    });
    if (opts.onProgress) stream = withProgress(stream, opts.onProgress);

    let result;
    try {
      result =
        target.kind === 'dir'
          ? await applyTar(stream, target.dir, {
              whiteouts: target.whiteouts,
              userxattr: target.userxattr,
              ...(target.parents.length > 0 ? { parents: target.parents } : {}),
              logger: this.log,
              limits: this.limits,
              compressedSize,
              // A gunzip stream's chunks (zlib's full output buffers) are moved to the apply worker, not copied.
              ownsChunks: compression === 'gzip',
            })
          : await withTempMount(target.mounts, (dir) =>
              applyTar(stream, dir, { whiteouts: 'delete', logger: this.log, limits: this.limits, compressedSize, ownsChunks: compression === 'gzip' }),
            );
    } catch (err) {
      stream.destroy();
      source.destroy();
      if (sourceError !== undefined) throw sourceError;
      if (err instanceof StrataError) throw err;
      if (streamError !== undefined) {
        // The decompressor's own failure: the blob is not what its media type says.
        const msg = streamError instanceof Error ? streamError.message : String(streamError);
        throw invalidArgument(`failed to decompress layer ${desc.digest} (${desc.mediaType}): ${msg}`, streamError);
      }
      throw err;
    }
    opts.onImplicitDirs?.(result.implicitDirs);
    this.log.debug('diff applied', { digest: desc.digest, media: desc.mediaType, size: result.size, ms: Date.now() - started });
    return { mediaType: MediaTypeImageLayer, digest: result.diffID, size: result.size };
  }

  async compare(lower: Mount[], upper: Mount[], content: ContentStore, opts: CompareOpts = {}): Promise<Descriptor> {
    const mediaType = opts.mediaType || MediaTypeImageLayerGzip;
    if (mediaType !== MediaTypeImageLayer && mediaType !== MediaTypeImageLayerGzip) {
      throw notImplemented(`unsupported diff media type: ${mediaType}`);
    }
    const compress = mediaType === MediaTypeImageLayerGzip;
    if (upper.length === 0) throw invalidArgument('no mounts for the upper tree of the diff');
    const started = Date.now();
    let method: DiffMethod | undefined;
    const desc = await withDiffTar(lower, upper, async (tar, m) => {
      method = m;
      return this.writeLayer(tar, content, mediaType, compress, opts);
    });
    this.log.debug('diff computed', { digest: desc.digest, media: mediaType, size: desc.size, method, ms: Date.now() - started });
    return desc;
  }

  /** Hashes, compresses and commits a layer tar stream; returns the descriptor of the blob. */
  private async writeLayer(
    tar: AsyncGenerator<Buffer>,
    content: ContentStore,
    mediaType: string,
    compress: boolean,
    opts: CompareOpts,
  ): Promise<Descriptor> {
    const newRef = !opts.ref;
    const ref = opts.ref || uniqueRef();
    const cw = await content.writer({ ref });
    let done = false;
    try {
      if (cw.offset > 0) await cw.truncate(0);
      const hash = createHash('sha256');
      const tap = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          hash.update(chunk);
          cb(null, chunk);
        },
      });
      const sink = async (source: AsyncIterable<Buffer>) => {
        for await (const chunk of source) await cw.write(chunk);
      };
      if (compress) await pipeline(tar, tap, createGzip(), sink);
      else await pipeline(tar, tap, sink);
      const diffID = `sha256:${hash.digest('hex')}`;
      const digest = cw.digest();
      try {
        // Only a compressed layer is labelled with its diffID, as in containerd (a tar's is its own digest).
        await cw.commit(0, digest, compress ? { labels: { ...opts.labels, [LABEL_UNCOMPRESSED]: diffID } } : opts.labels ? { labels: opts.labels } : {});
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
      }
      done = true;
      const info = await content.info(digest);
      // The blob existed already, maybe without the label.
      if (compress && !info.labels[LABEL_UNCOMPRESSED]) {
        await content.update({ digest, labels: { [LABEL_UNCOMPRESSED]: diffID } }, [`labels.${LABEL_UNCOMPRESSED}`]);
      }
      return { mediaType, digest, size: info.size };
    } finally {
      await cw.close().catch(() => undefined);
      // A ref of our own is dropped on failure; a caller's ref keeps its ingest, as containerd does.
      if (!done && newRef) await content.abort(ref).catch(() => undefined);
    }
  }
}

function withProgress(stream: Readable, onProgress: (bytes: number) => void): Readable {
  let total = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      onProgress((total += chunk.length));
      cb(null, chunk);
    },
  });
  // Errors flow downstream; destroying the counter (applyTar does on failure) destroys the stream.
  pipelineCb(stream, counter, () => undefined);
  return counter;
}
