/**
 * containerd.services.images.v1.Images over the metadata image store. The store validates and publishes the
 * /images/* events; this layer only translates. Delete's `sync` flag asks to wait for garbage collection,
 * which the optional `afterDelete` hook provides (the GC plugin wires it).
 */
import type * as grpc from '@grpc/grpc-js';
import { ImagesService, type ImagesServer, type Image as ImagePb } from '../gen/containerd/services/images/v1/images.js';
import { invalidArgument } from '../../core/errdefs.js';
import type { NamespacedImages } from '../../metadata/images.js';
import type { Logger } from '../../log/index.js';
import { opContext, unary, type GrpcService, grpcService } from '../call.js';
import { descriptorFromPb, imageToPb } from '../convert.js';

/** Hook for what a synchronous delete should wait for (garbage collection arrives with the GC plugin). */
export type AfterImageDelete = (namespace: string, sync: boolean) => Promise<void>;




export function imagesService(store: NamespacedImages, log: Logger, afterDelete?: AfterImageDelete): GrpcService {
  const l = log.child({ service: 'images' });
  const required = (image: ImagePb | undefined): ImagePb => {
    if (!image?.name) throw invalidArgument('Image.Name required');
    return image;
  };
  const implementation: ImagesServer = {
    get: unary(l, 'Get', async (req: { name: string }, call) => ({
      image: imageToPb(await store.bind(opContext(call)).get(req.name)),
    })),
    list: unary(l, 'List', async (req: { filters: string[] }, call) => ({
      images: (await store.bind(opContext(call)).list(req.filters)).map(imageToPb),
    })),
    create: unary(l, 'Create', async (req: { image?: ImagePb }, call) => {
      const ctx = opContext(call);
      const image = required(req.image);
      const created = await store.bind(ctx).create({ name: image.name, labels: image.labels ?? {}, target: descriptorFromPb(image.target) });
      return { image: imageToPb(created) };
    }),
    update: unary(l, 'Update', async (req: { image?: ImagePb; updateMask?: string[] }, call) => {
      const ctx = opContext(call);
      const image = required(req.image);
      const updated = await store
        .bind(ctx)
        .update({ name: image.name, labels: image.labels ?? {}, target: descriptorFromPb(image.target) }, req.updateMask ?? []);
      return { image: imageToPb(updated) };
    }),
    delete: unary(l, 'Delete', async (req: { name: string; sync: boolean }, call) => {
      const { namespace } = opContext(call);
      await store.bind({ namespace }).delete(req.name);
      await afterDelete?.(namespace, req.sync);
      return {};
    }),
  };
  return grpcService<ImagesServer>(ImagesService, implementation);
}
