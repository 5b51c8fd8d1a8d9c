/**
 * Builds dist/ once per test run so that daemon tests exercise the code under test. A type error fails the
 * run; STRATA_TEST_ALLOW_TYPE_ERRORS=1 (for local work in progress) only warns, since tsc still emits.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export default function setup(): void {
  // Several people testing in one tree at once: let one of them build.
  if (process.env.STRATA_TEST_SKIP_BUILD === '1') return;
  const repo = fileURLToPath(new URL('../..', import.meta.url));
  try {
    execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], { cwd: repo, stdio: 'inherit' });
  } catch (err) {
    if (process.env.STRATA_TEST_ALLOW_TYPE_ERRORS !== '1') throw err;
    process.stderr.write('warning: type errors (STRATA_TEST_ALLOW_TYPE_ERRORS=1): testing what tsc emitted\n');
  }
}
