/**
 * Mirrors that fail, in front of a real docker-registry: one refuses connections (a closed loopback port),
 * one hangs (a TCP listener that accepts and never answers), one answers 503 to everything. A hosts.toml
 * lists all three before the registry; resolve, every fetch and a whole pull through stratad (with the hosts
 * directory from the daemon's `config_path` and the response-header timeout from its config) fall through
 * to the registry and complete within a generous correctness bound, each broken host asked in file order.
 * And a mirror that cuts each blob's first download in half: the pull resumes every blob from its offset.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, request as httpRequest, type Server as HttpServer } from 'node:http';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createResolver, type RegistryResolver } from '../../src/remotes/resolver.js';
import { startDaemon, stopAll } from '../helpers/daemon.js';
import { buildOciLayout, makeLayerTar, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';
import { listContent, pullImage } from '../helpers/transfer.js';

/** The correctness bound for a pull past three broken mirrors (the timeout below is 1 s per hanging request). */
const BOUND_MS = 30_000;

let tmp: TempDir;
let image: OciLayout;
let reg: StartedRegistry;
let refused: string;
let hang: { server: Server; host: string; sockets: Set<Socket>; accepted: number };
let failing: { server: HttpServer; host: string; paths: string[] };
const resolvers: RegistryResolver[] = [];

async function listen(s: Server | HttpServer): Promise<string> {
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()));
  return `127.0.0.1:${(s.address() as AddressInfo).port}`;
}

