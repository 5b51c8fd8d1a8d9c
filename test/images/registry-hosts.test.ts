/**
 * hosts.toml: parsing (order, capabilities, paths, TLS fields, errors), directory lookup, mirrors in front of
 * an unreachable registry, fallback from a dead mirror, push going only to push-capable hosts, and https
 * registries verified with a `ca` file or `skip_verify`.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StrataError } from '../../src/core/errdefs.js';
import { configureHosts, hostDirCandidates, parseHostsToml } from '../../src/remotes/hosts.js';
import { createResolver, type RegistryResolver } from '../../src/remotes/resolver.js';
import type { ResolverOptions } from '../../src/remotes/types.js';
import { kindOf } from '../helpers/errors.js';
import { buildOciLayout, makeLayerTar, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, stopAllRegistries, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

let tmp: TempDir;
let image: OciLayout;
const resolvers: RegistryResolver[] = [];
function resolver(opts: ResolverOptions): RegistryResolver {
  // Short backoff: connection refusals to the dead hosts are retried before falling over.
  const r = createResolver(opts, { backoffBaseMs: 5 });
  resolvers.push(r);
  return r;
}

/** A loopback port with nothing listening (bound, then closed). */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

async function hostsFile(root: string, dirName: string, text: string): Promise<void> {
  await mkdir(join(root, dirName), { recursive: true });
  await writeFile(join(root, dirName, 'hosts.toml'), text);
}

beforeAll(async () => {
  tmp = await tempDir('strata-registry-hosts-');
  image = await buildOciLayout(join(tmp.path, 'image'), { layers: [await makeLayerTar({ m: 'mirror me\n' })], refName: 'v1' });
});

afterAll(async () => {
  await Promise.all(resolvers.map((r) => r.close()));
  await stopAllRegistries();
  await tmp?.cleanup();
});

