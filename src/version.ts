/** Strata's version, reported by the version service and `strata version`. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The checkout's package.json, found from this file whether it runs from src/ or from dist/src/. */
function findPackageJson(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'package.json');
    if (existsSync(candidate)) return candidate;
    const up = dirname(dir);
    if (up === dir) throw new Error('package.json not found above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

const pkg = JSON.parse(readFileSync(findPackageJson(), 'utf8')) as { version: string };

export const STRATA_VERSION = `v${pkg.version}`;

/** The checkout's git commit, read from .git without running git; "unknown" outside a checkout. */
function gitRevision(repo: string): string {
  try {
    const head = readFileSync(join(repo, '.git', 'HEAD'), 'utf8').trim();
    if (!head.startsWith('ref: ')) return head;
    const ref = head.slice(5);
    const loose = join(repo, '.git', ref);
    if (existsSync(loose)) return readFileSync(loose, 'utf8').trim();
    const packed = readFileSync(join(repo, '.git', 'packed-refs'), 'utf8');
    return packed.split('\n').find((l) => l.endsWith(` ${ref}`))?.split(' ')[0] ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** STRATA_REVISION in the environment wins (for packaged builds). */
export const STRATA_REVISION = process.env.STRATA_REVISION ?? gitRevision(dirname(findPackageJson()));
