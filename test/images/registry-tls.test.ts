/**
 * hosts.toml against real https registries, through `strata image pull --hosts-dir` and stratad: a
 * docker-registry serving a certificate issued by a private CA (made with openssl in a temp dir) is pulled
 * from with `ca = "..."`, refused with a clear error (no host path) without it, and accepted with
 * `skip_verify`; one that requires client certificates is pulled from with `client = [[cert, key]]`. Also
 * `header` and `override_path` on a mirror: a loopback proxy that serves the registry's API under its own
 * root path and only to requests carrying the configured header.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../helpers/ctr.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { buildOciLayout, makeLayerTar, type OciLayout } from '../helpers/oci-layout.js';
import { STRATA } from '../helpers/paths.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let tmp: TempDir;
let image: OciLayout;
let d: StartedDaemon;
let tls: StartedRegistry;
let mtls: StartedRegistry;
let plain: StartedRegistry;

const strata = (args: string[], namespace: string) => run(STRATA, ['--address', d.address, '--namespace', namespace, ...args]);

/** Writes `<root>/<host_port_>/hosts.toml` and copies the files it names into that directory. */
async function hostsDir(name: string, host: string, toml: string, files: Record<string, string> = {}): Promise<string> {
  const root = join(tmp.path, name);
  const dir = join(root, host.replace(':', '_') + '_');
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'hosts.toml'), toml);
  for (const [to, from] of Object.entries(files)) await copyFile(from, join(dir, to));
  return root;
}

beforeAll(async () => {
  tmp = await tempDir('strata-registry-tls-');
  image = await buildOciLayout(join(tmp.path, 'image'), { layers: [await makeLayerTar({ t: 'over tls\n' })], refName: 'v1' });
  [d, tls, mtls, plain] = await Promise.all([
    startDaemon(),
    startRegistry({ tls: true, privateCA: true }),
    startRegistry({ tls: true, privateCA: true, clientAuth: true }),
    startRegistry(),
  ]);
  await Promise.all([tls.pushOciLayout(image.dir, 'sec/img:v1'), mtls.pushOciLayout(image.dir, 'sec/img:v1'), plain.pushOciLayout(image.dir, 'sec/img:v1')]);
}, 120_000);

afterAll(async () => {
  await stopAll();
  await stopAllRegistries();
  await tmp?.cleanup();
});

describe('https registries through hosts.toml', () => {
  it('pulls from a registry whose certificate a private CA issued, with ca = "<file>" in hosts.toml', async () => {
    const root = await hostsDir('ca', tls.host, `server = "https://${tls.host}"\nca = "private-ca.pem"\n`, { 'private-ca.pem': tls.caFile! });
    const r = await strata(['image', 'pull', '--hosts-dir', root, `${tls.host}/sec/img:v1`], 'tls-ca');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(`${tls.host}/sec/img:v1 ${image.manifest.digest}`);
  });

  it('a relative --hosts-dir is read from the CLI\'s working directory, not the daemon\'s', async () => {
    await hostsDir('relative', tls.host, `server = "https://${tls.host}"\nca = "private-ca.pem"\n`, { 'private-ca.pem': tls.caFile! });
    const r = await run(STRATA, ['--address', d.address, '--namespace', 'tls-relative', 'image', 'pull', '--hosts-dir', 'relative', `${tls.host}/sec/img:v1`], { cwd: tmp.path });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(`${tls.host}/sec/img:v1 ${image.manifest.digest}`);
  });

  it('without the CA the pull fails as unavailable, says the certificate is not trusted, and names no host path', async () => {
    const root = await hostsDir('no-ca', tls.host, `server = "https://${tls.host}"\n`);
    const r = await strata(['image', 'pull', '--hosts-dir', root, `${tls.host}/sec/img:v1`], 'tls-noca');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/unavailable/i);
    expect(r.stderr).toMatch(/certificate/);
    expect(r.stderr).toMatch(/not trusted: give the registry's CA as `ca` in its hosts.toml, or set skip_verify/);
    expect(r.stderr).not.toContain(tmp.path);
    const ls = await strata(['image', 'ls', '-q'], 'tls-noca');
    expect(ls.stdout.trim()).toBe('');
  });

  it('a CA file that does not exist is INVALID_ARGUMENT naming the file by its base name only', async () => {
    const root = await hostsDir('missing-ca', tls.host, `server = "https://${tls.host}"\nca = "nowhere/missing-ca.pem"\n`);
    const r = await strata(['image', 'pull', '--hosts-dir', root, `${tls.host}/sec/img:v1`], 'tls-missing');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/invalid argument/);
    expect(r.stderr).toMatch(/unable to read CA certificate "missing-ca.pem"/);
    expect(r.stderr).not.toContain(tmp.path);
  });

  it('skip_verify = true pulls without the CA', async () => {
    const root = await hostsDir('skip', tls.host, `server = "https://${tls.host}"\nskip_verify = true\n`);
    const r = await strata(['image', 'pull', '--hosts-dir', root, `${tls.host}/sec/img:v1`], 'tls-skip');
    expect(r.code, r.stderr).toBe(0);
  });

  it('a registry that requires client certificates: pulled with client = [[cert, key]], refused without', async () => {
    const withClient = await hostsDir(
      'mtls',
      mtls.host,
      `server = "https://${mtls.host}"\nca = "ca.pem"\nclient = [["client.cert", "client.key"]]\n`,
      { 'ca.pem': mtls.caFile!, 'client.cert': mtls.clientCert!, 'client.key': mtls.clientKey! },
    );
    const ok = await strata(['image', 'pull', '--hosts-dir', withClient, `${mtls.host}/sec/img:v1`], 'mtls');
    expect(ok.code, ok.stderr).toBe(0);

    const without = await hostsDir('mtls-noclient', mtls.host, `server = "https://${mtls.host}"\nca = "ca.pem"\n`, { 'ca.pem': mtls.caFile! });
    const refused = await strata(['image', 'pull', '--hosts-dir', without, `${mtls.host}/sec/img:v1`], 'mtls-noclient');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/unavailable/i);
  });
});

