/**
 * Where this checkout's native parts are (`native/bin`, built by scripts/build-native.sh, gitignored): from
 * src/<folder> under the test runner and from dist/src/<folder> in the build.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const CANDIDATES = ['../../native/bin/', '../../../native/bin/'].map((rel) => fileURLToPath(new URL(rel, import.meta.url)));

/** The path of a built native part, or undefined when it is not built. */
export function nativeArtifact(name: string): string | undefined {
  return CANDIDATES.map((dir) => dir + name).find((p) => existsSync(p));
}

/** Where a native part would be when built (for messages and overrides): the checkout's native/bin. */
export function nativeArtifactDefault(name: string): string {
  return CANDIDATES[0]! + name;
}
