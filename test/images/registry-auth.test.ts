/**
 * Registry authentication against real registries: htpasswd (Basic) and token (Bearer, an in-process token
 * server that signs JWTs the registry verifies), credentials from a callback and from a Docker config.json,
 * token caching per scope, and the push + mount scopes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StrataError } from '../../src/core/errdefs.js';
import { parseAuthHeader, normalizeScopes } from '../../src/remotes/auth.js';
import { credentialsFromDockerConfig, defaultDockerConfigPath, parseDockerConfig } from '../../src/remotes/dockerconfig.js';
import { createResolver, type RegistryResolver } from '../../src/remotes/resolver.js';
import type { Credentials } from '../../src/remotes/types.js';
import type { Descriptor } from '../../src/core/descriptor.js';
import { kindOf } from '../helpers/errors.js';
import { buildOciLayout, makeLayerTar, type LayoutBlob, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, stopAllRegistries, TOKEN_SERVICE, type StartedRegistry } from '../helpers/registry.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const USER = { username: 'strata', password: 'pa:ss w0rd' };
const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');
const descOf = (b: LayoutBlob): Descriptor => ({ mediaType: b.mediaType, digest: b.digest, size: b.size });
async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
const b64 = (s: string) => Buffer.from(s).toString('base64');

let tmp: TempDir;
let image: OciLayout;
const resolvers: RegistryResolver[] = [];
function resolverWith(credentials?: (host: string) => Credentials | undefined): RegistryResolver {
  const r = createResolver(credentials ? { credentials } : {});
  resolvers.push(r);
  return r;
}

beforeAll(async () => {
  tmp = await tempDir('strata-registry-auth-');
  image = await buildOciLayout(join(tmp.path, 'image'), { layers: [await makeLayerTar({ f: randomBytes(5000) })], refName: 'v1' });
});

const servers: Server[] = [];
async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const server = createServer(handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return `127.0.0.1:${(server.address() as AddressInfo).port}`;
}

afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
  await Promise.all(resolvers.map((r) => r.close()));
  await stopAllRegistries();
  await tmp?.cleanup();
});

describe('htpasswd (Basic) registry', () => {
  let reg: StartedRegistry;
  beforeAll(async () => {
    reg = await startRegistry({ auth: USER });
    await reg.pushOciLayout(image.dir, 'private/img:v1');
  });

  it('refuses anonymous and wrong credentials with permission denied', async () => {
    const ref = `${reg.host}/private/img:v1`;
    const anon = resolverWith();
    const err = await anon.resolve(ref).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StrataError);
    expect((err as StrataError).kind).toBe('permission denied');
    expect((err as Error).message).toMatch(/pull access denied/);
    expect(await kindOf(anon.fetcher(ref).fetch(descOf(image.config)))).toBe('permission denied');
    const wrong = resolverWith(() => ({ username: USER.username, secret: 'nope' }));
    expect(await kindOf(wrong.resolve(ref))).toBe('permission denied');
    expect(await kindOf(wrong.pusher(ref).push(descOf(image.config), async () => Readable.from([image.config.bytes])))).toBe('permission denied');
  });

  it('resolves, fetches and pushes with credentials from the callback (asked for the registry host)', async () => {
    const asked = new Set<string>();
    const r = resolverWith((host) => {
      asked.add(host);
      return { username: USER.username, secret: USER.password };
    });
    const ref = `${reg.host}/private/img:v1`;
    const { desc } = await r.resolve(ref);
    expect(desc.digest).toBe(image.manifest.digest);
    const f = r.fetcher(ref);
    for (const b of [image.manifest, image.config, ...image.layers]) expect(sha256(await readAll(await f.fetch(descOf(b))))).toBe(b.digest);
    const fresh = randomBytes(1000);
    const d = { mediaType: 'application/octet-stream', digest: sha256(fresh), size: fresh.length };
    expect(await r.pusher(`${reg.host}/private/other:v1`).push(d, async () => Readable.from([fresh]))).toBe('pushed');
    expect(await r.pusher(`${reg.host}/private/third:v1`).push(descOf(image.layers[0]!), async () => Readable.from([image.layers[0]!.bytes]), { mountFrom: ['private/img'] })).toBe('mounted');
    expect([...asked]).toEqual([reg.host]);
  });

  it('reads credentials from a docker config.json', async () => {
    const ref = `${reg.host}/private/img:v1`;
    const forms: Array<Record<string, unknown>> = [
      { [reg.host]: { auth: b64(`${USER.username}:${USER.password}`) } },
      { [`http://${reg.host}`]: { auth: b64(`${USER.username}:${USER.password}`) } },
      { [`https://${reg.host}/v1/`]: { username: USER.username, password: USER.password } },
    ];
    for (const [i, auths] of forms.entries()) {
      const file = join(tmp.path, `config-${i}.json`);
      await writeFile(file, JSON.stringify({ auths }));
      const r = resolverWith(credentialsFromDockerConfig(file));
      expect((await r.resolve(ref)).desc.digest, JSON.stringify(auths)).toBe(image.manifest.digest);
    }
    // No entry for this host: anonymous.
    const other = join(tmp.path, 'config-other.json');
    await writeFile(other, JSON.stringify({ auths: { 'elsewhere.example.com': { auth: b64('a:b') } } }));
    expect(await kindOf(resolverWith(credentialsFromDockerConfig(other)).resolve(ref))).toBe('permission denied');
  });
});

describe('token (Bearer) registry', () => {
  let reg: StartedRegistry;
  beforeAll(async () => {
    reg = await startRegistry({ auth: USER, token: true });
    await reg.pushOciLayout(image.dir, 'tok/img:v1');
  });

  it('refuses anonymous (an empty token) and wrong credentials (the token server says no)', async () => {
    const ref = `${reg.host}/tok/img:v1`;
    const before = reg.tokenRequests.length;
    expect(await kindOf(resolverWith().resolve(ref))).toBe('permission denied');
    const anonReq = reg.tokenRequests.slice(before);
    expect(anonReq.length).toBeGreaterThanOrEqual(1);
    expect(anonReq[0]).toEqual({ user: '', authenticated: false, service: TOKEN_SERVICE, scopes: ['repository:tok/img:pull'] });
    expect(await kindOf(resolverWith(() => ({ username: USER.username, secret: 'bad' })).resolve(ref))).toBe('permission denied');
  });

  it('fetches a token with basic credentials once per scope and reuses it', async () => {
    const r = resolverWith(() => ({ username: USER.username, secret: USER.password }));
    const ref = `${reg.host}/tok/img:v1`;
    const before = reg.tokenRequests.length;
    const { desc } = await r.resolve(ref);
    expect(desc.digest).toBe(image.manifest.digest);
    const f = r.fetcher(ref);
    for (let i = 0; i < 3; i++) {
      for (const b of [image.manifest, image.config, ...image.layers]) expect(sha256(await readAll(await f.fetch(descOf(b))))).toBe(b.digest);
    }
    const seen = reg.tokenRequests.slice(before);
    expect(seen).toEqual([{ user: USER.username, authenticated: true, service: TOKEN_SERVICE, scopes: ['repository:tok/img:pull'] }]);
  });

  it('asks for pull,push to push and adds the source repository for a mount', async () => {
    const r = resolverWith(() => ({ username: USER.username, secret: USER.password }));
    const before = reg.tokenRequests.length;
    const layer = image.layers[0]!;
    const p = r.pusher(`${reg.host}/tok/copy:v1`);
    expect(await p.push(descOf(layer), async () => Readable.from([layer.bytes]), { mountFrom: ['tok/img'] })).toBe('mounted');
    expect(await p.push(descOf(image.config), async () => Readable.from([image.config.bytes]))).toBe('pushed');
    expect(await p.push(descOf(image.manifest), async () => Readable.from([image.manifest.bytes]), { tag: true })).toBe('pushed');
    const scopes = reg.tokenRequests.slice(before).map((t) => t.scopes.join(' '));
    expect(new Set(scopes)).toEqual(new Set(['repository:tok/copy:pull,push', 'repository:tok/copy:pull,push repository:tok/img:pull']));
    expect((await r.resolve(`${reg.host}/tok/copy:v1`)).desc.digest).toBe(image.manifest.digest);
  });
});

describe('identity tokens', () => {
  it('exchanges an identity token through the OAuth2 refresh-token grant (a stand-in token server and registry)', async () => {
    const tokenCalls: Array<{ method: string; form: Record<string, string> }> = [];
    const tokenHost = await listen((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const form = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString()));
        tokenCalls.push({ method: req.method!, form });
        if (req.method === 'POST' && form['grant_type'] === 'refresh_token' && form['refresh_token'] === 'the-refresh-token') {
          // Only access_token, as OAuth2 servers answer.
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ access_token: 'opaque-access', expires_in: 600 }));
        } else res.writeHead(401).end();
      });
    });
    const blob = randomBytes(100);
    const registry = await listen((req, res) => {
      if (req.headers.authorization !== 'Bearer opaque-access') {
        res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${tokenHost}/oauth",service="stand-in",scope="repository:x/y:pull"` }).end();
        return;
      }
      res.writeHead(200, { 'content-length': String(blob.length) }).end(blob);
    });
    const r = resolverWith((h) => (h === registry ? { username: '', secret: 'the-refresh-token' } : undefined));
    const desc = { mediaType: 'application/octet-stream', digest: sha256(blob), size: blob.length };
    expect((await readAll(await r.fetcher(`${registry}/x/y:z`).fetch(desc))).equals(blob)).toBe(true);
    expect((await readAll(await r.fetcher(`${registry}/x/y:z`).fetch(desc))).equals(blob)).toBe(true);
    expect(tokenCalls).toEqual([
      {
        method: 'POST',
        form: { grant_type: 'refresh_token', refresh_token: 'the-refresh-token', client_id: 'strata', service: 'stand-in', scope: 'repository:x/y:pull' },
      },
    ]);
  });
});

describe('refused tokens', () => {
  it('fetches one fresh token after invalid_token, and gives up on insufficient_scope', async () => {
    let issued = 0;
    const tokenHost = await listen((_req, res) => {
      issued++;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: `t${issued}` }));
    });
    const blob = randomBytes(64);
    const seen: Array<string | undefined> = [];
    const registry = await listen((req, res) => {
      seen.push(req.headers.authorization);
      const challenge = (error?: string) =>
        `Bearer realm="http://${tokenHost}/token",service="s",scope="repository:x/y:pull"${error ? `,error="${error}"` : ''}`;
      if (req.url!.startsWith('/v2/x/denied/')) {
        res.writeHead(401, { 'www-authenticate': challenge(req.headers.authorization ? 'insufficient_scope' : undefined) }).end();
      } else if (req.headers.authorization === 'Bearer t1') {
        // The first token is "expired".
        res.writeHead(401, { 'www-authenticate': challenge('invalid_token') }).end();
      } else if (req.headers.authorization === 'Bearer t2') {
        res.writeHead(200, { 'content-length': String(blob.length) }).end(blob);
      } else {
        res.writeHead(401, { 'www-authenticate': challenge() }).end();
      }
    });
    const r = resolverWith();
    const desc = { mediaType: 'application/octet-stream', digest: sha256(blob), size: blob.length };
    expect((await readAll(await r.fetcher(`${registry}/x/y:z`).fetch(desc))).equals(blob)).toBe(true);
    expect(seen).toEqual([undefined, 'Bearer t1', 'Bearer t2']);
    expect(issued).toBe(2);
    expect(await kindOf(r.fetcher(`${registry}/x/denied:z`).fetch(desc))).toBe('permission denied');
    expect(issued).toBe(3);
  });
});

describe('auth parsing', () => {
  it('parses WWW-Authenticate challenges, bearer first', () => {
    expect(
      parseAuthHeader([
        'Basic realm="r1"',
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push", error="insufficient_scope"',
      ]),
    ).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.example.com/token', service: 'registry.example.com', scope: 'repository:a/b:pull,push', error: 'insufficient_scope' } },
      { scheme: 'basic', params: { realm: 'r1' } },
    ]);
    expect(parseAuthHeader('BASIC Realm=plain')).toEqual([{ scheme: 'basic', params: { realm: 'plain' } }]);
    expect(parseAuthHeader('Bearer realm="a \\"quoted\\" realm"')).toEqual([{ scheme: 'bearer', params: { realm: 'a "quoted" realm' } }]);
    expect(parseAuthHeader(undefined)).toEqual([]);
  });

  it('merges scopes per resource', () => {
    expect(normalizeScopes(['repository:b:pull', 'repository:a:push', 'repository:a:pull', 'repository:b:pull'])).toEqual([
      'repository:a:pull,push',
      'repository:b:pull',
    ]);
  });
});

describe('docker config.json', () => {
  it('maps docker.io, index.docker.io and registry-1.docker.io to the index.docker.io entry', () => {
    const creds = parseDockerConfig(
      JSON.stringify({
        auths: {
          'https://index.docker.io/v1/': { auth: b64('hub:secret:with:colons') },
          'ghcr.io': { username: 'gh', password: 'pw' },
          'quay.io': { identitytoken: 'refresh-me' },
          'empty.example.com': {},
        },
        credsStore: 'desktop',
      }),
    );
    const hub = { username: 'hub', secret: 'secret:with:colons' };
    expect(creds.get('index.docker.io')).toEqual(hub);
    expect(creds.get('ghcr.io')).toEqual({ username: 'gh', secret: 'pw' });
    expect(creds.get('quay.io')).toEqual({ username: '', secret: 'refresh-me' });
    expect(creds.has('empty.example.com')).toBe(false);
  });

  it('looks hosts up through the same normalization, and a missing file means anonymous', async () => {
    const file = join(tmp.path, 'hub.json');
    await writeFile(file, JSON.stringify({ auths: { 'https://index.docker.io/v1/': { auth: b64('u:p') }, 'LocalHost:5000': { auth: b64('l:q') } } }));
    const get = credentialsFromDockerConfig(file);
    for (const h of ['docker.io', 'registry-1.docker.io', 'index.docker.io']) expect(get(h), h).toEqual({ username: 'u', secret: 'p' });
    expect(get('localhost:5000')).toEqual({ username: 'l', secret: 'q' });
    expect(get('ghcr.io')).toBeUndefined();
    expect(credentialsFromDockerConfig(join(tmp.path, 'missing.json'))('docker.io')).toBeUndefined();
    const bad = join(tmp.path, 'bad.json');
    await writeFile(bad, '{not json');
    expect(() => credentialsFromDockerConfig(bad)).toThrow(/not valid JSON/);
    expect(defaultDockerConfigPath({ DOCKER_CONFIG: '/etc/dc' })).toBe('/etc/dc/config.json');
    expect(defaultDockerConfigPath({ HOME: '/nowhere' })).toMatch(/\.docker\/config\.json$/);
  });
});
