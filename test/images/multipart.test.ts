/**
 * Multipart fetch of big blobs (src/remotes/multipart.ts) against the real docker-registry on loopback,
 * written into a real content store (the metadata database in front of the local store) by fetchBlob, the
 * code a daemon pull runs; and a daemon pull with the transfer plugin's config keys.
 *
 * A counting proxy (test/helpers/http-proxy.ts) stands between the client and the registry in every test:
 * the registry has no way to tell us which Range requests it served, how many at once, or to fail one part.
 * Where the proxy also changes what passes (drops a Range header or Accept-Ranges, flips a byte of one part,
 * cuts one part's connection, stalls the parts after a point), the test says so and why.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openLocalContentStore } from '../../src/content/local.js';
import type { ContentStore } from '../../src/content/types.js';
import type { Descriptor } from '../../src/core/descriptor.js';
import { StrataError } from '../../src/core/errdefs.js';
import { fetchBlob, ingestRef } from '../../src/images/fetch.js';
import type { Limiter } from '../../src/remotes/limit.js';
import { Budget } from '../../src/remotes/multipart.js';
import { createResolver, type RegistryResolver } from '../../src/remotes/resolver.js';
import { MetadataStore } from '../../src/metadata/index.js';
import { startDaemon, stopAll } from '../helpers/daemon.js';
import { buildImage } from '../helpers/images.js';
import { listContent, pullImage } from '../helpers/transfer.js';
import { parseRange, startCountingProxy, stopAllProxies, type CountingProxy } from '../helpers/http-proxy.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const MiB = 1 << 20;
const PART = MiB;
const PARALLEL = 3;

let dir: TempDir;
let reg: StartedRegistry;
let layer: Descriptor;
let small: Descriptor;
const dbs: MetadataStore[] = [];
let stores = 0;
const resolvers: RegistryResolver[] = [];

beforeAll(async () => {
  dir = await tempDir('strata-multipart-');
  reg = await startRegistry();
  // One uncompressed layer of a little over 6 MiB (7 parts of 1 MiB) and a small one under the threshold.
  const img = await buildImage(dir.path, {
    basename: 'mp',
    platforms: [
      {
        layers: [
          { compression: 'none', entries: [{ path: 'big.bin', content: randomBytes(6 * MiB + 12345) }] },
          { compression: 'none', entries: [{ path: 'small.bin', content: randomBytes(64 * 1024) }] },
        ],
      },
    ],
  });
  await reg.pushOciLayout(img.layoutDir, 'mp:latest');
  layer = img.manifests[0]!.layers[0]!.descriptor;
  small = img.manifests[0]!.layers[1]!.descriptor;
});

afterEach(async () => {
  await Promise.all(resolvers.splice(0).map((r) => r.close()));
  await stopAllProxies();
});

afterAll(async () => {
  await stopAll();
  for (const md of dbs) md.close();
  await stopAllRegistries();
  await dir?.cleanup();
});

/**
 * A fresh content store each time (its own directory and database), so a blob fetched by one test is not
 * already on disk for the next (a namespaced store adopts blobs another namespace committed).
 */
async function store(): Promise<ContentStore> {
  const root = join(dir.path, `store${++stores}`);
  const md = MetadataStore.open(join(root, 'meta.db'), await openLocalContentStore(join(root, 'content')));
  dbs.push(md);
  md.namespaces.create('mp');
  return md.content.bind({ namespace: 'mp' });
}

function resolver(budget: Budget, opts: { threshold?: number } = {}): RegistryResolver {
  const r = createResolver(
    { maxConcurrent: PARALLEL, retries: 2, multipart: { partSize: PART, parallelism: PARALLEL, threshold: opts.threshold ?? 2 * MiB, budget } },
    { backoffBaseMs: 10 },
  );
  resolvers.push(r);
  return r;
}

async function sha256Of(content: ContentStore, digest: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of await content.read(digest)) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

/** Connection slots of the resolver's limit held right now. */
const slotsInUse = (r: RegistryResolver) => (r as unknown as { limit: Limiter }).limit.inUse;
const partCount = (d: Descriptor, from = 0) => Math.ceil((d.size - from) / PART);
const ranges = (p: CountingProxy) => p.blobGets().map((e) => parseRange(e.range));

