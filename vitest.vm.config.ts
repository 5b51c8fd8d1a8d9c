import { defineConfig } from 'vitest/config';

/**
 * The VM tier: tests that need a kernel the host may not have (device-mapper thin pools...). They run inside
 * the QEMU guest of scripts/vm/run.sh, one boot for the whole run:
 *
 *   scripts/vm/run.sh -- npx vitest run -c vitest.vm.config.ts
 *
 * `npm test` (vitest.config.ts) does not include test/vm. No build step: these tests import src/ directly.
 */
export default defineConfig({
  test: {
    include: ['test/vm/**/*.test.ts'],
    testTimeout: 300_000,
    hookTimeout: 300_000,
    maxWorkers: 1,
    // One line per test as it finishes: the run's progress is readable on the serial console, and a run
    // stopped midway still says what passed.
    reporters: ['verbose'],
  },
});
