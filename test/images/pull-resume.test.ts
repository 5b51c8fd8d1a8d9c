/**
 * An interrupted pull resumes: stratad is killed (SIGKILL) in the middle of a layer download, restarted, and
 * the next pull continues the ingest from where it stopped (an HTTP Range request) instead of starting over.
 *
 * Fault injection, said plainly: a loopback TCP proxy in front of the real registry stops forwarding the
 * blob after a few MiB, so that the kill lands mid-download every time (a loopback registry would otherwise
 * finish before the test could react). The second pull goes to the registry directly.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildImage, type BuiltImage } from '../helpers/images.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { listContent, pullImage } from '../helpers/transfer.js';
import type { Progress } from '../../src/api/gen/strata/services/transfer/v1/transfer.js';

let reg: StartedRegistry;
let dir: TempDir;
let img: BuiltImage;
let proxy: Server;
const sockets = new Set<Socket>();

const LAYER_BYTES = 24 << 20;
const STALL_AFTER = 6 << 20;

/** Forwards to the registry; each response stream stalls (stays open, sends nothing) after STALL_AFTER bytes. */
function stallingProxy(target: { host: string; port: number }): Promise<number> {
  proxy = createServer((client) => {
    const upstream = connect(target.port, target.host);
    sockets.add(client).add(upstream);
    let sent = 0;
    client.pipe(upstream);
    upstream.on('data', (chunk: Buffer) => {
      if (sent >= STALL_AFTER) return;
      const room = STALL_AFTER - sent;
      client.write(chunk.length > room ? chunk.subarray(0, room) : chunk);
      sent += Math.min(chunk.length, room);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  });
  return new Promise((resolve) => proxy.listen(0, '127.0.0.1', () => resolve((proxy.address() as { port: number }).port)));
}

beforeAll(async () => {
  dir = await tempDir();
  reg = await startRegistry();
  img = await buildImage(dir.path, {
    basename: 'big',
    platforms: [{ layers: [{ compression: 'none', entries: [{ path: 'blob.bin', content: randomBytes(LAYER_BYTES) }] }] }],
  });
  await reg.pushOciLayout(img.layoutDir, 'big:latest');
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  proxy?.close();
  await stopAll();
  await stopAllRegistries();
  await dir.cleanup();
});

it('a pull killed mid-layer resumes from its offset after a restart, and the blob verifies', async () => {
  const [host, port] = reg.host.split(':');
  const proxyPort = await stallingProxy({ host: host!, port: Number(port) });
  const layer = img.manifests[0]!.layers[0]!.descriptor;

  const d1: StartedDaemon = await startDaemon();
  const c1 = d1.client('resume');
  // Watch the first pull until the layer has a few MiB, then kill the daemon.
  const seen: Progress[] = [];
  const stream = c1.transfer.pull(
    {
      ref: `127.0.0.1:${proxyPort}/big:latest`,
      platforms: [],
      allPlatforms: false,
      unpack: true,
      snapshotter: '',
      registry: { plainHttp: true, username: '', secret: '', hostsDir: '', maxConcurrent: 0 },
      labels: {},
    },
    c1.metadata(),
  );
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (p: Progress) => {
      seen.push(p);
      if (p.ref === layer.digest && p.status === 'downloading' && p.offset >= 2 << 20) resolve();
    });
    stream.on('error', () => undefined);
    stream.on('end', () => reject(new Error(`pull ended before the kill: ${JSON.stringify(seen)}`)));
  });
  await d1.kill9();
  stream.cancel();

  const d2 = await d1.restart();
  const c2 = d2.client('resume');
  const { statuses } = await c2.call(c2.content, c2.content.listStatuses, { filters: [] });
  const ingest = statuses.find((s) => s.ref === `layer-${layer.digest}`);
  expect(ingest, JSON.stringify(statuses)).toBeDefined();
  expect(ingest!.offset).toBeGreaterThan(0);
  expect(ingest!.offset).toBeLessThan(layer.size);

  const progress = await pullImage(c2, `${reg.host}/big:latest`);
  const resumed = progress.find((p) => p.ref === layer.digest && p.status === 'resuming');
  expect(resumed, JSON.stringify(progress.filter((p) => p.ref === layer.digest))).toBeDefined();
  expect(resumed!.offset).toBe(ingest!.offset);
  const info = (await listContent(c2)).find((i) => i.digest === layer.digest);
  expect(info?.size).toBe(layer.size);
  expect((await c2.call(c2.content, c2.content.listStatuses, { filters: [] })).statuses).toEqual([]);
});
