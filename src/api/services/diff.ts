/**
 * containerd.services.diff.v1.Diff over a Differ: Apply (a layer blob onto mounts) and Diff (the layer between
 * two mount lists, written into content). Translation only: the content store is the caller's namespace (and
 * lease) resolved per call; the differ does the work. Stream processor payloads are accepted and ignored (no
 * processors are registered, as in a default containerd).
 */
import type * as grpc from '@grpc/grpc-js';
import { DiffService, type ApplyRequest, type ApplyResponse, type DiffRequest, type DiffResponse } from '../gen/containerd/services/diff/v1/diff.js';
import type { Descriptor as PbDescriptor } from '../gen/containerd/types/descriptor.js';
import { invalidArgument } from '../../core/errdefs.js';
import type { ContentStore } from '../../content/types.js';
import type { Differ } from '../../diff/types.js';
import type { Descriptor } from '../../core/descriptor.js';
import type { Logger } from '../../log/index.js';
import { unary, type GrpcService } from '../call.js';
import { fromPbMount } from './snapshots.js';

/** The content store a call works in (its namespace and lease). */
export type ResolveContent = (call: { metadata: grpc.Metadata }) => ContentStore;

export const toPbDescriptor = (d: Descriptor): PbDescriptor => ({
  mediaType: d.mediaType,
  digest: d.digest,
  size: d.size,
  annotations: d.annotations ?? {},
});

export const fromPbDescriptor = (d: PbDescriptor): Descriptor => ({
  mediaType: d.mediaType,
  digest: d.digest,
  size: d.size,
  ...(Object.keys(d.annotations ?? {}).length > 0 ? { annotations: d.annotations } : {}),
});

export function diffService(differ: Differ, content: ResolveContent, log: Logger): GrpcService {
  const l = log.child({ service: 'diff' });
  const implementation = {
    apply: unary(l, 'Apply', async (req: ApplyRequest, call): Promise<ApplyResponse> => {
      if (!req.diff) throw invalidArgument('diff descriptor must be set');
      const store = content(call);
      const applied = await differ.apply(fromPbDescriptor(req.diff), req.mounts.map(fromPbMount), store);
      return { applied: toPbDescriptor(applied) };
    }),
    diff: unary(l, 'Diff', async (req: DiffRequest, call): Promise<DiffResponse> => {
      const store = content(call);
      const desc = await differ.compare(req.left.map(fromPbMount), req.right.map(fromPbMount), store, {
        ...(req.mediaType ? { mediaType: req.mediaType } : {}),
        ...(req.ref ? { ref: req.ref } : {}),
        ...(Object.keys(req.labels).length > 0 ? { labels: req.labels } : {}),
      });
      return { diff: toPbDescriptor(desc) };
    }),
  };
  return { definition: DiffService as unknown as grpc.ServiceDefinition, implementation };
}