beforeAll(async () => {
  tmp = await tempDir('strata-failover-');
  image = await buildOciLayout(join(tmp.path, 'image'), {
    layers: [await makeLayerTar({ a: 'first layer\n' }), await makeLayerTar({ b: 'second layer\n' })],
    refName: 'v1',
  });
  reg = await startRegistry();
  await reg.pushOciLayout(image.dir, 'fail/over:v1');

  const closed = createServer();
  refused = await listen(closed);
  await new Promise<void>((resolve) => closed.close(() => resolve()));

  const sockets = new Set<Socket>();
  const hangServer = createServer((sock) => {
    hang.accepted++;
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    // Reads the request and never answers.
    sock.resume();
  });
  hang = { server: hangServer, host: await listen(hangServer), sockets, accepted: 0 };

  const paths: string[] = [];
  const failServer = createHttpServer((req, res) => {
    paths.push(`${req.method} ${req.url}`);
    res.writeHead(503, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAVAILABLE","message":"mirror is down"}]}');
  });
  failing = { server: failServer, host: await listen(failServer), paths };
});

afterAll(async () => {
  await Promise.all(resolvers.map((r) => r.close()));
  await stopAll();
  await stopAllRegistries();
  for (const s of hang?.sockets ?? []) s.destroy();
  await new Promise<void>((resolve) => (hang ? hang.server.close(() => resolve()) : resolve()));
  failing?.server.closeAllConnections();
  await new Promise<void>((resolve) => (failing ? failing.server.close(() => resolve()) : resolve()));
  await tmp?.cleanup();
});

/** hosts.toml for the registry: the three broken mirrors in front, the registry itself as the server. */
async function hostsDir(name: string): Promise<string> {
  const root = join(tmp.path, name);
  const dir = join(root, reg.host.replace(':', '_') + '_');
  await mkdir(dir, { recursive: true });
  await writeFile(
    join(dir, 'hosts.toml'),
    [
      `server = "http://${reg.host}"`,
      '',
      `[host."http://${refused}"]`,
      '  capabilities = ["pull", "resolve"]',
      `[host."http://${hang.host}"]`,
      '  capabilities = ["pull", "resolve"]',
      `[host."http://${failing.host}"]`,
      '  capabilities = ["pull", "resolve"]',
      '',
    ].join('\n'),
  );
  return root;
}

describe('failover past broken mirrors', () => {
  it('resolves and fetches every blob from the registry behind a refusing, a hanging and a 503 mirror', async () => {
    const r = createResolver({ hostsDir: await hostsDir('resolver'), responseHeaderTimeoutMs: 1000 });
    resolvers.push(r);
    const ref = `${reg.host}/fail/over:v1`;
    const accepted = hang.accepted;
    const asked = failing.paths.length;
    const start = Date.now();
    const { desc } = await r.resolve(ref);
    expect(desc.digest).toBe(image.manifest.digest);
    const f = r.fetcher(ref);
    for (const blob of [image.manifest, image.config, ...image.layers]) {
      const chunks: Buffer[] = [];
      for await (const c of await f.fetch({ mediaType: blob.mediaType, digest: blob.digest, size: blob.size })) chunks.push(c as Buffer);
      expect(Buffer.concat(chunks).equals(blob.bytes)).toBe(true);
    }
    expect(Date.now() - start).toBeLessThan(BOUND_MS);
    // The hanging mirror cost one timeout: once a host could not be reached (refused, timed out), the
    // resolver tries it after the others for the rest of its life. The 503 mirror (it answers) is asked
    // every time, once per request: a failing mirror is not retried, the next host is.
    expect(hang.accepted - accepted).toBe(1);
    const newPaths = failing.paths.slice(asked);
    expect(newPaths).toEqual([
      `HEAD /v2/fail/over/manifests/v1?ns=${encodeURIComponent(reg.host)}`,
      ...[image.manifest].map((b) => `GET /v2/fail/over/manifests/${b.digest}?ns=${encodeURIComponent(reg.host)}`),
      ...[image.config, ...image.layers].map((b) => `GET /v2/fail/over/blobs/${b.digest}?ns=${encodeURIComponent(reg.host)}`),
    ]);
  });

  it('a host that never answers is given up after the response-header timeout, not retried, and the error names the timeout', async () => {
    // The same hang, through a resolver with a 300 ms limit: still falls through, and the error of a pull
    // where every host is broken names the timeout (never a host path).
    const root = join(tmp.path, 'only-broken');
    const dir = join(root, 'broken.example.com');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'hosts.toml'), `server = "http://${hang.host}"\n`);
    const r = createResolver({ hostsDir: root, responseHeaderTimeoutMs: 300, retries: 5 });
    resolvers.push(r);
    const start = Date.now();
    const err = (await r.resolve('broken.example.com/x/y:v1').then(
      () => new Error('resolved'),
      (e: unknown) => e,
    )) as Error & { kind?: string };
    // Not retried on the same host despite retries: 5 (a timeout moves on, it does not ask again).
    expect(Date.now() - start).toBeLessThan(5 * 300);
    expect(err.kind).toBe('unavailable');
    expect(err.message).toMatch(/Headers Timeout|UND_ERR_HEADERS_TIMEOUT/);
    expect(err.message).not.toContain(tmp.path);
  });

  it('a daemon pull with config_path and response_header_timeout from its config completes through the fallback', async () => {
    const root = await hostsDir('daemon');
    const d = await startDaemon({
      config: `[plugins."io.containerd.transfer.v1.images"]\nconfig_path = "${root}"\nresponse_header_timeout = "1s"\n`,
    });
    const c = d.client('failover');
    const start = Date.now();
    const progress = await pullImage(c, `${reg.host}/fail/over:v1`);
    expect(Date.now() - start).toBeLessThan(BOUND_MS);
    expect(progress.at(-1)).toMatchObject({ kind: 'image', status: 'pulled' });
    const digests = new Set((await listContent(c)).map((i) => i.digest));
    for (const b of [image.manifest, image.config, ...image.layers]) expect(digests.has(b.digest)).toBe(true);
  });

  it('a download that breaks off mid-blob resumes from its offset through the host list (mirror first again)', async () => {
    // A mirror that forwards to the registry but cuts every blob's first response after half its bytes.
    const cut = new Set<string>();
    const ranges: string[] = [];
    const breaking = createHttpServer((req, res) => {
      if (req.headers.range) ranges.push(req.headers.range);
      const url = (req.url ?? '/').split('?')[0]!;
      const [host, port] = reg.host.split(':');
      const up = httpRequest({ host, port: Number(port), method: req.method, path: url, headers: { ...req.headers, host: reg.host } }, (ur) => {
        const blob = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url)?.[1];
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        if (!blob || req.method !== 'GET' || cut.has(blob)) {
          ur.pipe(res);
          return;
        }
        cut.add(blob);
        const half = Math.floor(Number(ur.headers['content-length']) / 2);
        let sent = 0;
        ur.on('data', (chunk: Buffer) => {
          if (sent >= half) return;
          const part = chunk.subarray(0, half - sent);
          sent += part.length;
          res.write(part, () => {
            if (sent >= half) res.socket?.destroy();
          });
        });
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    const mirrorHost = await listen(breaking);
    // The server entry: a proxy in front of the registry that records Range headers too.
    const recorder = createHttpServer((req, res) => {
      if (req.headers.range) ranges.push(req.headers.range);
      const [host, port] = reg.host.split(':');
      const up = httpRequest({ host, port: Number(port), method: req.method, path: req.url, headers: { ...req.headers, host: reg.host } }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pipe(res);
      });
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    const upstreamHost = await listen(recorder);
    try {
      const root = join(tmp.path, 'breaking');
      const dir = join(root, reg.host.replace(':', '_') + '_');
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'hosts.toml'), `server = "http://${upstreamHost}"\n\n[host."http://${mirrorHost}"]\n  capabilities = ["pull", "resolve"]\n`);
      const d = await startDaemon({ config: `[plugins."io.containerd.transfer.v1.images"]\nconfig_path = "${root}"\n` });
      const c = d.client('resume');
      const progress = await pullImage(c, `${reg.host}/fail/over:v1`);
      expect(progress.at(-1)).toMatchObject({ kind: 'image', status: 'pulled' });
      const blobs = [image.config, ...image.layers];
      for (const b of blobs) expect(cut.has(b.digest), b.digest).toBe(true);
      // Each blob was resumed from where the cut stopped it, not downloaded again.
      expect(ranges.sort()).toEqual(blobs.map((b) => `bytes=${Math.floor(b.size / 2)}-`).sort());
      expect(progress.filter((p) => p.status === 'resuming').length).toBeGreaterThanOrEqual(blobs.length);
    } finally {
      for (const s of [breaking, recorder]) {
        s.closeAllConnections();
        await new Promise<void>((resolve) => s.close(() => resolve()));
      }
    }
  });

  it('refuses a transfer config with a response_header_timeout that is not a positive duration', async () => {
    // As containerd does with a plugin whose init fails: the daemon runs, introspection reports the error.
    const d = await startDaemon({ config: `[plugins."io.containerd.transfer.v1.images"]\nresponse_header_timeout = "soon"\n` });
    const c = d.client();
    const { plugins } = await c.call(c.introspection, c.introspection.plugins, { filters: ['type==io.containerd.transfer.v1'] });
    expect(plugins[0]?.initErr?.message).toMatch(/response_header_timeout must be a positive duration such as "30s", not "soon"/);
  });
});
