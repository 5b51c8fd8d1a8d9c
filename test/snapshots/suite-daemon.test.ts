/**
 * containerd's snapshotter behaviours through the gRPC API: against stratad's namespaced snapshots service,
 * and against stratad serving a second process (`stratad serve-snapshotter`) as a proxy plugin.
 */
import { afterAll, beforeAll } from 'vitest';
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { serveSnapshotter, type ServedBackend } from '../helpers/serve-snapshotter.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { ProxySnapshotter } from '../../src/api/clients/snapshotter.js';
import { snapshotterSuite } from './testsuite.js';

let direct: StartedDaemon;
let proxied: StartedDaemon;
let served: ServedBackend;
let servedDir: TempDir;
let n = 0;

beforeAll(async () => {
  direct = await startDaemon();
  servedDir = await tempDir('strata-served-');
  await mkdir(join(servedDir.path, 'root'));
  served = await serveSnapshotter('native', join(servedDir.path, 'root'), join(servedDir.path, 'sn.sock'));
  proxied = await startDaemon({ config: `[proxy_plugins.remote]\ntype = "snapshot"\naddress = "${served.address}"\n` });
});

afterAll(async () => {
  await stopAll();
  await served?.stop();
  await direct?.dir.cleanup();
  await proxied?.dir.cleanup();
  await servedDir?.cleanup();
});

// Each case gets its own namespace on the shared daemon: namespaces are separate key spaces.
snapshotterSuite('stratad snapshots API (native)', async () => {
  const ns = `suite-${++n}`;
  const open = async () => new ProxySnapshotter(direct.address, 'native', ns);
  return {
    sn: await open(),
    root: join(direct.root, 'io.containerd.snapshotter.v1.native'),
    cleanup: async () => undefined,
    reopen: open,
  };
});

snapshotterSuite('stratad proxying serve-snapshotter (native)', async () => {
  const ns = `proxied-${++n}`;
  const open = async () => new ProxySnapshotter(proxied.address, 'remote', ns);
  return { sn: await open(), root: join(servedDir.path, 'root'), cleanup: async () => undefined, reopen: open };
});

snapshotterSuite('stratad snapshots API (overlayfs)', async () => {
  const ns = `overlay-${++n}`;
  const open = async () => new ProxySnapshotter(direct.address, 'overlayfs', ns);
  return {
    sn: await open(),
    root: join(direct.root, 'io.containerd.snapshotter.v1.overlayfs'),
    cleanup: async () => undefined,
    reopen: open,
  };
});
