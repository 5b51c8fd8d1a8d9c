/**
 * containerd.services.diff.v1.Diff over a Differ: Apply (a layer blob onto mounts) and Diff (the layer between
 * two mount lists, written into content). Translation only: the content store is the caller's namespace (and
 * lease) resolved per call; the differ does the work. Stream processor payloads are accepted and ignored (no
 * processors are registered, as in a default containerd).
 */
import type * as grpc from '@grpc/grpc-js';
import { DiffService, type DiffServer, type ApplyRequest, type ApplyResponse, type DiffRequest, type DiffResponse } from '../gen/containerd/services/diff/v1/diff.js';
import { invalidArgument } from '../../core/errdefs.js';
import { layerMediaTypes } from '../../diff/mediatypes.js';
import type { ContentStore } from '../../content/types.js';
import type { Differ } from '../../diff/types.js';
import type { Logger } from '../../log/index.js';
import { unary, unconverted, type GrpcService, grpcService } from '../call.js';
import { mountFromPb, descriptorFromPb, descriptorToPb } from '../convert.js';
import type { CallContext } from '../call.js';

/** The content store a call works in (its namespace and lease). */
export type ResolveContent = (call: CallContext) => ContentStore;



export function diffService(differ: Differ, content: ResolveContent, log: Logger): GrpcService {
  const l = log.child({ service: 'diff' });
  const implementation: DiffServer = {
    apply: unary(l, 'Apply', async (req: ApplyRequest, call): Promise<ApplyResponse> => {
      if (!req.diff) throw invalidArgument('diff descriptor must be set');
      // containerd finds no stream processor for a media type that is not a layer's: UNKNOWN, before any read.
      const mt = req.diff.mediaType;
      // An unconverted error there, so its text comes as containerd's (no kind suffix), and it is logged as the
      // client's doing (a StrataError of kind unknown is logged as the daemon's: the fuzz test caught that).
      if (!layerMediaTypes.has(mt)) throw unconverted(new Error(`failed to get stream processor for ${mt}: no processor for media-type`), '');
      const store = content(call);
      const applied = await differ.apply(descriptorFromPb(req.diff), req.mounts.map(mountFromPb), store);
      return { applied: descriptorToPb(applied) };
    }),
    diff: unary(l, 'Diff', async (req: DiffRequest, call): Promise<DiffResponse> => {
      const store = content(call);
      const desc = await differ.compare(req.left.map(mountFromPb), req.right.map(mountFromPb), store, {
        ...(req.mediaType ? { mediaType: req.mediaType } : {}),
        ...(req.ref ? { ref: req.ref } : {}),
        ...(Object.keys(req.labels).length > 0 ? { labels: req.labels } : {}),
      });
      return { diff: descriptorToPb(desc) };
    }),
  };
  return grpcService<DiffServer>(DiffService, implementation);
}
