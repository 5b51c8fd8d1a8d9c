/**
 * What every namespaced operation carries: the namespace (required) and, optionally, the lease that objects
 * created by the operation are attached to. The gRPC layer builds it from the `containerd-namespace` and
 * `containerd-lease` headers; in-process callers build it directly.
 */
import { failedPrecondition } from '../core/errdefs.js';
import { validateIdentifier } from '../core/identifiers.js';

export interface OpContext {
  namespace: string;
  lease?: string;
}

/** containerd's NamespaceRequired: none is FAILED_PRECONDITION, an invalid one INVALID_ARGUMENT. */
export function requireNamespace(namespace: string | undefined): string {
  if (!namespace) throw failedPrecondition('namespace is required');
  validateIdentifier(namespace);
  return namespace;
}
