/**
 * What every namespaced operation carries: the namespace (required) and, optionally, the lease that objects
 * created by the operation are attached to. The gRPC layer builds it from the `containerd-namespace` and
 * `containerd-lease` headers; in-process callers build it directly.
 */
import { invalidArgument } from '../core/errdefs.js';
import { validateIdentifier } from '../core/identifiers.js';

export interface OpContext {
  namespace: string;
  lease?: string;
}

export function requireNamespace(namespace: string | undefined): string {
  if (!namespace) throw invalidArgument('namespace is required');
  validateIdentifier(namespace);
  return namespace;
}
