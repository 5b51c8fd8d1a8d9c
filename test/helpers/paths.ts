import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../..', import.meta.url));
export const STRATAD = `${REPO}bin/stratad`;
export const STRATA = `${REPO}bin/strata`;
