/**
 * The image contracts shared by the image store, the registry client, pull/push/unpack and import/export.
 * Shapes follow the OCI image spec (JSON field names) so descriptors can be written into manifests as is.
 */

// Media types of manifests, indexes and configs: their home is src/core/mediatypes.ts.
export {
  MediaTypeDockerConfig,
  MediaTypeDockerManifest,
  MediaTypeDockerManifestList,
  MediaTypeOCIConfig,
  MediaTypeOCIIndex,
  MediaTypeOCIManifest,
} from '../core/mediatypes.js';

/** The annotation naming an image in an OCI layout index. */
export const ANNOTATION_REF_NAME = 'org.opencontainers.image.ref.name';
/** containerd's annotation with the full image name in exported indexes. */
export const ANNOTATION_IMAGE_NAME = 'io.containerd.image.name';
