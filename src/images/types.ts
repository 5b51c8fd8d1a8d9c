/**
 * The image contracts shared by the image store, the registry client, pull/push/unpack and import/export.
 * Shapes follow the OCI image spec (JSON field names) so descriptors can be written into manifests as is.
 */

// Media types of manifests, indexes and configs (layers: src/diff/mediatypes.ts).
export const MediaTypeOCIManifest = 'application/vnd.oci.image.manifest.v1+json';
export const MediaTypeOCIIndex = 'application/vnd.oci.image.index.v1+json';
export const MediaTypeOCIConfig = 'application/vnd.oci.image.config.v1+json';
export const MediaTypeDockerManifest = 'application/vnd.docker.distribution.manifest.v2+json';
export const MediaTypeDockerManifestList = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const MediaTypeDockerConfig = 'application/vnd.docker.container.image.v1+json';

/** The annotation naming an image in an OCI layout index. */
export const ANNOTATION_REF_NAME = 'org.opencontainers.image.ref.name';
/** containerd's annotation with the full image name in exported indexes. */
export const ANNOTATION_IMAGE_NAME = 'io.containerd.image.name';
