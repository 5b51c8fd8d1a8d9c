import { fileURLToPath } from 'node:url';

/** The repository root, also when this module runs compiled from dist/test/helpers (benchmarks use it). */
const here = fileURLToPath(new URL('../..', import.meta.url));
export const REPO = here.endsWith('/dist/') ? here.slice(0, -'dist/'.length) : here;
export const STRATAD = `${REPO}bin/stratad`;
export const STRATA = `${REPO}bin/strata`;

/**
 * How long a helper waits for a process it started (stratad, serve-snapshotter, containerd, docker-registry)
 * to serve: 20 s on a host, 5 minutes in the VM tier's guest (scripts/vm/run.sh sets STRATA_VM=1), where
 * software emulation makes a Node daemon's start take tens of seconds on a busy machine.
 */
export const START_TIMEOUT_MS = process.env.STRATA_VM === '1' ? 300_000 : 20_000;
