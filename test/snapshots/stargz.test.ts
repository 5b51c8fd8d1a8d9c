/**
 * The stargz snapshotter alone (src/snapshots/stargz), against the loopback registry behind a counting proxy:
 * the remote-snapshot handshake with stargz-snapshotter's labels, lazy reads through overlay (only Range
 * requests, fewer bytes than the layer), the fallback of a plain gzip layer, the lazyfs process outliving the
 * snapshotter and found again by a reopened one, remove and cleanup.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LABEL_LAZY_FALLBACK,
  LABEL_REMOTE_SNAPSHOT,
  LABEL_SNAPSHOT_REF,
  LABEL_STARGZ_DIGEST,
  LABEL_STARGZ_REFERENCE,
  LABEL_STARGZ_TOC_DIGEST,
} from '../../src/core/labels.js';
import { isAlreadyExists } from '../../src/core/errdefs.js';
import { withTempMount } from '../../src/mount/index.js';
import { LazyfsClient, openStargzSnapshotter } from '../../src/snapshots/stargz/index.js';
import { chainIDs } from '../../src/images/manifest.js';
import { silentLogger } from '../../src/log/index.js';
import { lazyfsMountsUnder } from '../../src/snapshots/stargz/mounts.js';
import type { Snapshotter } from '../../src/snapshots/types.js';
import { startCountingProxy, type CountingProxy } from '../helpers/counting-proxy.js';
import { REPO } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { alive, buildLazyImage, lazyfsPid, stopLazyfs, type LazyImage } from '../helpers/stargz.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const run = promisify(execFile);
const LAZYFS = join(REPO, 'dist', 'src', 'snapshots', 'stargz', 'lazyfs-main.js');

let t: TempDir;
let registry: StartedRegistry;
let proxy: CountingProxy;
let lazy: LazyImage;
let plain: LazyImage;
const roots: string[] = [];

beforeAll(async () => {
  t = await tempDir('strata-stargz-');
  registry = await startRegistry();
  proxy = await startCountingProxy(registry.host);
  lazy = await buildLazyImage(t.path, { estargz: true, files: 6, fileSize: 3 << 20, chunk: 1 << 20 });
  plain = await buildLazyImage(t.path, { estargz: false, files: 2, fileSize: 1 << 20 });
  await registry.pushOciLayout(lazy.layoutDir, 'lazy/app:v1');
  await registry.pushOciLayout(plain.layoutDir, 'lazy/plain:v1');
}, 180_000);

afterAll(async () => {
  for (const r of roots) await stopLazyfs(r);
  await proxy?.stop();
  await stopAllRegistries();
  await t?.cleanup();
});

async function open(root: string, policy: { background: boolean; backgroundDelayMs?: number } = { background: false }): Promise<Snapshotter> {
  if (!roots.includes(root)) roots.push(root);
  return openStargzSnapshotter(root, { lazyfs: { entry: LAZYFS, idleExitMs: 120_000 }, policy });
}

function labels(image: LazyImage, ref: string, i: number, chain: string[]): Record<string, string> {
  const l = image.layers[i]!;
  return {
    [LABEL_SNAPSHOT_REF]: chain[i]!,
    [LABEL_STARGZ_REFERENCE]: `${proxy.host}/${ref}`,
    [LABEL_STARGZ_DIGEST]: l.digest,
    ...(l.tocDigest ? { [LABEL_STARGZ_TOC_DIGEST]: l.tocDigest } : {}),
  };
}

/** The handshake for every layer of the image: the keys of the snapshots it left active (fallbacks). */
async function handshake(sn: Snapshotter, image: LazyImage, ref: string): Promise<{ remote: number; active: string[] }> {
  const chain = chainIDs(image.layers.map((l) => l.diffID));
  let parent = '';
  let remote = 0;
  const active: string[] = [];
  for (let i = 0; i < image.layers.length; i++) {
    const key = `extract-${i}-${Math.random()}`;
    try {
      await sn.prepare(key, parent, { labels: labels(image, ref, i, chain) });
      active.push(key);
      return { remote, active };
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      remote++;
    }
    parent = chain[i]!;
  }
  return { remote, active };
}

const bytesOf = (digest: string) => proxy.requests.filter((r) => r.digest === digest && r.method === 'GET').reduce((n, r) => n + r.bytes, 0);

