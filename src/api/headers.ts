/**
 * The gRPC metadata keys containerd's clients and servers share. A module of its own so that clients (the strata
 * CLI) import them without the server side's call handling and the metadata store behind it.
 */
export const NAMESPACE_HEADER = 'containerd-namespace';
export const LEASE_HEADER = 'containerd-lease';
