import { fileURLToPath } from 'node:url';

/** The repository root, also when this module runs compiled from dist/test/helpers (benchmarks use it). */
const here = fileURLToPath(new URL('../..', import.meta.url));
export const REPO = here.endsWith('/dist/') ? here.slice(0, -'dist/'.length) : here;
export const STRATAD = `${REPO}bin/stratad`;
export const STRATA = `${REPO}bin/strata`;
