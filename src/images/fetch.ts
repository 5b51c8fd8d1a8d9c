/**
 * Fetching one descriptor from a registry into the content store, resumably: the ingest ref is derived from
 * the digest (containerd's "<kind>-<digest>" keys), so an interrupted pull leaves an ingest the next pull
 * continues from its offset (an HTTP Range request) instead of starting over. The content writer verifies
 * size and digest at commit; a blob that does not match is discarded with its ingest, never committed.
 */
import { isAlreadyExists, isFailedPrecondition, isNotFound, isUnavailable, invalidArgument, unavailable } from '../core/errdefs.js';
import type { ContentStore, ContentWriter } from '../content/types.js';
import type { Fetcher } from '../remotes/types.js';
import type { Descriptor } from '../core/descriptor.js';
import { appendDistributionSource, distributionSourceKey } from '../core/labels.js';
import { setTimeout as sleep } from 'node:timers/promises';

export type ObjectKind = 'index' | 'manifest' | 'config' | 'layer' | 'blob';

/** One step of a transfer, reported to whoever watches (the CLI's progress bars, the transfer service). */
export interface TransferProgress {
  /** A digest, or an image name for kind 'image'. */
  ref: string;
  kind: ObjectKind | 'image' | 'archive';
  status: string;
  offset?: number;
  total?: number;
  detail?: string;
}

export type ProgressFn = (p: TransferProgress) => void;

/** containerd's ingest key for a fetched object. */
export const ingestRef = (kind: ObjectKind, digest: string) => `${kind}-${digest}`;

/** Resumptions of one download after it broke off, before the pull fails. */
const MAX_RESUMES = 3;

/** How often (bytes) downloading progress is reported. */
const PROGRESS_EVERY = 1 << 20;

/** Bytes of a download gathered into one write into the content store, and the longest they wait (ms). */
const WRITE_CHUNK = 1 << 20;
const WRITE_DELAY_MS = 10;

