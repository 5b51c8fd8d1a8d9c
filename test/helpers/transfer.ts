/**
 * Driving stratad's transfer service from tests: pull/push/import/export/unpack with the progress collected,
 * errors as StrataErrors (so tests assert on kinds).
 */
import type { StrataClient } from '../../src/api/clients/strata.js';
import { toStrataError } from '../../src/api/clients/strata.js';
import type { Progress, PullRequest } from '../../src/api/gen/strata/services/transfer/v1/transfer.js';

export async function collectProgress(stream: AsyncIterable<unknown>): Promise<Progress[]> {
  const out: Progress[] = [];
  try {
    for await (const p of stream) out.push(p as Progress);
  } catch (err) {
    throw Object.assign(toStrataError(err) as Error, { progress: out });
  }
  return out;
}

export function pullImage(c: StrataClient, ref: string, req: Partial<PullRequest> = {}): Promise<Progress[]> {
  const full: PullRequest = {
    ref,
    platforms: [],
    allPlatforms: false,
    unpack: true,
    snapshotter: '',
    registry: { plainHttp: false, username: '', secret: '', hostsDir: '', maxConcurrent: 0 },
    labels: {},
    ...req,
  };
  return collectProgress(c.transfer.pull(full, c.metadata()) as unknown as AsyncIterable<unknown>);
}

/** Lists every snapshot of a snapshotter in the client's namespace. */
export async function listSnapshots(c: StrataClient, snapshotter = 'overlayfs') {
  const batches = await c.collect(c.snapshots.list({ snapshotter, filters: [] }, c.metadata()));
  return batches.flatMap((b) => b.info);
}

export async function listContent(c: StrataClient) {
  const batches = await c.collect(c.content.list({ filters: [] }, c.metadata()));
  return batches.flatMap((b) => b.info);
}