describe('hosts.toml parsing', () => {
  it('lists mirrors in file order, then the server', () => {
    const hosts = parseHostsToml(
      [
        'server = "https://registry.example.com"',
        'capabilities = ["pull", "resolve", "push"]',
        '',
        '[host."https://mirror-b.example.com"]',
        '  capabilities = ["pull", "resolve"]',
        '  skip_verify = true',
        '  ca = "certs/ca.pem"',
        '  client = [["client.crt", "/abs/client.key"]]',
        '  [host."https://mirror-b.example.com".header]',
        '    x-custom = "1"',
        '    x-many = ["a", "b"]',
        '',
        '[host."https://mirror-a.example.com/some/prefix"]',
        '  capabilities = ["pull"]',
        '',
        '[host."https://raw.example.com/api/v2/custom"]',
        '  override_path = true',
        '',
        '[host."plain.example.com:5000"]',
      ].join('\n'),
      '/etc/strata/certs.d/docker.io',
    );
    expect(hosts.map((h) => `${h.scheme}://${h.host}${h.path}`)).toEqual([
      'https://mirror-b.example.com/v2',
      'https://mirror-a.example.com/some/prefix/v2',
      'https://raw.example.com/api/v2/custom',
      'https://plain.example.com:5000/v2',
      'https://registry.example.com/v2',
    ]);
    expect(hosts[0]).toMatchObject({
      capabilities: ['pull', 'resolve'],
      skipVerify: true,
      caFiles: ['/etc/strata/certs.d/docker.io/certs/ca.pem'],
      clientPairs: [['/etc/strata/certs.d/docker.io/client.crt', '/abs/client.key']],
      header: { 'x-custom': ['1'], 'x-many': ['a', 'b'] },
    });
    expect(hosts[1]!.capabilities).toEqual(['pull']);
    expect(hosts[3]!.capabilities).toEqual(['pull', 'resolve', 'push']);
  });

  it('uses http for loopback hosts written without a scheme, and under plainHttp', () => {
    const hosts = parseHostsToml('[host."127.0.0.1:5001"]\n[host."mirror.example.com"]\n', '/x');
    expect(hosts.slice(0, 2).map((h) => `${h.scheme}://${h.host}`)).toEqual(['http://127.0.0.1:5001', 'https://mirror.example.com']);
    expect(parseHostsToml('[host."mirror.example.com"]\n', '/x', { plainHttp: true })[0]!.scheme).toBe('http');
  });

  it('rejects bad files with invalid argument', () => {
    for (const text of ['[host."https://m"]\ncapabilities = ["pull", "fly"]\n', 'server = 5\n', 'this is = not toml = at all', '[host."https://m"]\nskip_verify = "yes"\n']) {
      let err: unknown;
      try {
        parseHostsToml(text, '/x');
      } catch (e) {
        err = e;
      }
      expect(err, text).toBeInstanceOf(StrataError);
      expect((err as StrataError).kind).toBe('invalid argument');
    }
  });

  it('looks up <host>_<port>_, then <host:port>, then _default; defaults without a directory', async () => {
    expect(hostDirCandidates('/h', '127.0.0.1:5000')).toEqual(['/h/127.0.0.1_5000_', '/h/127.0.0.1:5000', '/h/_default']);
    expect(hostDirCandidates('/h', 'docker.io')).toEqual(['/h/docker.io', '/h/_default']);
    const root = join(tmp.path, 'lookup');
    await hostsFile(root, '_default', '[host."https://fallback.example.com"]\ncapabilities = ["pull"]\n');
    await hostsFile(root, 'ghcr.io', 'server = "https://ghcr.example.com"\n');
    expect((await configureHosts('quay.io', { hostsDir: root })).map((h) => `${h.scheme}://${h.host}${h.path}`)).toEqual([
      'https://fallback.example.com/v2',
      'https://quay.io/v2',
    ]);
    expect((await configureHosts('ghcr.io', { hostsDir: root })).map((h) => h.host)).toEqual(['ghcr.example.com']);
    expect(await configureHosts('docker.io')).toEqual([
      { scheme: 'https', host: 'registry-1.docker.io', path: '/v2', capabilities: ['pull', 'resolve', 'push'], skipVerify: false, caFiles: [], clientPairs: [], header: {} },
    ]);
    expect((await configureHosts('localhost:5000'))[0]!.scheme).toBe('http');
    expect((await configureHosts('10.1.2.3:5000'))[0]!.scheme).toBe('https');
    expect((await configureHosts('10.1.2.3:5000', { plainHttp: true }))[0]!.scheme).toBe('http');
    // A host directory without hosts.toml contributes its certificate files.
    await mkdir(join(root, 'certs.example.com'), { recursive: true });
    await writeFile(join(root, 'certs.example.com', 'ca.crt'), '');
    await writeFile(join(root, 'certs.example.com', 'client.cert'), '');
    await writeFile(join(root, 'certs.example.com', 'client.key'), '');
    expect(await configureHosts('certs.example.com', { hostsDir: root })).toMatchObject([
      {
        host: 'certs.example.com',
        caFiles: [join(root, 'certs.example.com', 'ca.crt')],
        clientPairs: [[join(root, 'certs.example.com', 'client.cert'), join(root, 'certs.example.com', 'client.key')]],
      },
    ]);
  });
});

