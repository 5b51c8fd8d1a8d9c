/**
 * Media types of manifests, indexes and configs (layers: src/diff/mediatypes.ts). Here, at the bottom, because
 * both the registry client (src/remotes) and the image store read them.
 */
export const MediaTypeOCIManifest = 'application/vnd.oci.image.manifest.v1+json';
export const MediaTypeOCIIndex = 'application/vnd.oci.image.index.v1+json';
export const MediaTypeOCIConfig = 'application/vnd.oci.image.config.v1+json';
export const MediaTypeDockerManifest = 'application/vnd.docker.distribution.manifest.v2+json';
export const MediaTypeDockerManifestList = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const MediaTypeDockerConfig = 'application/vnd.docker.container.image.v1+json';
