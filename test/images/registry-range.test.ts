/**
 * Bounded Range reads through src/remotes (FetchOpts.length, onBlobSize), as the stargz snapshotter's lazyfs
 * reads a layer: against the loopback registry behind a counting proxy that records each request's Range.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createResolver } from '../../src/remotes/index.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { buildLazyImage, type LazyImage } from '../helpers/stargz.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let t: TempDir;
let registry: StartedRegistry;
let proxy: CountingProxy;
let image: LazyImage;
let blob: Buffer;

beforeAll(async () => {
  t = await tempDir('strata-range-');
  registry = await startRegistry();
  proxy = await startCountingProxy(registry.host);
  image = await buildLazyImage(t.path, { estargz: false, files: 1, fileSize: 256 << 10 });
  await registry.pushOciLayout(image.layoutDir, 'range/img:v1');
  const { readFile } = await import('node:fs/promises');
  blob = await readFile(`${image.layoutDir}/blobs/sha256/${image.layers[1]!.digest.slice(7)}`);
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  await stopAllRegistries();
  await t?.cleanup();
});

async function collect(s: AsyncIterable<unknown>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

describe('bounded Range reads of a blob', () => {
  it('reads exactly the bytes asked for with one bounded Range request, and learns the blob size from it', async () => {
    const fetcher = createResolver().fetcher(`${proxy.host}/range/img:v1`);
    const layer = image.layers[1]!;
    let size = -1;
    const before = proxy.requests.length;
    const got = await collect(await fetcher.fetch({ mediaType: 'application/octet-stream', digest: layer.digest, size: -1 }, { offset: 1000, length: 4096, onBlobSize: (n) => (size = n) }));
    expect(got.equals(blob.subarray(1000, 1000 + 4096))).toBe(true);
    expect(size).toBe(blob.length);
    const reqs = proxy.requests.slice(before).filter((r) => r.method === 'GET');
    expect(reqs).toHaveLength(1);
    expect(reqs[0]!.range).toBe('bytes=1000-5095');
    expect(reqs[0]!.bytes).toBe(4096);
  });

  it('stops at the end of a blob whose size is unknown, and never asks past the end of one whose size is known', async () => {
    const fetcher = createResolver().fetcher(`${proxy.host}/range/img:v1`);
    const layer = image.layers[1]!;
    const tail = await collect(await fetcher.fetch({ mediaType: 'application/octet-stream', digest: layer.digest, size: -1 }, { offset: blob.length - 10, length: 100 }));
    expect(tail.equals(blob.subarray(blob.length - 10))).toBe(true);
    const before = proxy.requests.length;
    const known = await collect(await fetcher.fetch({ mediaType: 'application/octet-stream', digest: layer.digest, size: blob.length }, { offset: blob.length - 10, length: 100 }));
    expect(known.equals(blob.subarray(blob.length - 10))).toBe(true);
    expect(proxy.requests.slice(before)[0]!.range).toBe(`bytes=${blob.length - 10}-${blob.length - 1}`);
    await expect(fetcher.fetch({ mediaType: 'application/octet-stream', digest: layer.digest, size: blob.length }, { offset: 0, length: 0 })).rejects.toThrow(/length 0 must be positive/);
  });
});
