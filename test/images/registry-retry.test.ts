/**
 * Fault injection: small HTTP servers on loopback between the client and a real registry (or standing in
 * for one) that answer 503/429, cut a body in the middle, ignore Range, hide Docker-Content-Digest, refuse
 * HEAD, fail an upload, or redirect blobs to another origin. They check the retry, resume, fallback and
 * redirect paths of the client; none of this is how the real registry behaves on its own.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StrataError } from '../../src/core/errdefs.js';
import { createResolver, type RegistryResolver } from '../../src/remotes/resolver.js';
import type { ResolverOptions } from '../../src/remotes/types.js';
import type { Descriptor } from '../../src/core/descriptor.js';
import { kindOf } from '../helpers/errors.js';
import { buildOciLayout, makeLayerTar, MEDIA_MANIFEST, type LayoutBlob, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const descOf = (b: LayoutBlob): Descriptor => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
async function readReq(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

interface LogEntry {
  method: string;
  path: string;
  status: number;
  headers: IncomingMessage['headers'];
}

interface Proxy {
  host: string;
  log: LogEntry[];
  close(): Promise<void>;
}

type Fault = (req: IncomingMessage, res: ServerResponse, log: LogEntry[]) => Promise<boolean> | boolean;

const servers: Server[] = [];
async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ server: Server; host: string }> {
  const server = createServer(handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return { server, host: `127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/**
 * A proxy in front of the registry. `fault` may answer a request itself (returning true); `rewrite` edits
 * upstream response headers; `stripRange` drops the Range header on the way up.
 */