describe('header and override_path on a mirror', () => {
  let proxy: Server;
  let proxyHost: string;
  const seen: Array<{ method: string; url: string; headers: IncomingHttpHeaders; status: number }> = [];

  beforeAll(async () => {
    // Serves <registry>/v2/... under /mirror/api/... to requests carrying x-mirror-token: s3cret.
    proxy = createServer((req, res) => {
      const url = req.url ?? '/';
      const entry = { method: req.method ?? '', url, headers: req.headers, status: 0 };
      seen.push(entry);
      if (req.headers['x-mirror-token'] !== 's3cret' || !url.startsWith('/mirror/api/')) {
        entry.status = 403;
        res.writeHead(403).end();
        return;
      }
      const [host, port] = plain.host.split(':');
      const up = httpRequest({ host, port: Number(port), method: req.method, path: '/v2/' + url.slice('/mirror/api/'.length), headers: { ...req.headers, host: plain.host } }, (ur) => {
        entry.status = ur.statusCode ?? 0;
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pipe(res);
      });
      up.on('error', () => res.writeHead(502).end());
      req.pipe(up);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', () => resolve()));
    proxyHost = `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    proxy?.closeAllConnections();
    await new Promise<void>((resolve) => (proxy ? proxy.close(() => resolve()) : resolve()));
  });

  it('sends the configured headers and uses the URL path as the API root', async () => {
    // The server is a closed port: the pull can only succeed through the mirror.
    const s = createNetServer();
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()));
    const dead = `127.0.0.1:${(s.address() as AddressInfo).port}`;
    await new Promise<void>((resolve) => s.close(() => resolve()));
    const root = await hostsDir(
      'header',
      dead,
      [
        `server = "http://${dead}"`,
        `[host."http://${proxyHost}/mirror/api"]`,
        '  capabilities = ["pull", "resolve"]',
        '  override_path = true',
        `  [host."http://${proxyHost}/mirror/api".header]`,
        '    x-mirror-token = "s3cret"',
        '    x-extra = ["a", "b"]',
        '',
      ].join('\n'),
    );
    const r = await strata(['image', 'pull', '--hosts-dir', root, `${dead}/sec/img:v1`], 'header');
    expect(r.code, r.stderr).toBe(0);
    expect(seen.length).toBeGreaterThan(0);
    for (const e of seen) {
      expect(e.url).toMatch(new RegExp(`^/mirror/api/sec/img/(manifests|blobs)/[^?]+\\?ns=${encodeURIComponent(dead)}$`));
      expect(e.headers['x-mirror-token']).toBe('s3cret');
      expect(e.headers['x-extra']).toBe('a, b');
      expect(e.status).toBe(200);
    }
  });
});
