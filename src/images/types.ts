/**
 * The image contracts shared by the image store, the registry client, pull/push/unpack and import/export.
 * Shapes follow the OCI image spec (JSON field names) so descriptors can be written into manifests as is.
 */

/** An OCI platform (image-spec `platform` object). */
export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

/** An OCI content descriptor. `size` is a byte count (blobs here stay below 2^53). */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: Platform;
}

/** An image record: a name pointing at a root descriptor (manifest or index), as containerd stores it. */
export interface Image {
  name: string;
  target: Descriptor;
  labels: Record<string, string>;
  createdAt: Date;
  updatedAt: Date;
}

/**
 * The image store of one namespace (bound from the metadata store's NamespacedImages with an OpContext).
 * Errors: 'not found', 'already exists', 'invalid argument' (bad name, empty target fields, bad labels).
 * Every change publishes /images/create|update|delete on the event exchange.
 */
export interface ImageStore {
  get(name: string): Promise<Image>;
  /** containerd filter syntax on name, target.mediatype, target.digest, labels.* (any filter matches). */
  list(filters?: string[]): Promise<Image[]>;
  create(image: Pick<Image, 'name' | 'target'> & { labels?: Record<string, string> }): Promise<Image>;
  /**
   * containerd field paths: 'labels', 'labels.<key>', 'target', 'annotations'... ; none = replace labels and
   * target. The name cannot change.
   */
  update(image: Pick<Image, 'name'> & Partial<Pick<Image, 'target' | 'labels'>>, fieldpaths?: string[]): Promise<Image>;
  delete(name: string): Promise<void>;
}

// Media types of manifests, indexes and configs (layers: src/diff/mediatypes.ts).
export const MediaTypeOCIManifest = 'application/vnd.oci.image.manifest.v1+json';
export const MediaTypeOCIIndex = 'application/vnd.oci.image.index.v1+json';
export const MediaTypeOCIConfig = 'application/vnd.oci.image.config.v1+json';
export const MediaTypeDockerManifest = 'application/vnd.docker.distribution.manifest.v2+json';
export const MediaTypeDockerManifestList = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const MediaTypeDockerConfig = 'application/vnd.docker.container.image.v1+json';

// Labels containerd's GC and distribution code read.
export const LABEL_GC_REF_CONTENT = 'containerd.io/gc.ref.content';
export const LABEL_GC_REF_SNAPSHOT = 'containerd.io/gc.ref.snapshot';
export const LABEL_UNCOMPRESSED = 'containerd.io/uncompressed';
export const LABEL_DISTRIBUTION_SOURCE = 'containerd.io/distribution.source';
/** The annotation naming an image in an OCI layout index. */
export const ANNOTATION_REF_NAME = 'org.opencontainers.image.ref.name';
/** containerd's annotation with the full image name in exported indexes. */
export const ANNOTATION_IMAGE_NAME = 'io.containerd.image.name';