describe('multipart fetch', () => {
  it('fetches a blob over the threshold as bounded Range parts, several at once, and commits it verified', async () => {
    const proxy = await startCountingProxy(reg.host);
    const budget = new PeakBudget(2 * PART);
    const r = resolver(budget);
    const content = await store();
    expect(await fetchBlob(content, r.fetcher(`${proxy.host}/mp:latest`), layer, 'layer')).toBe('done');
    // Parts were held ahead of the writer, never more than the budget.
    expect(budget.peak).toBeGreaterThan(0);
    expect(budget.peak).toBeLessThanOrEqual(2 * PART);

    expect(await sha256Of(content, layer.digest)).toBe(layer.digest);
    expect((await content.info(layer.digest)).size).toBe(layer.size);
    const gets = ranges(proxy);
    // One open-ended probe from 0, then one bounded request per further part, each exactly its bytes.
    expect(gets.length).toBe(partCount(layer));
    expect(gets[0]).toEqual({ first: 0, last: undefined });
    const parts = gets.slice(1).sort((a, b) => a!.first - b!.first);
    parts.forEach((g, i) => {
      const first = (i + 1) * PART;
      expect(g).toEqual({ first, last: Math.min(first + PART, layer.size) - 1 });
    });
    expect(proxy.blobGets().slice(1).every((e) => e.status === 206)).toBe(true);
    expect(proxy.maxInFlight()).toBeGreaterThanOrEqual(2);
    // Nothing left behind: no ingest, every byte of the budget and every connection slot given back.
    expect(await content.listStatuses()).toEqual([]);
    expect(budget.inUse).toBe(0);
    expect(slotsInUse(r)).toBe(0);
  });

  it('fetches a blob at or under the threshold in one request without a Range header', async () => {
    const proxy = await startCountingProxy(reg.host);
    const content = await store();
    expect(await fetchBlob(content, resolver(new Budget(2 * PART)).fetcher(`${proxy.host}/mp:latest`), small, 'layer')).toBe('done');
    expect(proxy.blobGets().map((e) => e.range)).toEqual(['']);
    expect(await sha256Of(content, small.digest)).toBe(small.digest);
  });

  it('fails a blob with one corrupted part on its digest, naming both digests, and commits nothing', async () => {
    // The proxy flips one byte in the part that starts at 3 MiB: the registry itself never serves bad bytes.
    const proxy = await startCountingProxy(reg.host, {
      body: (e) => (parseRange(e.range)?.first === 3 * PART ? (c, before) => (before === 0 ? flipFirst(c) : c) : undefined),
    });
    const budget = new Budget(2 * PART);
    const r = resolver(budget);
    const content = await store();
    const err = await fetchBlob(content, r.fetcher(`${proxy.host}/mp:latest`), layer, 'layer').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StrataError);
    expect((err as StrataError).kind).toBe('failed precondition');
    expect((err as Error).message).toMatch(new RegExp(`unexpected commit digest sha256:[0-9a-f]{64}, expected ${layer.digest}`));
    expect(ranges(proxy).some((g) => g?.first === 3 * PART)).toBe(true);
    // Not committed under the claimed digest, and the bad bytes are not kept for a resume.
    await expect(content.info(layer.digest)).rejects.toMatchObject({ kind: 'not found' });
    expect(await content.listStatuses()).toEqual([]);
    expect(budget.inUse).toBe(0);
    expect(slotsInUse(r)).toBe(0);
  });

  it('asks again for the rest of a part whose connection was cut, and the blob still verifies', async () => {
    // The proxy cuts the first response for the part at 2 MiB after 200 KiB: a connection lost mid-part.
    let cut = false;
    const proxy = await startCountingProxy(reg.host, {
      body: (e) => {
        if (cut || parseRange(e.range)?.first !== 2 * PART) return undefined;
        cut = true;
        return (c, before) => (before + c.length > 200 * 1024 ? 'cut' : c);
      },
    });
    const budget = new Budget(2 * PART);
    const r = resolver(budget);
    const content = await store();
    expect(await fetchBlob(content, r.fetcher(`${proxy.host}/mp:latest`), layer, 'layer')).toBe('done');
    expect(await sha256Of(content, layer.digest)).toBe(layer.digest);
    const part2 = ranges(proxy).filter((g) => g && g.last === 3 * PART - 1);
    // The part was asked for twice: first whole, then from where its bytes stopped (never from 0 again).
    expect(part2.length).toBe(2);
    expect(part2[0]!.first).toBe(2 * PART);
    expect(part2[1]!.first).toBeGreaterThanOrEqual(2 * PART);
    expect(part2[1]!.first).toBeLessThanOrEqual(2 * PART + 200 * 1024);
    expect(ranges(proxy).filter((g) => g?.first === 0).length).toBe(1);
    expect(proxy.blobGets().length).toBe(partCount(layer) + 1);
    expect(budget.inUse).toBe(0);
    expect(slotsInUse(r)).toBe(0);
  });

  it('reads the whole blob as one stream from a registry that ignores Range', async () => {
    // The proxy drops the Range header on the way up, so the registry answers 200 with the whole blob.
    const proxy = await startCountingProxy(reg.host, { request: (_e, h) => void delete h.range });
    const content = await store();
    expect(await fetchBlob(content, resolver(new Budget(2 * PART)).fetcher(`${proxy.host}/mp:latest`), layer, 'layer')).toBe('done');
    expect(proxy.blobGets().map((e) => [e.range, e.status])).toEqual([['bytes=0-', 200]]);
    expect(await sha256Of(content, layer.digest)).toBe(layer.digest);
  });

  it('reads the whole blob as one stream from a registry that does not say Accept-Ranges', async () => {
    // The proxy removes Accept-Ranges from the responses: the probe's 206 is then read to the end, not split.
    const proxy = await startCountingProxy(reg.host, { response: (_e, h) => void delete h['accept-ranges'] });
    const content = await store();
    expect(await fetchBlob(content, resolver(new Budget(2 * PART)).fetcher(`${proxy.host}/mp:latest`), layer, 'layer')).toBe('done');
    expect(proxy.blobGets().map((e) => [e.range, e.status])).toEqual([['bytes=0-', 206]]);
    expect(await sha256Of(content, layer.digest)).toBe(layer.digest);
  });

  it('switches to one stream from the bytes handed out when a part comes back whole instead of its range', async () => {
    // The proxy drops only bounded Range headers (bytes=a-b): the probe is honoured, every part gets a 200
    // with the whole blob, as from a mirror that ignores Range. No part may be taken for its range.
    const proxy = await startCountingProxy(reg.host, {
      request: (e, h) => {
        if (parseRange(e.range)?.last !== undefined) delete h.range;
      },
    });
    const budget = new Budget(2 * PART);
    const r = resolver(budget);
    const content = await store();
    expect(await fetchBlob(content, r.fetcher(`${proxy.host}/mp:latest`), layer, 'layer')).toBe('done');
    expect(await sha256Of(content, layer.digest)).toBe(layer.digest);
    const gets = ranges(proxy);
    expect(gets[0]).toEqual({ first: 0, last: undefined });
    // The fallback: an open-ended request from somewhere inside the first part (what had been handed out).
    const fallback = gets.slice(1).filter((g) => g?.last === undefined);
    expect(fallback.length).toBe(1);
    expect(fallback[0]!.first).toBeLessThanOrEqual(PART);
    expect(budget.inUse).toBe(0);
    expect(slotsInUse(r)).toBe(0);
  });

  it('sends a part a mirror refuses to the next host, as any fetch, and the blob still verifies', async () => {
    // Two proxies: a mirror that serves the probe but answers 503 to every part request (a mirror with trouble),
    // and the server entry of hosts.toml, which counts what reaches the registry through it.
    const server = await startCountingProxy(reg.host);
    const mirror = await startCountingProxy(reg.host, {
      answer: (e, res) => {
        if (parseRange(e.range)?.last === undefined) return false;
        res.writeHead(503).end('busy');
        return true;
      },
    });
    const hostsDir = join(dir.path, `hosts-${++stores}`);
    const hostDir = join(hostsDir, reg.host.replace(':', '_') + '_');
    await mkdir(hostDir, { recursive: true });
    await writeFile(join(hostDir, 'hosts.toml'), [`server = "http://${server.host}"`, `[host."http://${mirror.host}"]`, '  capabilities = ["pull", "resolve"]', ''].join('\n'));
    const budget = new Budget(2 * PART);
    const r = createResolver(
      { hostsDir, maxConcurrent: PARALLEL, retries: 2, multipart: { partSize: PART, parallelism: PARALLEL, threshold: 2 * MiB, budget } },
      { backoffBaseMs: 10 },
    );
    resolvers.push(r);
    const content = await store();
    expect(await fetchBlob(content, r.fetcher(`${reg.host}/mp:latest`), layer, 'layer')).toBe('done');
    expect(await sha256Of(content, layer.digest)).toBe(layer.digest);
    // The probe was the mirror's (with containerd's ?ns=); each part was refused there, then served by the server.
    const probe = mirror.blobGets().filter((e) => e.status === 206);
    expect(probe.map((e) => e.range)).toEqual(['bytes=0-']);
    expect(probe[0]!.path).toContain(`?ns=${encodeURIComponent(reg.host)}`);
    expect(mirror.blobGets().filter((e) => e.status === 503).length).toBe(partCount(layer) - 1);
    const served = ranges(server);
    expect(served.length).toBe(partCount(layer) - 1);
    expect(served.every((g) => g?.last !== undefined)).toBe(true);
    expect(budget.inUse).toBe(0);
    expect(slotsInUse(r)).toBe(0);
  });

  it('resumes an interrupted fetch from the ingest, without fetching the parts already written again', async () => {
    // First fetch: the proxy answers nothing for bytes from 3 MiB on (stalled parts), so exactly the first
    // three parts reach the ingest; then the proxy goes away, as a network or a registry would.
    const stallFrom = 3 * PART;
    const first = await startCountingProxy(reg.host, { stall: (e) => (parseRange(e.range)?.first ?? 0) >= stallFrom });
    const content = await store();
    const ref = ingestRef('layer', layer.digest);
    const budget = new Budget(2 * PART);
    const pending = fetchBlob(content, resolver(budget).fetcher(`${first.host}/mp:latest`), layer, 'layer').catch((e: unknown) => e);
    const deadline = Date.now() + 20_000;
    for (;;) {
      const st = await content.status(ref).catch(() => undefined);
      if (st && st.offset >= stallFrom) break;
      if (Date.now() > deadline) throw new Error(`ingest stuck at ${st?.offset ?? 'none'}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    await first.close();
    const err = await pending;
    expect(err).toBeInstanceOf(StrataError);
    expect((err as StrataError).kind).toBe('unavailable');
    expect((await content.status(ref)).offset).toBe(stallFrom);
    expect(budget.inUse).toBe(0);

    // Second fetch through a plain counting proxy: it starts at the ingest's offset.
    const second = await startCountingProxy(reg.host);
    expect(await fetchBlob(content, resolver(new Budget(2 * PART)).fetcher(`${second.host}/mp:latest`), layer, 'layer')).toBe('done');
    expect(await sha256Of(content, layer.digest)).toBe(layer.digest);
    const gets = ranges(second);
    expect(gets[0]).toEqual({ first: stallFrom, last: undefined });
    expect(gets.every((g) => g !== undefined && g.first >= stallFrom)).toBe(true);
    expect(gets.length).toBe(partCount(layer, stallFrom));
    expect(await content.listStatuses()).toEqual([]);
  });
});

describe('multipart fetch in the daemon', () => {
  it('a daemon pull with concurrent_layer_fetch_buffer in its config fetches the big layer in Range parts and unpacks it', async () => {
    const proxy = await startCountingProxy(reg.host);
    const d = await startDaemon({
      config: [
        '[plugins."io.containerd.transfer.v1.images"]',
        'max_concurrent_downloads = 3',
        `concurrent_layer_fetch_buffer = ${PART}`,
        `concurrent_layer_fetch_threshold = ${2 * MiB}`,
        '',
      ].join('\n'),
    });
    const c = d.client('multipart');
    const progress = await pullImage(c, `${proxy.host}/mp:latest`);
    expect(progress.at(-1)).toMatchObject({ kind: 'image', status: 'pulled' });
    const digests = new Set((await listContent(c)).map((i) => i.digest));
    expect(digests.has(layer.digest)).toBe(true);
    const gets = proxy.blobGets().filter((e) => e.path.includes(layer.digest)).map((e) => parseRange(e.range));
    expect(gets.length).toBe(partCount(layer));
    expect(gets.filter((g) => g?.last !== undefined).length).toBe(partCount(layer) - 1);
    // The small layer stays one plain request.
    expect(proxy.blobGets().filter((e) => e.path.includes(small.digest)).map((e) => e.range)).toEqual(['']);
  });

  it('a daemon killed mid-way through a multipart pull resumes from the ingest after a restart, without the written parts', async () => {
    // The proxy answers nothing for the big layer's bytes from 3 MiB on, so the kill lands with exactly the first
    // three parts in the ingest (a loopback registry would otherwise finish before the test could react).
    const stallFrom = 3 * PART;
    const stalling = await startCountingProxy(reg.host, { stall: (e) => e.path.includes(layer.digest) && (parseRange(e.range)?.first ?? 0) >= stallFrom });
    const config = ['[plugins."io.containerd.transfer.v1.images"]', `concurrent_layer_fetch_buffer = ${PART}`, `concurrent_layer_fetch_threshold = ${2 * MiB}`, ''].join('\n');
    const d1 = await startDaemon({ config });
    const c1 = d1.client('resume');
    const pulling = pullImage(c1, `${stalling.host}/mp:latest`).catch((e: unknown) => e);
    const ref = `layer-${layer.digest}`;
    const deadline = Date.now() + 30_000;
    for (;;) {
      const { statuses } = await c1.call(c1.content, c1.content.listStatuses, { filters: [] });
      if ((statuses.find((st) => st.ref === ref)?.offset ?? 0) >= stallFrom) break;
      if (Date.now() > deadline) throw new Error(`ingest did not reach ${stallFrom}: ${JSON.stringify(statuses)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    await d1.kill9();
    await pulling;
    await stalling.close();

    const d2 = await d1.restart();
    const c2 = d2.client('resume');
    const { statuses } = await c2.call(c2.content, c2.content.listStatuses, { filters: [] });
    expect(statuses.find((st) => st.ref === ref)?.offset).toBe(stallFrom);
    const counting = await startCountingProxy(reg.host);
    const progress = await pullImage(c2, `${counting.host}/mp:latest`);
    expect(progress.at(-1)).toMatchObject({ kind: 'image', status: 'pulled' });
    expect(progress.find((p) => p.ref === layer.digest && p.status === 'resuming')?.offset).toBe(stallFrom);
    const gets = counting.blobGets().filter((e) => e.path.includes(layer.digest)).map((e) => parseRange(e.range));
    expect(gets[0]).toEqual({ first: stallFrom, last: undefined });
    expect(gets.every((g) => g !== undefined && g.first >= stallFrom)).toBe(true);
    expect(gets.length).toBe(partCount(layer, stallFrom));
    expect((await listContent(c2)).find((i) => i.digest === layer.digest)?.size).toBe(layer.size);
    expect((await c2.call(c2.content, c2.content.listStatuses, { filters: [] })).statuses).toEqual([]);
  });

  it('refuses a transfer config whose concurrent_layer_fetch_buffer is not a whole number of bytes', async () => {
    // As containerd does with a plugin whose init fails: the daemon runs, introspection reports the error.
    const d = await startDaemon({ config: '[plugins."io.containerd.transfer.v1.images"]\nconcurrent_layer_fetch_buffer = "8MiB"\n' });
    const c = d.client();
    const { plugins } = await c.call(c.introspection, c.introspection.plugins, { filters: ['type==io.containerd.transfer.v1'] });
    expect(plugins[0]?.initErr?.message).toMatch(/concurrent_layer_fetch_buffer must be a whole number of bytes, not "8MiB"/);
  });
});

/** A Budget that remembers the most bytes taken at once. */
class PeakBudget extends Budget {
  peak = 0;
  override tryTake(n: number): boolean {
    const ok = super.tryTake(n);
    this.peak = Math.max(this.peak, this.inUse);
    return ok;
  }
}

function flipFirst(c: Buffer): Buffer {
  const out = Buffer.from(c);
  out[0] = out[0]! ^ 0xff;
  return out;
}