describe('the stargz snapshotter', () => {
  it('answers the labelled prepare of an eStargz layer with ALREADY_EXISTS, a committed remote snapshot, read lazily with Range requests', async () => {
    const sn = await open(join(t.path, 'root-a'));
    try {
      const before = proxy.requests.length;
      const { remote } = await handshake(sn, lazy, 'lazy/app:v1');
      expect(remote).toBe(2);
      const chain = chainIDs(lazy.layers.map((l) => l.diffID));
      const top = await sn.stat(chain[1]!);
      expect(top.kind).toBe('committed');
      expect(top.parent).toBe(chain[0]);
      expect(top.labels[LABEL_REMOTE_SNAPSHOT]).toBe('remote snapshot');
      expect(top.labels[LABEL_SNAPSHOT_REF]).toBe(chain[1]);
      // Every request so far is a bounded Range request; the data layer is far from fetched.
      const made = proxy.requests.slice(before).filter((r) => r.method === 'GET');
      expect(made.length).toBeGreaterThan(0);
      expect(made.every((r) => r.range !== undefined && /^bytes=\d+-\d+$/.test(r.range))).toBe(true);
      const dataLayer = lazy.layers[1]!;
      expect(bytesOf(dataLayer.digest)).toBeLessThan(dataLayer.size / 4);

      // Reading one file through an overlay view of the chain fetches about that file.
      const mounts = await sn.view('reader', chain[1]!);
      const got = await withTempMount(mounts, async (dir) => {
        const f = lazy.files[3]!;
        const body = await readFile(join(dir, f.path));
        const ls = (await run('ls', [join(dir, 'bin')])).stdout;
        return { md5: createHash('md5').update(body).digest('hex'), want: f.md5, ls };
      });
      expect(got.md5).toBe(got.want);
      expect(got.ls).toContain('busybox');
      const fetched = bytesOf(dataLayer.digest);
      expect(fetched).toBeGreaterThanOrEqual(3 << 20);
      expect(fetched).toBeLessThan(dataLayer.size / 2);
      expect(proxy.requests.filter((r) => r.method === 'GET' && r.digest === dataLayer.digest).every((r) => r.range !== undefined)).toBe(true);
      await sn.remove('reader');
    } finally {
      await sn.close();
    }
  });

  it('prepares a plain gzip layer the ordinary way, with the reason in the lazy-fallback label', async () => {
    const sn = await open(join(t.path, 'root-b'));
    try {
      const { remote, active } = await handshake(sn, plain, 'lazy/plain:v1');
      expect(remote).toBe(0);
      expect(active).toHaveLength(1);
      const info = await sn.stat(active[0]!);
      expect(info.kind).toBe('active');
      expect(info.labels[LABEL_LAZY_FALLBACK]).toMatch(/eStargz/i);
      // An ordinary snapshot: a writable directory.
      const mounts = await sn.mounts(active[0]!);
      expect(mounts[0]!.type).toBe('bind');
      await sn.remove(active[0]!);
    } finally {
      await sn.close();
    }
  });

  it('falls back when the TOC does not match the layer annotation, and when the registry is unreachable', async () => {
    const sn = await open(join(t.path, 'root-f'));
    try {
      const chain = chainIDs(lazy.layers.map((l) => l.diffID));
      const wrongToc = { ...labels(lazy, 'lazy/app:v1', 0, chain), [LABEL_STARGZ_TOC_DIGEST]: `sha256:${'0'.repeat(64)}` };
      await sn.prepare('wrong-toc', '', { labels: wrongToc });
      const info = await sn.stat('wrong-toc');
      expect(info.kind).toBe('active');
      expect(info.labels[LABEL_LAZY_FALLBACK]).toMatch(/digest/i);
      expect(info.labels[LABEL_LAZY_FALLBACK]).not.toContain(t.path);
      await sn.remove('wrong-toc');

      const gone = { ...labels(lazy, 'lazy/app:v1', 0, chain), [LABEL_STARGZ_REFERENCE]: '127.0.0.1:1/lazy/app:v1' };
      await sn.prepare('no-registry', '', { labels: gone });
      expect((await sn.stat('no-registry')).labels[LABEL_LAZY_FALLBACK]).toBeTruthy();
      await sn.remove('no-registry');
      expect(lazyfsMountsUnder(join(t.path, 'root-f'))).toEqual([]);
    } finally {
      await sn.close();
    }
  });

  it('keeps the lazyfs serving after the snapshotter closes, and a reopened snapshotter finds it', async () => {
    const root = join(t.path, 'root-c');
    const sn = await open(root);
    const chain = chainIDs(lazy.layers.map((l) => l.diffID));
    await handshake(sn, lazy, 'lazy/app:v1');
    const pid = lazyfsPid(root)!;
    expect(pid).toBeGreaterThan(0);
    await sn.close();
    expect(alive(pid)).toBe(true);
    expect(lazyfsMountsUnder(root)).toHaveLength(2);

    const again = await open(root);
    try {
      expect(lazyfsPid(root)).toBe(pid);
      const mounts = await again.view('reader', chain[1]!);
      const md5 = await withTempMount(mounts, async (dir) => createHash('md5').update(await readFile(join(dir, lazy.files[5]!.path))).digest('hex'));
      expect(md5).toBe(lazy.files[5]!.md5);
      await again.remove('reader');
      // Remove unmounts the layer and drops its cache.
      await again.remove(chain[1]!);
      expect(lazyfsMountsUnder(root)).toHaveLength(1);
      await again.remove(chain[0]!);
      expect(lazyfsMountsUnder(root)).toHaveLength(0);
    } finally {
      await again.close();
    }
  });

  it('mounts the remote layers again when its lazyfs was killed', async () => {
    const root = join(t.path, 'root-d');
    const sn = await open(root);
    const chain = chainIDs(lazy.layers.map((l) => l.diffID));
    await handshake(sn, lazy, 'lazy/app:v1');
    await sn.close();
    const pid = lazyfsPid(root)!;
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 20));

    const again = await open(root);
    try {
      const now = lazyfsPid(root)!;
      expect(now).not.toBe(pid);
      expect(lazyfsMountsUnder(root)).toHaveLength(2);
      const mounts = await again.view('reader', chain[1]!);
      const md5 = await withTempMount(mounts, async (dir) => createHash('md5').update(await readFile(join(dir, lazy.files[0]!.path))).digest('hex'));
      expect(md5).toBe(lazy.files[0]!.md5);
      await again.remove('reader');
      // cleanup() leaves owned layers mounted, and unmounts (and forgets the cache of) one no record owns.
      const orphan = join(root, 'snapshots', '9999', 'fs');
      const client = new LazyfsClient({ root, log: silentLogger });
      const l = lazy.layers[0]!;
      await client.mount({
        mountpoint: orphan,
        cacheDir: join(root, 'cache', '9999'),
        layer: { ref: `${proxy.host}/lazy/app:v1`, digest: l.digest, tocDigest: l.tocDigest! },
        registry: {},
        policy: { prefetch: true, background: false, backgroundDelayMs: 0 },
      });
      client.close();
      expect(lazyfsMountsUnder(root)).toHaveLength(3);
      await again.cleanup();
      expect(lazyfsMountsUnder(root)).toHaveLength(2);
      expect(lazyfsMountsUnder(root)).not.toContain(orphan);
      expect(existsSync(join(root, 'cache', '9999'))).toBe(false);
      expect(existsSync(join(root, 'snapshots', '9999'))).toBe(false);
    } finally {
      await again.close();
    }
  });

  it('fetches the prefetch landmark span in one Range request right after the mount, then the rest of the layer in the background', async () => {
    const root = join(t.path, 'root-e');
    const before = proxy.requests.length;
    const sn = await open(root, { background: true, backgroundDelayMs: 200 });
    const client = new LazyfsClient({ root, log: silentLogger });
    try {
      await handshake(sn, lazy, 'lazy/app:v1');
      // The base layer's prioritized file (bin/busybox) sits before its landmark: its span is read from offset 0.
      const base = lazy.layers[0]!;
      const spans = proxy.requests.slice(before).filter((r) => r.digest === base.digest && r.range?.startsWith('bytes=0-') && r.bytes > 100_000);
      expect(spans).toHaveLength(1);
      // busybox's chunks came from that span: besides it, the layer's bytes are read once, plus the tail read to
      // open it (footer and TOC, at most 256 KiB).
      const baseBytes = proxy.requests.slice(before).filter((r) => r.digest === base.digest).reduce((n, r) => n + r.bytes, 0);
      expect(baseBytes).toBeLessThanOrEqual(base.size + (256 << 10) + 1);
      let status = await client.list();
      for (let i = 0; i < 200 && !(status.length === 2 && status.every((m) => m.backgroundDone)); i++) {
        await new Promise((r) => setTimeout(r, 100));
        status = await client.list();
      }
      expect(status.map((m) => m.digest).sort()).toEqual(lazy.layers.map((l) => l.digest).sort());
      for (const m of status) {
        expect(m.prefetchDone).toBe(true);
        expect(m.backgroundDone).toBe(true);
        expect(m.cached).toBe(m.chunks);
      }
      // The whole data layer came in Range requests of about a chunk each, none of it twice.
      const data = proxy.requests.slice(before).filter((r) => r.digest === lazy.layers[1]!.digest && r.method === 'GET');
      expect(data.every((r) => r.range !== undefined)).toBe(true);
      const total = data.reduce((n, r) => n + r.bytes, 0);
      expect(total).toBeGreaterThanOrEqual(6 * (3 << 20));
      expect(total).toBeLessThan(lazy.layers[1]!.size * 1.2);
    } finally {
      client.close();
      await sn.close();
    }
  });
});