describe('mirrors', () => {
  let reg: StartedRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
    await reg.pushOciLayout(image.dir, 'test/img:v1');
  });

  it('resolves and fetches an unreachable registry through its mirror', async () => {
    const dead = `127.0.0.1:${await closedPort()}`;
    const root = join(tmp.path, 'mirror1');
    await hostsFile(root, dead.replace(':', '_') + '_', `server = "http://${dead}"\n\n[host."http://${reg.host}"]\n  capabilities = ["pull", "resolve"]\n`);
    const r = resolver({ hostsDir: root, retries: 1 });
    const ref = `${dead}/test/img:v1`;
    const res = await r.resolve(ref);
    expect(res.name).toBe(ref);
    expect(res.desc.digest).toBe(image.manifest.digest);
    const f = r.fetcher(ref);
    const chunks: Buffer[] = [];
    for await (const c of await f.fetch({ mediaType: image.layers[0]!.mediaType, digest: image.layers[0]!.digest, size: image.layers[0]!.size })) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).equals(image.layers[0]!.bytes)).toBe(true);
    // The mirror cannot push (no capability), so pushing goes to the dead server.
    const p = r.pusher(ref);
    expect(await kindOf(p.push({ mediaType: image.config.mediaType, digest: image.config.digest, size: image.config.size }, async () => Readable.from([image.config.bytes])))).toBe('unavailable');
  });

  it('falls over from a dead mirror to the next host', async () => {
    const dead = `127.0.0.1:${await closedPort()}`;
    const root = join(tmp.path, 'mirror2');
    // Directory named "host:port" this time; the registry itself is the server.
    await hostsFile(root, reg.host, `server = "http://${reg.host}"\n\n[host."http://${dead}"]\n  capabilities = ["pull", "resolve"]\n`);
    const r = resolver({ hostsDir: root, retries: 1 });
    expect((await r.resolve(`${reg.host}/test/img:v1`)).desc.digest).toBe(image.manifest.digest);
    const bytes: Buffer[] = [];
    for await (const c of await r.fetcher(`${reg.host}/test/img:v1`).fetch({ mediaType: image.config.mediaType, digest: image.config.digest, size: image.config.size })) bytes.push(c as Buffer);
    expect(Buffer.concat(bytes).equals(image.config.bytes)).toBe(true);
    // Not found on the mirror (here: unreachable) and on the server: not found.
    expect(await kindOf(r.resolve(`${reg.host}/test/img:missing`))).toBe('not found');
  });

  it('reports unavailable when no host can be reached', async () => {
    const dead = `127.0.0.1:${await closedPort()}`;
    const r = resolver({ retries: 1 });
    const err = await r.resolve(`${dead}/test/img:v1`).catch((e: unknown) => e);
    expect((err as StrataError).kind).toBe('unavailable');
    expect((err as Error).message).toMatch(/ECONNREFUSED/);
  });
});

describe('https registries', () => {
  let reg: StartedRegistry;
  beforeAll(async () => {
    reg = await startRegistry({ tls: true });
    await reg.pushOciLayout(image.dir, 'tls/img:v1');
  });

  it('verifies the certificate against a hosts.toml ca; without it the connection is refused as unavailable', async () => {
    const root = join(tmp.path, 'tls-ca');
    await hostsFile(root, reg.host, `server = "https://${reg.host}"\nca = "registry-ca.pem"\n`);
    await copyFile(reg.caFile!, join(root, reg.host, 'registry-ca.pem'));
    expect((await resolver({ hostsDir: root }).resolve(`${reg.host}/tls/img:v1`)).desc.digest).toBe(image.manifest.digest);

    const root2 = join(tmp.path, 'tls-noca');
    await hostsFile(root2, reg.host, `server = "https://${reg.host}"\n`);
    const err = await resolver({ hostsDir: root2, retries: 0 }).resolve(`${reg.host}/tls/img:v1`).catch((e: unknown) => e);
    expect((err as StrataError).kind).toBe('unavailable');
    expect((err as Error).message).toMatch(/certificate/i);
  });

  it('accepts any certificate with skip_verify', async () => {
    const root = join(tmp.path, 'tls-skip');
    await hostsFile(root, reg.host, `server = "https://${reg.host}"\nskip_verify = true\n`);
    const r = resolver({ hostsDir: root });
    const { desc } = await r.resolve(`${reg.host}/tls/img:v1`);
    const chunks: Buffer[] = [];
    for await (const c of await r.fetcher(`${reg.host}/tls/img:v1`).fetch(desc)) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).equals(image.manifest.bytes)).toBe(true);
  });
});
