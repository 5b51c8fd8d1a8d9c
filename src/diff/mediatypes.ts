/**
 * Layer media types and the compression each one implies, as containerd's images.DiffCompression and
 * archive/compression see them: the OCI layer types (plain, +gzip, +zstd, and their nondistributable twins)
 * and Docker's schema 2 rootfs types (plain and gzip, regular and foreign).
 */
import { invalidArgument } from '../core/errdefs.js';

export type Compression = 'none' | 'gzip' | 'zstd';

export const MediaTypeImageLayer = 'application/vnd.oci.image.layer.v1.tar';
export const MediaTypeImageLayerGzip = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const MediaTypeImageLayerZstd = 'application/vnd.oci.image.layer.v1.tar+zstd';
export const MediaTypeImageLayerNonDistributable = 'application/vnd.oci.image.layer.nondistributable.v1.tar';
export const MediaTypeImageLayerNonDistributableGzip =
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip';
export const MediaTypeImageLayerNonDistributableZstd =
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd';
export const MediaTypeDockerSchema2Layer = 'application/vnd.docker.image.rootfs.diff.tar';
export const MediaTypeDockerSchema2LayerForeign = 'application/vnd.docker.image.rootfs.foreign.diff.tar';
export const MediaTypeDockerSchema2LayerGzip = 'application/vnd.docker.image.rootfs.diff.tar.gzip';
export const MediaTypeDockerSchema2LayerForeignGzip = 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip';

const layerCompression: ReadonlyMap<string, Compression> = new Map<string, Compression>([
  [MediaTypeImageLayer, 'none'],
  [MediaTypeImageLayerGzip, 'gzip'],
  [MediaTypeImageLayerZstd, 'zstd'],
  [MediaTypeImageLayerNonDistributable, 'none'],
  [MediaTypeImageLayerNonDistributableGzip, 'gzip'],
  [MediaTypeImageLayerNonDistributableZstd, 'zstd'],
  [MediaTypeDockerSchema2Layer, 'none'],
  [MediaTypeDockerSchema2LayerForeign, 'none'],
  [MediaTypeDockerSchema2LayerGzip, 'gzip'],
  [MediaTypeDockerSchema2LayerForeignGzip, 'gzip'],
]);

/** Every layer media type Strata knows, with the compression it implies. */
export const layerMediaTypes: ReadonlyMap<string, Compression> = layerCompression;

/**
 * The compression a layer of media type `mediaType` is in. Docker's uncompressed rootfs types are reported as
 * 'none', but containerd treats them as "unknown" (old pushers gzipped layers under that name): see
 * {@link mayBeMislabelled}; `decompressStream(input, 'detect')` handles that case.
 * @throws invalid argument for a media type that is not a (supported) layer type, e.g. an encrypted layer.
 */
export function compressionOf(mediaType: string): Compression {
  const c = layerCompression.get(mediaType);
  if (c === undefined) throw invalidArgument(`unsupported layer media type ${mediaType}`);
  return c;
}

/** True for the Docker uncompressed types whose content containerd sniffs for compression (DiffCompression's "unknown"). */
export function mayBeMislabelled(mediaType: string): boolean {
  return mediaType === MediaTypeDockerSchema2Layer || mediaType === MediaTypeDockerSchema2LayerForeign;
}
