/** Entry of the lazyfs process (lazyfs.ts), spawned detached by the stargz snapshotter (client.ts). */
import { runLazyfs } from './lazyfs.js';

void runLazyfs(process.argv.slice(2)).catch((err: unknown) => {
  process.stderr.write(`lazyfs: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
