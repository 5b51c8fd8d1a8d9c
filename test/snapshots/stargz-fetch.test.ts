/**
 * How the stargz snapshotter's lazyfs reads the registry (issue 15): the TOCs of the layers that follow a
 * prepared one (`stargz.layers`) are read ahead, in parallel; and when the registry goes wrong after a layer is
 * mounted, a Range read that fails falls back to one download of the whole blob, from which the reads are
 * served, while a registry that does not answer at all makes reads of files not yet fetched fail with EIO within
 * the fetch timeout (never hang), lazyfs says so in its log, and they work again once the registry answers.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_SNAPSHOT_REF, LABEL_STARGZ_DIGEST, LABEL_STARGZ_LAYERS, LABEL_STARGZ_REFERENCE, LABEL_STARGZ_TOC_DIGEST } from '../../src/core/labels.js';
import { isAlreadyExists } from '../../src/core/errdefs.js';
import { chainIDs } from '../../src/images/manifest.js';
import { withTempMount } from '../../src/mount/index.js';
import { openStargzSnapshotter } from '../../src/snapshots/stargz/index.js';
import type { Snapshotter } from '../../src/snapshots/types.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { REPO } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { buildLazyImage, stopLazyfs, type LazyImage } from '../helpers/stargz.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const LAZYFS = join(REPO, 'dist', 'src', 'snapshots', 'stargz', 'lazyfs-main.js');
const FETCH_TIMEOUT_MS = 1500;

let t: TempDir;
let registry: StartedRegistry;
let proxy: CountingProxy;
let lazy: LazyImage;
const roots: string[] = [];

beforeAll(async () => {
  t = await tempDir('strata-stargz-offline-');
  registry = await startRegistry();
  proxy = await startCountingProxy(registry.host);
  lazy = await buildLazyImage(t.path, { estargz: true, files: 4, fileSize: 2 << 20, chunk: 1 << 20 });
  await registry.pushOciLayout(lazy.layoutDir, 'offline/app:v1');
}, 180_000);

afterAll(async () => {
  for (const r of roots) await stopLazyfs(r);
  await proxy?.stop();
  await stopAllRegistries();
  await t?.cleanup();
});

/**
 * A snapshotter on a fresh root with both layers mounted lazily (no background fetch): its chain. `between` runs
 * after the first layer's prepare and before the second's.
 */
async function mounted(name: string, between?: () => Promise<void>): Promise<{ sn: Snapshotter; root: string; chain: string[] }> {
  const root = join(t.path, name);
  roots.push(root);
  const sn = await openStargzSnapshotter(root, { lazyfs: { entry: LAZYFS, idleExitMs: 120_000, fetchTimeoutMs: FETCH_TIMEOUT_MS }, policy: { background: false } });
  const chain = chainIDs(lazy.layers.map((l) => l.diffID));
  let parent = '';
  for (let i = 0; i < lazy.layers.length; i++) {
    const l = lazy.layers[i]!;
    const labels = {
      [LABEL_SNAPSHOT_REF]: chain[i]!,
      [LABEL_STARGZ_REFERENCE]: `${proxy.host}/offline/app:v1`,
      [LABEL_STARGZ_DIGEST]: l.digest,
      [LABEL_STARGZ_LAYERS]: lazy.layers.slice(i).map((x) => x.digest).join(','),
      ...(l.tocDigest ? { [LABEL_STARGZ_TOC_DIGEST]: l.tocDigest } : {}),
    };
    const err = await sn.prepare(`extract-${i}`, parent, { labels }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isAlreadyExists(err)).toBe(true);
    parent = chain[i]!;
    if (i === 0) await between?.();
  }
  return { sn, root, chain };
}

const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