async function startProxy(
  target: string,
  opts: { fault?: Fault; rewrite?: (req: IncomingMessage, headers: Record<string, string | string[] | undefined>) => void; stripRange?: boolean } = {},
): Promise<Proxy> {
  const log: LogEntry[] = [];
  const { server, host } = await listen((req, res) => {
    void (async () => {
      const entry: LogEntry = { method: req.method!, path: req.url!, status: 0, headers: req.headers };
      log.push(entry);
      res.on('finish', () => (entry.status = res.statusCode));
      res.on('close', () => (entry.status ||= res.statusCode));
      if (opts.fault && (await opts.fault(req, res, log))) return;
      const headers = { ...req.headers };
      if (opts.stripRange) delete headers.range;
      // The Host header stays the proxy's, so the registry's upload Locations point back at the proxy.
      const [thost, tport] = target.split(':');
      const up = httpRequest({ host: thost, port: Number(tport), method: req.method, path: req.url, headers }, (ures) => {
        const h = { ...ures.headers };
        opts.rewrite?.(req, h);
        res.writeHead(ures.statusCode!, h as Record<string, string | string[]>);
        ures.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    })();
  });
  return { host, log, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

let tmp: TempDir;
let reg: StartedRegistry;
let image: OciLayout;
const resolvers: RegistryResolver[] = [];
function resolver(opts: ResolverOptions = {}): RegistryResolver {
  const r = createResolver(opts, { backoffBaseMs: 20 });
  resolvers.push(r);
  return r;
}

beforeAll(async () => {
  tmp = await tempDir('strata-registry-retry-');
  reg = await startRegistry();
  image = await buildOciLayout(join(tmp.path, 'image'), { layers: [await makeLayerTar({ big: randomBytes(300_000) })], refName: 'v1' });
  await reg.pushOciLayout(image.dir, 'test/img:v1');
});

afterAll(async () => {
  await Promise.all(resolvers.map((r) => r.close()));
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
  await stopAllRegistries();
  await tmp?.cleanup();
});

describe('retries', () => {
  it('retries 503s and then succeeds', async () => {
    // Fault injection: the first two requests get 503.
    const proxy = await startProxy(reg.host, {
      fault: (_req, res, log) => {
        if (log.length > 2) return false;
        res.writeHead(503).end('try later');
        return true;
      },
    });
    const r = resolver({ retries: 3 });
    const { desc } = await r.resolve(`${proxy.host}/test/img:v1`);
    expect(desc.digest).toBe(image.manifest.digest);
    expect(proxy.log.slice(0, 3).map((e) => `${e.method} ${e.status}`)).toEqual(['HEAD 503', 'HEAD 503', 'HEAD 200']);
  });

  it('gives up with unavailable after the configured retries', async () => {
    // Fault injection: every request gets 503.
    const proxy = await startProxy(reg.host, {
      fault: (_req, res) => {
        res.writeHead(503).end();
        return true;
      },
    });
    const r = resolver({ retries: 2 });
    const err = await r.resolve(`${proxy.host}/test/img:v1`).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StrataError);
    expect((err as StrataError).kind).toBe('unavailable');
    expect((err as Error).message).toMatch(/503/);
    expect(proxy.log.length).toBe(3);
    expect(await kindOf(r.fetcher(`${proxy.host}/test/img:v1`).fetch(descOf(image.config)))).toBe('unavailable');
    expect(proxy.log.length).toBe(6);
  });

  it('retries 429 (honouring a zero Retry-After) and a dropped connection', async () => {
    // Fault injection: a 429, then a connection closed without an answer, then the real registry.
    const proxy = await startProxy(reg.host, {
      fault: (_req, res, log) => {
        if (log.length === 1) {
          res.writeHead(429, { 'retry-after': '0' }).end();
          return true;
        }
        if (log.length === 2) {
          res.socket?.destroy();
          return true;
        }
        return false;
      },
    });
    const r = resolver({ retries: 3 });
    expect(sha256(await readAll(await r.fetcher(`${proxy.host}/test/img:v1`).fetch(descOf(image.config))))).toBe(image.config.digest);
    expect(proxy.log.length).toBe(3);
  });

  it('does not retry once bytes were handed out: the stream fails as unavailable and resumes from an offset', async () => {
    const layer = image.layers[0]!;
    let cut = false;
    // Fault injection: the first blob download is cut off after half the bytes.
    const proxy = await startProxy(reg.host, {
      fault: (req, res) => {
        if (cut || req.method !== 'GET' || !req.url!.includes('/blobs/')) return false;
        cut = true;
        res.writeHead(200, { 'content-length': String(layer.size), 'content-type': 'application/octet-stream' });
        res.write(layer.bytes.subarray(0, layer.size >> 1), () => setTimeout(() => res.socket?.destroy(), 20));
        return true;
      },
    });
    const r = resolver({ retries: 3 });
    const f = r.fetcher(`${proxy.host}/test/img:v1`);
    const got: Buffer[] = [];
    let streamErr: unknown;
    try {
      for await (const c of await f.fetch(descOf(layer))) got.push(c as Buffer);
    } catch (e) {
      streamErr = e;
    }
    expect(streamErr).toBeInstanceOf(StrataError);
    expect((streamErr as StrataError).kind).toBe('unavailable');
    const head = Buffer.concat(got);
    expect(head.length).toBeGreaterThan(0);
    expect(head.length).toBeLessThan(layer.size);
    expect(proxy.log.filter((e) => e.path.includes('/blobs/')).length).toBe(1);
    const tail = await readAll(await f.fetch(descOf(layer), { offset: head.length }));
    expect(proxy.log.at(-1)!.headers.range).toBe(`bytes=${head.length}-`);
    expect(sha256(Buffer.concat([head, tail]))).toBe(layer.digest);
  });

  it('restarts a failed upload from the beginning', async () => {
    let failedPut = false;
    // Fault injection: the first upload PUT is read completely and then answered 503.
    const proxy = await startProxy(reg.host, {
      fault: async (req, res) => {
        if (failedPut || req.method !== 'PUT') return false;
        failedPut = true;
        await readReq(req);
        res.writeHead(503).end();
        return true;
      },
    });
    const r = resolver({ retries: 2 });
    const bytes = randomBytes(20_000);
    let opened = 0;
    const desc = { mediaType: 'application/octet-stream', digest: sha256(bytes), size: bytes.length };
    const res = await r.pusher(`${proxy.host}/test/upload:v1`).push(desc, async () => {
      opened++;
      return Readable.from([bytes]);
    });
    expect(res).toBe('pushed');
    expect(opened).toBe(2);
    expect(proxy.log.map((e) => `${e.method} ${e.status}`)).toEqual(['HEAD 404', 'POST 202', 'PUT 503', 'POST 202', 'PUT 201']);
    expect(sha256(await readAll(await r.fetcher(`${reg.host}/test/upload:v1`).fetch(desc)))).toBe(desc.digest);
  });
});

describe('registry quirks', () => {
  it('skips the head itself when a range request is answered with the whole blob', async () => {
    const layer = image.layers[0]!;
    const proxy = await startProxy(reg.host, { stripRange: true });
    const r = resolver();
    const f = r.fetcher(`${proxy.host}/test/img:v1`);
    for (const offset of [1, 65_537, layer.size - 3]) {
      const tail = await readAll(await f.fetch(descOf(layer), { offset }));
      expect(tail.equals(layer.bytes.subarray(offset)), `offset ${offset}`).toBe(true);
    }
    expect(proxy.log.every((e) => e.status === 200)).toBe(true);
  });

  it('GETs and hashes the manifest when HEAD has no digest, and sniffs a generic content type', async () => {
    const proxy = await startProxy(reg.host, {
      rewrite: (_req, h) => {
        delete h['docker-content-digest'];
        h['content-type'] = 'application/json';
      },
    });
    const r = resolver();
    const res = await r.resolve(`${proxy.host}/test/img:v1`);
    expect(res.desc).toEqual({ mediaType: MEDIA_MANIFEST, digest: image.manifest.digest, size: image.manifest.size });
    expect(proxy.log.map((e) => e.method)).toEqual(['HEAD', 'GET']);
  });

  it('falls back to GET when HEAD is not allowed', async () => {
    // Fault injection: HEAD on manifests answers 405.
    const proxy = await startProxy(reg.host, {
      fault: (req, res) => {
        if (req.method !== 'HEAD') return false;
        res.writeHead(405).end();
        return true;
      },
    });
    const res = await resolver().resolve(`${proxy.host}/test/img:v1`);
    expect(res.desc.digest).toBe(image.manifest.digest);
    expect(proxy.log.map((e) => `${e.method} ${e.status}`)).toEqual(['HEAD 405', 'GET 200']);
  });

  it('follows blob redirects to another origin without the registry credentials, keeping Range', async () => {
    const blob = randomBytes(10_000);
    const digest = sha256(blob);
    const storageLog: IncomingMessage['headers'][] = [];
    // A stand-in for object storage: serves the blob, honours Range.
    const storage = await listen((req, res) => {
      storageLog.push(req.headers);
      const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
      if (m) {
        const from = Number(m[1]);
        res.writeHead(206, { 'content-range': `bytes ${from}-${blob.length - 1}/${blob.length}`, 'content-length': String(blob.length - from) });
        res.end(blob.subarray(from));
      } else {
        res.writeHead(200, { 'content-length': String(blob.length) }).end(blob);
      }
    });
    // A stand-in registry: Basic auth, blobs redirect to the storage origin.
    const seenAuth: Array<string | undefined> = [];
    const front = await listen((req, res) => {
      seenAuth.push(req.headers.authorization);
      if (req.headers.authorization !== 'Basic ' + Buffer.from('u:p').toString('base64')) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="front"' }).end();
        return;
      }
      if (req.url === `/v2/r/blobs/${digest}`) {
        res.writeHead(307, { location: `http://${storage.host}/data/${digest.slice(7)}?sig=abc` }).end();
        return;
      }
      res.writeHead(404).end();
    });
    const r = resolver({ credentials: (h) => (h === front.host ? { username: 'u', secret: 'p' } : undefined) });
    const f = r.fetcher(`${front.host}/r:latest`);
    const desc = { mediaType: 'application/octet-stream', digest, size: blob.length };
    expect((await readAll(await f.fetch(desc))).equals(blob)).toBe(true);
    expect((await readAll(await f.fetch(desc, { offset: 4321 }))).equals(blob.subarray(4321))).toBe(true);
    expect(seenAuth.filter((a) => a !== undefined).length).toBe(2);
    expect(storageLog.map((h) => h.authorization)).toEqual([undefined, undefined]);
    expect(storageLog.map((h) => h.range)).toEqual([undefined, 'bytes=4321-']);
  });
});
