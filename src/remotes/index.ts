/** The registry client's public API (see docs/registry.md). */
export type { ByteBudget, Credentials, FetchOpts, Fetcher, MultipartOptions, Pusher, Resolved, Resolver, ResolverOptions } from './types.js';
export { Budget, MIN_PART_SIZE, MultipartStream } from './multipart.js';
export { createResolver, isManifestType, MAX_MANIFEST_SIZE, MediaTypeDockerSchema1Manifest, type RegistryResolver, type ResolverInternals } from './resolver.js';
export {
  apiHost,
  DEFAULT_DOMAIN,
  DOCKER_IO_API_HOST,
  familiarName,
  isLocalhost,
  isValidDigest,
  isValidTag,
  normalizeReference,
  parseReference,
  validateDigest,
  type ParsedReference,
} from './reference.js';
export { credentialsFromDockerConfig, defaultDockerConfigPath, parseDockerConfig } from './dockerconfig.js';
export { configureHosts, hostDirCandidates, parseHostsToml, type HostCapability, type RegistryHost } from './hosts.js';
export { parseAuthHeader, normalizeScopes, repositoryScope, type Challenge } from './auth.js';
export { Limiter } from './limit.js';
