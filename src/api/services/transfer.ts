/**
 * strata.services.transfer.v1.Transfer (Strata's extension): pull, push, import, export and unpack run in the
 * daemon and stream their progress. Translation only: the work is in src/images/transfer.ts.
 */
import type * as grpc from '@grpc/grpc-js';
import { TransferService, type TransferServer, type ConvertRequest, type ExportRequest, type ImportRequest, type Progress as PbProgress, type PullRequest, type PushRequest, type UnpackRequest } from '../gen/strata/services/transfer/v1/transfer.js';
import type { ImageTransfers } from '../../images/transfer.js';
import type { TransferProgress } from '../../images/fetch.js';
import type { Logger } from '../../log/index.js';
import { invalidArgument } from '../../core/errdefs.js';
import { opContext, serverStream, type GrpcService, grpcService } from '../call.js';
import { progressToPb, registryFromPb } from '../convert.js';



export function transferService(transfers: ImageTransfers, log: Logger): GrpcService {
  const l = log.child({ service: 'transfer' });
  // Progress is advisory: it is queued on the stream without waiting, and dropped once the client is gone.
  const progressTo = (send: (m: PbProgress) => Promise<void>) => (p: TransferProgress) => {
    send(progressToPb(p)).catch(() => undefined);
  };
  const implementation: TransferServer = {
    pull: serverStream(l, 'Pull', async (req: PullRequest, send, call) => {
      if (!req.ref) throw invalidArgument('ref must be set');
      const r = await transfers.pull(
        opContext(call).namespace,
        req.ref,
        {
          platforms: req.platforms,
          allPlatforms: req.allPlatforms,
          unpack: req.unpack,
          snapshotter: req.snapshotter,
          labels: req.labels,
          registry: registryFromPb(req.registry),
        },
        progressTo(send),
      );
      await send(progressToPb({ ref: r.image.name, kind: 'image', status: 'pulled', detail: r.image.target.digest }));
    }),
    push: serverStream(l, 'Push', async (req: PushRequest, send, call) => {
      if (!req.ref) throw invalidArgument('ref must be set');
      const root = await transfers.push(
        opContext(call).namespace,
        req.ref,
        { image: req.image, platforms: req.platforms, registry: registryFromPb(req.registry) },
        progressTo(send),
      );
      await send(progressToPb({ ref: req.ref, kind: 'image', status: 'pushed', detail: root.digest }));
    }),
    import: serverStream(l, 'Import', async (req: ImportRequest, send, call) => {
      if (!req.path) throw invalidArgument('path must be set');
      const images = await transfers.import(
        opContext(call).namespace,
        req.path,
        {
          indexName: req.indexName,
          platforms: req.platforms,
          allPlatforms: req.allPlatforms,
          unpack: req.unpack,
          snapshotter: req.snapshotter,
        },
        progressTo(send),
      );
      for (const i of images) await send(progressToPb({ ref: i.name, kind: 'image', status: 'imported', detail: i.target.digest }));
    }),
    export: serverStream(l, 'Export', async (req: ExportRequest, send, call) => {
      if (!req.path) throw invalidArgument('path must be set');
      await transfers.export(
        opContext(call).namespace,
        req.path,
        req.images,
        { platforms: req.platforms, allPlatforms: req.allPlatforms },
        progressTo(send),
      );
    }),
    unpack: serverStream(l, 'Unpack', async (req: UnpackRequest, send, call) => {
      if (!req.image) throw invalidArgument('image must be set');
      const r = await transfers.unpack(
        opContext(call).namespace,
        req.image,
        { snapshotter: req.snapshotter, platforms: req.platforms },
        progressTo(send),
      );
      await send(progressToPb({ ref: req.image, kind: 'image', status: 'unpacked', detail: r.chainID }));
    }),
    convert: serverStream(l, 'Convert', async (req: ConvertRequest, send, call) => {
      if (!req.source) throw invalidArgument('source must be set');
      if (!req.target) throw invalidArgument('target must be set');
      if (!req.estargz) throw invalidArgument('no conversion requested: set estargz');
      if (req.estargzChunkSize < 0) throw invalidArgument('estargz_chunk_size must not be negative');
      if (req.estargzCompressionLevel < 0 || req.estargzCompressionLevel > 9) throw invalidArgument('estargz_compression_level must be 0..9');
      const r = await transfers.convert(
        opContext(call).namespace,
        req.source,
        req.target,
        {
          oci: req.oci,
          platforms: req.platforms,
          allPlatforms: req.allPlatforms,
          chunkSize: req.estargzChunkSize,
          compressionLevel: req.estargzCompressionLevel,
          prioritizedFiles: req.estargzPrioritizedFiles,
        },
        progressTo(send),
      );
      await send(progressToPb({ ref: req.target, kind: 'image', status: 'converted', detail: r.target.digest }));
    }),
  };
  return grpcService<TransferServer>(TransferService, implementation);
}
