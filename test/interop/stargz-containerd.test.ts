/**
 * stargz-snapshotter's own tools against Strata's stargz snapshotter: an image converted by `ctr-remote image
 * optimize --no-optimize --oci` (built offline from Debian's sources) through containerd 1.6 and pushed to the
 * loopback registry (behind a counting proxy), then
 *  - containerd 1.6 with `stratad serve-snapshotter --snapshotter stargz` as its proxy plugin `stargz`:
 *    `ctr-remote image rpull` (stargz-snapshotter's client, which sets its labels) and `ctr run`;
 *  - stratad with its built-in stargz snapshotter: `strata image pull --snapshotter stargz` and `strata run`;
 * both before the image is fetched: only Range requests for the layers, fewer bytes than the image.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ctrAt, exec, mountsUnder, startContainerd, unmountUnder, type StartedContainerd } from '../helpers/containerd.js';
import { run as runCmd } from '../helpers/ctr.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { ctrRemoteBinary } from '../helpers/estargz.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { serveSnapshotter, type ServedBackend } from '../helpers/serve-snapshotter.js';
import { buildLazyImage, stopLazyfs, type LazyImage } from '../helpers/stargz.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let t: TempDir;
let registry: StartedRegistry;
let proxy: CountingProxy;
let plain: LazyImage;
let served: ServedBackend;
let c: StartedContainerd;
let d: StartedDaemon | undefined;
let snRoot: string;
let CONVERTED: string;
let convertedLayers: { digest: string; size: number }[] = [];

const layerGets = (from: number) =>
  proxy.requests.slice(from).filter((r) => r.method === 'GET' && convertedLayers.some((l) => l.digest === r.digest));

beforeAll(async () => {
  t = await tempDir('strata-stargz-ctrd-');
  registry = await startRegistry();
  proxy = await startCountingProxy(registry.host);
  plain = await buildLazyImage(t.path, { estargz: false, files: 6, fileSize: 2 << 20 });
  await registry.pushOciLayout(plain.layoutDir, 'lazy/plain:v1');
  snRoot = join(t.path, 'sn');
  await mkdir(snRoot);
  // No background fetch: the bytes a test counts are the ones its reads needed.
  const cfg = join(t.path, 'sn.toml');
  await writeFile(cfg, `version = 2\n[plugins."io.containerd.snapshotter.v1.stargz"]\n  background_fetch = false\n`);
  served = await serveSnapshotter('stargz', snRoot, join(t.path, 'sn.sock'), { config: cfg });
  c = await startContainerd({ config: `[proxy_plugins.stargz]\n  type = "snapshot"\n  address = "${served.address}"\n` });

  // Converted by stargz-snapshotter's tool, in containerd, and pushed.
  const ctrRemote = await ctrRemoteBinary();
  const src = `${registry.host}/lazy/plain:v1`;
  const dst = `${registry.host}/lazy/ctr-remote:v1`;
  for (const [bin, args] of [
    ['ctr', ['image', 'pull', '--plain-http', src]],
    [ctrRemote, ['image', 'optimize', '--no-optimize', '--oci', src, dst]],
    ['ctr', ['image', 'push', '--plain-http', dst]],
  ] as const) {
    const r = await exec(bin, ['--address', c.address, '--namespace', 'convert', ...args], { timeoutMs: 180_000 });
    expect(r.code, `${bin} ${args.join(' ')}: ${r.stderr}${r.stdout}`).toBe(0);
  }
  CONVERTED = `${proxy.host}/lazy/ctr-remote:v1`;
  const res = await fetch(`${registry.url}/v2/lazy/ctr-remote/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
  const m = (await res.json()) as { layers: { digest: string; size: number; annotations?: Record<string, string> }[] };
  convertedLayers = m.layers;
  expect(m.layers.every((l) => l.annotations?.['containerd.io/snapshot/stargz/toc.digest'])).toBe(true);
}, 300_000);

afterAll(async () => {
  if (c) {
    await ctrAt(c.address, ['image', 'rm', '--sync', CONVERTED ?? ''], 'rpull').catch(() => undefined);
    await c.stop();
  }
  if (d) {
    await stopLazyfs(join(d.root, 'io.containerd.snapshotter.v1.stargz'));
    await stopAll();
    await d.dir.cleanup();
  }
  await served?.stop();
  if (snRoot) await stopLazyfs(snRoot);
  await c?.dir.cleanup();
  await proxy?.stop();
  await stopAllRegistries();
  if (t) {
    await unmountUnder(t.path);
    expect(await mountsUnder(t.path)).toEqual([]);
    await t.cleanup();
  }
});

describe('ctr-remote converted images on Strata stargz snapshotter', () => {
  it('containerd 1.6 rpulls with ctr-remote through the served snapshotter and runs the image before fetching it', async () => {
    const ctrRemote = await ctrRemoteBinary();
    const before = proxy.requests.length;
    const pulled = await exec(ctrRemote, ['--address', c.address, '--namespace', 'rpull', 'image', 'rpull', '--plain-http', CONVERTED], { timeoutMs: 120_000 });
    expect(pulled.code, pulled.stderr + pulled.stdout + c.logs().slice(-3000) + served.logs().slice(-3000)).toBe(0);
    // The layers were never downloaded: Range requests only (footer, TOC, prefetch span).
    expect(layerGets(before).length).toBeGreaterThan(0);
    expect(layerGets(before).every((r) => r.range !== undefined)).toBe(true);
    const snaps = await ctrAt(c.address, ['snapshot', '--snapshotter', 'stargz', 'ls'], 'rpull');
    expect(snaps.stdout.match(/Committed/g)).toHaveLength(convertedLayers.length);

    const f = plain.files[3]!;
    const r = await ctrAt(c.address, ['run', '--rm', '--snapshotter', 'stargz', CONVERTED, 'lazy-ctr', 'md5sum', f.path], 'rpull');
    expect(r.code, r.stderr + served.logs().slice(-3000)).toBe(0);
    expect(r.stdout).toBe(`${f.md5}  ${f.path}\n`);
    const fetched = layerGets(before).reduce((n, q) => n + q.bytes, 0);
    const total = convertedLayers.reduce((n, l) => n + l.size, 0);
    expect(fetched).toBeLessThan(total / 2);
    expect(layerGets(before).every((q) => q.range !== undefined)).toBe(true);
  });

  it('strata pulls the same image lazily with its built-in stargz snapshotter and runs it', async () => {
    d = await startDaemon({ config: `[plugins."io.containerd.snapshotter.v1.stargz"]\n  background_fetch = false\n` });
    const strata = (args: string[]) => runCmd(STRATA, ['--address', d!.address, '--namespace', 'lazy', ...args], { timeoutMs: 120_000 });
    const before = proxy.requests.length;
    const pulled = await strata(['image', 'pull', '--snapshotter', 'stargz', CONVERTED]);
    expect(pulled.code, pulled.stderr).toBe(0);
    expect(pulled.stderr.match(/: exists .* remote snapshot/g)).toHaveLength(convertedLayers.length);
    const f = plain.files[5]!;
    const r = await strata(['run', '--rm', '--snapshotter', 'stargz', CONVERTED, 'lazy-strata', 'md5sum', f.path]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${f.md5}  ${f.path}\n`);
    const fetched = layerGets(before).reduce((n, q) => n + q.bytes, 0);
    expect(fetched).toBeLessThan(convertedLayers.reduce((n, l) => n + l.size, 0) / 2);
    expect(layerGets(before).every((q) => q.range !== undefined)).toBe(true);
  });
});