describe('the stargz snapshotter reading ahead', () => {
  it('reads the TOC of the next layer (stargz.layers) while preparing the first, and mounts it without reading it again', async () => {
    const next = lazy.layers[1]!;
    const tailReads = () =>
      proxy.requests.filter((r) => r.method === 'GET' && r.digest === next.digest && r.range !== undefined && r.range.endsWith(`-${next.size - 1}`)).length;
    const before = tailReads();
    let during = 0;
    const { sn } = await mounted('root-ahead', async () => {
      // The second layer's prepare has not come yet: its tail (footer and TOC) is being read, or read already.
      for (let i = 0; i < 100 && tailReads() === before; i++) await new Promise((r) => setTimeout(r, 50));
      during = tailReads() - before;
    });
    try {
      expect(during).toBe(1);
      // Its own prepare used what was read ahead.
      expect(tailReads() - before).toBe(1);
    } finally {
      await sn.close();
    }
  });
});

describe('the stargz snapshotter with its registry gone wrong after the mount', () => {
  it('serves a file whose Range reads are refused from one download of the whole layer', async () => {
    const { sn, chain } = await mounted('root-range');
    const dataLayer = lazy.layers[1]!;
    try {
      const mounts = await sn.view('reader', chain[1]!);
      const got = await withTempMount(mounts, async (dir) => {
        proxy.fault = 'refuse-range';
        try {
          return [md5(await readFile(join(dir, lazy.files[1]!.path))), md5(await readFile(join(dir, lazy.files[2]!.path)))];
        } finally {
          proxy.fault = 'none';
        }
      });
      expect(got).toEqual([lazy.files[1]!.md5, lazy.files[2]!.md5]);
      const gets = proxy.requests.filter((r) => r.method === 'GET' && r.digest === dataLayer.digest);
      // A Range read was refused, then the whole blob came in one GET without a Range.
      expect(gets.some((r) => r.status === 503 && r.range !== undefined)).toBe(true);
      const whole = gets.filter((r) => r.range === undefined && r.status === 200);
      expect(whole).toHaveLength(1);
      expect(whole[0]!.bytes).toBe(dataLayer.size);
      await sn.remove('reader');
    } finally {
      await sn.close();
    }
  });

  it('fails reads of files not yet fetched with EIO within the fetch timeout when the registry stops answering, logs it, and reads again once it answers', async () => {
    const { sn, root, chain } = await mounted('root-stall');
    try {
      const mounts = await sn.view('reader', chain[1]!);
      await withTempMount(mounts, async (dir) => {
        // Read before: cached, so it keeps working while the registry is away.
        const before = md5(await readFile(join(dir, lazy.files[0]!.path)));
        expect(before).toBe(lazy.files[0]!.md5);
        proxy.fault = 'stall';
        try {
          const started = Date.now();
          const err = await readFile(join(dir, lazy.files[3]!.path)).then(
            () => undefined,
            (e: NodeJS.ErrnoException) => e,
          );
          expect(err?.code).toBe('EIO');
          // The Range read and the whole-blob download each give up after the fetch timeout: no hang.
          expect(Date.now() - started).toBeLessThan(20 * FETCH_TIMEOUT_MS);
          // Already fetched: still served.
          expect(md5(await readFile(join(dir, lazy.files[0]!.path)))).toBe(lazy.files[0]!.md5);
          // Right after the failure, another read fails at once rather than waiting again.
          const again = Date.now();
          const err2 = await readFile(join(dir, lazy.files[2]!.path)).then(
            () => undefined,
            (e: NodeJS.ErrnoException) => e,
          );
          expect(err2?.code).toBe('EIO');
          expect(Date.now() - again).toBeLessThan(FETCH_TIMEOUT_MS);
        } finally {
          proxy.fault = 'none';
        }
        const log = await readFile(join(root, 'lazyfs.log'), 'utf8');
        expect(log).toMatch(/lazyfs: layer unreachable: reads of its files not yet fetched fail with EIO until the registry answers again/);
        expect(log).toContain(lazy.layers[1]!.digest);
        // The registry answers again: after the short retry pause, the same file reads.
        await new Promise((r) => setTimeout(r, 5_500));
        expect(md5(await readFile(join(dir, lazy.files[3]!.path)))).toBe(lazy.files[3]!.md5);
      });
      await sn.remove('reader');
    } finally {
      await sn.close();
    }
  });
});
