import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The VM tier runs in a QEMU guest: vitest.vm.config.ts, scripts/vm/run.sh (docs/vm-tier.md).
    exclude: ['test/vm/**', '**/node_modules/**'],
    // Daemon tests spawn the compiled stratad: build once before any test runs.
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: run files in parallel, but not more than the machine has.
    maxWorkers: 2,
    reporters: ['default', './test/helpers/summary-reporter.ts'],
  },
});
