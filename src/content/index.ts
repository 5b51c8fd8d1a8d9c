/** The content subsystem: the store contract, digest helpers and the local (on-disk) store. */
export type * from './types.js';
export {
  DIGEST_ALGORITHMS,
  Digester,
  digestOf,
  isDigestAlgorithm,
  isValidDigest,
  isValidHex,
  parseDigest,
  type DigestAlgorithm,
} from './digest.js';
export { openLocalContentStore, type LocalBlobInfo, type LocalContentStore } from './local.js';
