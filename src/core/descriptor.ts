/**
 * OCI content descriptors and platforms: the shapes of the image spec (JSON field names), so descriptors can be
 * written into manifests as they are.
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