export async function hasBlob(content: ContentStore, digest: string): Promise<boolean> {
  try {
    await content.info(digest);
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

/** Where a blob came from: the reference's registry host (port and all) and repository. */
export interface DistributionSource {
  registryHost: string;
  repository: string;
}

/**
 * Makes sure `desc` is in `content`, downloading what is missing. Returns 'exists' when nothing was needed.
 * Labels are set on the committed blob (or merged into an existing one's). With `source`, the blob's
 * `containerd.io/distribution.source.<host>` label gets the repository added to its sorted list, whether
 * the blob was downloaded or already there (containerd's AppendDistributionSourceLabel handler).
 */
export async function fetchBlob(
  content: ContentStore,
  fetcher: Fetcher,
  desc: Descriptor,
  kind: ObjectKind,
  opts: { labels?: Record<string, string>; source?: DistributionSource; onProgress?: ProgressFn } = {},
): Promise<'exists' | 'done'> {
  const labels = opts.labels ?? {};
  const source = opts.source;
  const report = (status: string, offset?: number) =>
    opts.onProgress?.({ ref: desc.digest, kind, status, offset: offset ?? 0, total: desc.size });
  // No separate "is it there?" check: opening the writer answers ALREADY_EXISTS for a blob this namespace
  // has, and puts it under the caller's lease first, so a collection cannot take it before the image does.
  const ref = ingestRef(kind, desc.digest);
  let writer: ContentWriter;
  for (let attempt = 0; ; attempt++) {
    try {
      writer = await content.writer({ ref, total: desc.size, expected: desc.digest });
      break;
    } catch (err) {
      if (isAlreadyExists(err)) {
        await mergeLabels(content, desc.digest, labels, source);
        report('exists', desc.size);
        return 'exists';
      }
      // Another fetch of the same object holds the ref (two images sharing a layer): wait for it.
      if (isUnavailable(err) && attempt < 600) {
        await sleep(100);
        if (await hasBlob(content, desc.digest)) {
          await mergeLabels(content, desc.digest, labels, source);
          report('exists', desc.size);
          return 'exists';
        }
        continue;
      }
      throw err;
    }
  }
  try {
    let offset = writer.offset;
    if (offset > desc.size) {
      await writer.truncate(0);
      offset = 0;
    }
    report(offset > 0 ? 'resuming' : 'downloading', offset);
    let reported = offset;
    // A download that breaks (the mirror went away, a reset) is resumed from the bytes already written, the
    // fetcher trying its hosts in order again (so a dead mirror falls through to the next host). containerd
    // fails the pull there instead.
    for (let resumes = 0; offset < desc.size; resumes++) {
      let streaming = false;
      try {
        const body = await fetcher.fetch(desc, { offset });
        streaming = true;
        // The body's socket reads (~40 KiB on loopback) are gathered into writes of up to WRITE_CHUNK: each write
        // is a round trip to the thread pool (which a pull's unpack needs too) and a wake-up of the event loop.
        // Bytes never wait long: what has arrived is written after WRITE_DELAY_MS, so a stalled or broken download
        // has everything it received in the ingest for the resume.
        let pending: Buffer[] = [];
        let pendingLen = 0;
        let received = offset;
        let writing: Promise<void> = Promise.resolve();
        let timer: NodeJS.Timeout | undefined;
        const flush = (): Promise<void> => {
          if (timer) clearTimeout(timer);
          timer = undefined;
          if (pendingLen === 0) return writing;
          const parts = pending;
          const len = pendingLen;
          pending = [];
          pendingLen = 0;
          writing = writing.then(async () => {
            await writer.write(parts.length === 1 ? parts[0]! : Buffer.concat(parts, len));
            offset += len;
            if (offset - reported >= PROGRESS_EVERY) {
              reported = offset;
              report('downloading', offset);
            }
          });
          return writing;
        };
        try {
          for await (const chunk of body as AsyncIterable<Buffer>) {
            if (received + chunk.length > desc.size) {
              throw invalidArgument(`${desc.digest}: registry sent more than the ${desc.size} bytes of the descriptor`);
            }
            received += chunk.length;
            pending.push(chunk);
            pendingLen += chunk.length;
            if (pendingLen >= WRITE_CHUNK) await flush();
            else timer ??= setTimeout(() => void flush().catch(() => undefined), WRITE_DELAY_MS);
          }
        } finally {
          body.destroy();
          // Everything received is written (or the write's error thrown), also when the download broke off.
          await flush();
        }
        if (offset < desc.size) throw unavailable(`${desc.digest}: the registry ended the download at ${offset} of ${desc.size} bytes`);
      } catch (err) {
        // Only a download that broke off mid-stream is resumed (the fetcher has tried every host already
        // when it fails to start one), a bounded number of times.
        if (!streaming || !isUnavailable(err) || resumes >= MAX_RESUMES) throw err;
        report('resuming', offset);
      }
    }
    try {
      const commitLabels = source ? { ...labels, [distributionSourceKey(source.registryHost)]: appendDistributionSource(undefined, source.repository) } : labels;
      await writer.commit(desc.size, desc.digest, { labels: commitLabels });
    } catch (err) {
      if (isAlreadyExists(err)) {
        await mergeLabels(content, desc.digest, labels, source);
        report('exists', desc.size);
        return 'exists';
      }
      // Wrong size or digest: these bytes can never become the blob, so do not keep them for a resume.
      if (isFailedPrecondition(err)) {
        await writer.close();
        await content.abort(ref).catch(() => undefined);
      }
      throw err;
    }
    report('done', desc.size);
    return 'done';
  } finally {
    await writer.close();
  }
}

async function mergeLabels(content: ContentStore, digest: string, labels: Record<string, string>, source: DistributionSource | undefined): Promise<void> {
  const merged = { ...labels };
  if (source) {
    const key = distributionSourceKey(source.registryHost);
    const current = (await content.info(digest)).labels[key];
    const value = appendDistributionSource(current, source.repository);
    if (value === current) delete merged[key];
    else merged[key] = value;
  }
  const keys = Object.keys(merged);
  if (keys.length === 0) return;
  await content.update({ digest, labels: merged }, keys.map((k) => `labels.${k}`));
}
