/**
 * A real OCI registry for tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1 and a free port,
 * filesystem storage in a temp dir (deletes enabled), and optionally
 *  - htpasswd basic auth (bcrypt hash made with bcryptjs),
 *  - token (Bearer) auth: an in-process token server that issues ES256 JWTs with an x5c header, signed by
 *    a throwaway key whose self-signed certificate is the registry's rootcertbundle (made with openssl);
 *    valid credentials get every requested action, anonymous requests get none,
 *  - TLS with a throwaway self-signed certificate for 127.0.0.1 (`caFile` is its PEM), or (`privateCA`) a
 *    server certificate issued by a throwaway CA made with openssl (`caFile` is then the CA's PEM), and
 *    optionally (`clientAuth`) client certificates required, issued by the same CA (`clientCert`/`clientKey`).
 * Images are seeded with skopeo from an OCI layout directory. Every registry is stopped by
 * stopAllRegistries() (call it in afterAll), and killed on process exit as a last resort.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes, sign, X509Certificate, createPrivateKey } from 'node:crypto';
import { copyFile, mkdir, writeFile, readFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import bcrypt from 'bcryptjs';
import { Agent, request } from 'undici';
import { START_TIMEOUT_MS } from './paths.js';
import { tempDir, type TempDir } from './temp.js';

const execFileP = promisify(execFile);

export const DOCKER_REGISTRY = '/usr/bin/docker-registry';
export const TOKEN_SERVICE = 'strata-test-registry';
const TOKEN_ISSUER = 'strata-test-issuer';

export interface RegistryOptions {
  auth?: { username: string; password: string };
  /** With `auth`: Bearer tokens from an in-process token server instead of htpasswd basic auth. */
  token?: boolean;
  /** Serve https with a self-signed certificate for 127.0.0.1. */
  tls?: boolean;
  /** With `tls`: the server certificate is issued by a private CA (caFile = the CA certificate). */
  privateCA?: boolean;
  /** With `tls` and `privateCA`: require a client certificate issued by that CA (http.tls.clientcas). */
  clientAuth?: boolean;
  /** Extra top-level YAML for the registry config (e.g. a `proxy:` section for a pull-through cache). */
  extraConfig?: string;
  /** Access log on (each request logged as a line with the method, path and status); the whole log is kept. */
  accessLog?: boolean;
  /** The address to listen on (default 127.0.0.1), e.g. a test bridge's address reachable from namespaces. */
  bindHost?: string;
}

export interface TokenRequest {
  /** The user whose credentials came along ('' = anonymous, or wrong credentials). */
  user: string;
  authenticated: boolean;
  service: string;
  scopes: string[];
}

export interface StartedRegistry {
  /** "127.0.0.1:PORT" */
  host: string;
  /** "http://127.0.0.1:PORT" (https with `tls`). */
  url: string;
  /** The registry's storage root (docker/registry/v2/... below). */
  storage: string;
  /** The PEM certificate of a `tls` registry (its own CA), or the private CA's certificate. */
  caFile?: string;
  /** A client certificate and key issued by the private CA (`clientAuth`). */
  clientCert?: string;
  clientKey?: string;
  /** Token requests seen by a `token` registry's token server. */
  tokenRequests: TokenRequest[];
  /** The registry's log output so far (stdout and stderr, the last 256 KiB). */
  logs(): string;
  /** Path of a blob's data file in the storage. */
  blobPath(digest: string): string;
  /** Copies the image of an OCI layout dir to `<repo>:<tag>` with skopeo, digests preserved. */
  pushOciLayout(layoutDir: string, repoTag: string, opts?: { layoutRef?: string }): Promise<void>;
  stop(): Promise<void>;
  /** SIGKILL (a crash: connections drop mid-response), then the same cleanup as stop(). */
  kill(): Promise<void>;
}

const running = new Set<RunningRegistry>();

let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort (a test file that forgot stopAllRegistries, or a crash): no registry outlives us.
  process.once('exit', () => {
    for (const r of running) {
      try {
        r.proc.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

async function freePort(bindHost = '127.0.0.1'): Promise<number> {
  const srv = createNetServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, bindHost, () => resolve());
  });
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

class RunningRegistry implements StartedRegistry {
  private output = '';
  private readonly exited: Promise<void>;
  private stopped = false;
  tokenRequests: TokenRequest[] = [];
  caFile?: string;
  clientCert?: string;
  clientKey?: string;

  constructor(
    readonly proc: ChildProcess,
    readonly dir: TempDir,
    readonly host: string,
    readonly url: string,
    readonly storage: string,
    private readonly opts: RegistryOptions,
    private readonly tokenServer: Server | undefined,
  ) {
    const keep = opts.accessLog ? 64 << 20 : 256 * 1024;
    const add = (d: Buffer) => {
      this.output += d.toString();
      if (this.output.length > keep) this.output = this.output.slice(-keep);
    };
    proc.stdout?.on('data', add);
    proc.stderr?.on('data', add);
    this.exited = new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) resolve();
      else proc.once('exit', () => resolve());
    });
  }

  logs(): string {
    return this.output;
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  blobPath(digest: string): string {
    const [alg, hex] = digest.split(':') as [string, string];
    return join(this.storage, 'docker', 'registry', 'v2', 'blobs', alg, hex.slice(0, 2), hex, 'data');
  }

  async pushOciLayout(layoutDir: string, repoTag: string, opts: { layoutRef?: string } = {}): Promise<void> {
    const policy = join(this.dir.path, 'policy.json');
    await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    const args = ['copy', '--all', '--preserve-digests', '--policy', policy, '--dest-tls-verify=false'];
    if (this.opts.auth) args.push('--dest-creds', `${this.opts.auth.username}:${this.opts.auth.password}`);
    if (this.clientCert && this.clientKey) {
      // skopeo reads a client pair from a directory in Docker's certs.d layout.
      const certDir = join(this.dir.path, 'skopeo-certs');
      await mkdir(certDir, { recursive: true });
      await copyFile(this.clientCert, join(certDir, 'client.cert'));
      await copyFile(this.clientKey, join(certDir, 'client.key'));
      args.push('--dest-cert-dir', certDir);
    }
    args.push(`oci:${layoutDir}${opts.layoutRef ? `:${opts.layoutRef}` : ''}`, `docker://${this.host}/${repoTag}`);
    try {
      await execFileP('skopeo', args, { env: { ...process.env, TMPDIR: this.dir.path }, timeout: 60_000 });
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`skopeo ${args.join(' ')} failed: ${e.stderr ?? e.message}\nregistry logs:\n${this.output.slice(-4000)}`);
    }
  }

  async kill(): Promise<void> {
    if (this.alive) this.proc.kill('SIGKILL');
    await this.stop();
  }

  async stop(): Promise<void> {
    running.delete(this);
    if (!this.stopped) {
      this.stopped = true;
      if (this.alive) this.proc.kill('SIGTERM');
      const killer = setTimeout(() => {
        if (this.alive) this.proc.kill('SIGKILL');
      }, 5_000);
      await this.exited;
      clearTimeout(killer);
      if (this.tokenServer) {
        this.tokenServer.closeAllConnections();
        await new Promise<void>((resolve) => this.tokenServer!.close(() => resolve()));
      }
      await this.dir.cleanup();
    }
    await this.exited;
  }
}

/** A self-signed certificate and key (EC P-256) made with openssl; SAN IP:127.0.0.1. */
async function selfSigned(dir: string, name: string, cn: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  await execFileP('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${cn}`,
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
  ]);
  return { cert, key };
}

/** A private CA, and certificates it issues (EC P-256): a server one for 127.0.0.1, a client one. */
async function privateCA(dir: string): Promise<{ ca: string; issue(name: string, cn: string, server: boolean): Promise<{ cert: string; key: string }> }> {
  const ca = join(dir, 'ca.crt');
  const caKey = join(dir, 'ca.key');
  await execFileP('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', caKey, '-out', ca, '-days', '2', '-subj', '/CN=strata test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return {
    ca,
    async issue(name, cn, server) {
      const cert = join(dir, `${name}.crt`);
      const key = join(dir, `${name}.key`);
      const csr = join(dir, `${name}.csr`);
      const ext = join(dir, `${name}.ext`);
      await execFileP('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${cn}`]);
      await writeFile(
        ext,
        server
          ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n'
          : 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n',
      );
      await execFileP('openssl', ['x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-out', cert, '-days', '2', '-extfile', ext]);
      return { cert, key };
    },
  };
}

/** The token server of a `token` registry. */
async function startTokenServer(
  keyFile: string,
  certFile: string,
  auth: { username: string; password: string },
  log: TokenRequest[],
): Promise<{ server: Server; realm: string }> {
  const key = createPrivateKey(await readFile(keyFile, 'utf8'));
  const certDer = new X509Certificate(await readFile(certFile)).raw;
  const server = createHttpServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://token');
    if (req.method !== 'GET' || u.pathname !== '/token') {
      res.writeHead(404).end();
      return;
    }
    let user = '';
    let authenticated = false;
    const h = req.headers.authorization;
    if (h?.startsWith('Basic ')) {
      const [name, ...rest] = Buffer.from(h.slice(6), 'base64').toString('utf8').split(':');
      if (name === auth.username && rest.join(':') === auth.password) {
        user = name;
        authenticated = true;
      } else {
        // Wrong credentials: refused, like a real token server.
        log.push({ user: name ?? '', authenticated: false, service: u.searchParams.get('service') ?? '', scopes: u.searchParams.getAll('scope') });
        res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ details: 'incorrect username or password' }));
        return;
      }
    }
    const scopes = u.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
    log.push({ user, authenticated, service: u.searchParams.get('service') ?? '', scopes });
    const access = authenticated
      ? scopes.map((s) => {
          const parts = s.split(':');
          const actions = parts.pop()!.split(',');
          const type = parts.shift()!;
          return { type, name: parts.join(':'), actions };
        })
      : [];
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'ES256', x5c: [certDer.toString('base64')] };
    const claims = {
      iss: TOKEN_ISSUER,
      sub: user,
      aud: u.searchParams.get('service') ?? TOKEN_SERVICE,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: randomBytes(8).toString('hex'),
      access,
    };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
    const token = `${input}.${b64url(sig)}`;
    res.writeHead(200, { 'content-type': 'application/json' }).end(
      JSON.stringify({ token, access_token: token, expires_in: 300, issued_at: new Date(now * 1000).toISOString() }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return { server, realm: `http://127.0.0.1:${(server.address() as AddressInfo).port}/token` };
}

async function waitReady(url: string, proc: ChildProcess, output: () => string, client?: { cert: string; key: string }): Promise<void> {
  const tlsClient = client ? { cert: await readFile(client.cert, 'utf8'), key: await readFile(client.key, 'utf8') } : {};
  const agent = new Agent({ connect: { rejectUnauthorized: false, ...tlsClient } });
  try {
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`docker-registry exited early:\n${output()}`);
      try {
        const res = await request(`${url}/v2/`, { dispatcher: agent });
        await res.body.dump();
        if (res.statusCode === 200 || res.statusCode === 401) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`docker-registry did not answer on ${url}/v2/:\n${output()}`);
      await sleep(50);
    }
  } finally {
    await agent.close();
  }
}

/** Starts a registry (see the file comment). */
export async function startRegistry(opts: RegistryOptions = {}): Promise<StartedRegistry> {
  installExitHook();
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const dir = await tempDir('strata-registry-');
    let tokenServer: Server | undefined;
    try {
      const storage = join(dir.path, 'storage');
      const port = await freePort(opts.bindHost);
      const host = `${opts.bindHost ?? '127.0.0.1'}:${port}`;
      const lines = [
        'version: 0.1',
        'log:',
        `  level: ${opts.accessLog ? 'info' : 'warn'}`,
        '  accesslog:',
        `    disabled: ${opts.accessLog ? 'false' : 'true'}`,
        'storage:',
        '  filesystem:',
        `    rootdirectory: ${storage}`,
        '  delete:',
        '    enabled: true',
        '  maintenance:',
        '    uploadpurging:',
        '      enabled: false',
        'http:',
        `  addr: ${host}`,
        `  secret: ${randomBytes(16).toString('hex')}`,
      ];
      let caFile: string | undefined;
      let client: { cert: string; key: string } | undefined;
      if (opts.tls && opts.privateCA) {
        const pki = await privateCA(dir.path);
        const { cert, key } = await pki.issue('server', '127.0.0.1', true);
        caFile = pki.ca;
        lines.push('  tls:', `    certificate: ${cert}`, `    key: ${key}`);
        if (opts.clientAuth) {
          client = await pki.issue('client', 'strata test client', false);
          lines.push('    clientcas:', `      - ${pki.ca}`);
        }
      } else if (opts.tls) {
        const { cert, key } = await selfSigned(dir.path, 'tls', '127.0.0.1');
        caFile = cert;
        lines.push('  tls:', `    certificate: ${cert}`, `    key: ${key}`);
      }
      const tokenLog: TokenRequest[] = [];
      if (opts.auth && opts.token) {
        const { cert, key } = await selfSigned(dir.path, 'token', TOKEN_ISSUER);
        const ts = await startTokenServer(key, cert, opts.auth, tokenLog);
        tokenServer = ts.server;
        lines.push(
          'auth:',
          '  token:',
          `    realm: ${ts.realm}`,
          `    service: ${TOKEN_SERVICE}`,
          `    issuer: ${TOKEN_ISSUER}`,
          `    rootcertbundle: ${cert}`,
        );
      } else if (opts.auth) {
        const htpasswd = join(dir.path, 'htpasswd');
        // bcryptjs writes $2b$; the registry's Go bcrypt reads $2a$/$2b$/$2y$.
        await writeFile(htpasswd, `${opts.auth.username}:${bcrypt.hashSync(opts.auth.password, 6)}\n`);
        lines.push('auth:', '  htpasswd:', '    realm: strata-test', `    path: ${htpasswd}`);
      }
      if (opts.extraConfig) lines.push(opts.extraConfig);
      const config = join(dir.path, 'config.yml');
      await writeFile(config, lines.join('\n') + '\n');
      const proc = spawn(DOCKER_REGISTRY, ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
      const url = `${opts.tls ? 'https' : 'http'}://${host}`;
      const reg = new RunningRegistry(proc, dir, host, url, storage, opts, tokenServer);
      reg.tokenRequests = tokenLog;
      if (caFile) reg.caFile = caFile;
      if (client) {
        reg.clientCert = client.cert;
        reg.clientKey = client.key;
      }
      running.add(reg);
      try {
        await waitReady(url, proc, () => reg.logs(), client);
      } catch (err) {
        await reg.stop();
        throw err;
      }
      return reg;
    } catch (err) {
      lastErr = err;
      if (tokenServer?.listening) await new Promise<void>((resolve) => tokenServer!.close(() => resolve()));
      await dir.cleanup();
      // A port taken between freePort() and the registry's bind: try another.
      if (!/address already in use/.test(String((err as Error).message))) throw err;
    }
  }
  throw lastErr;
}

/** Stops every registry this process started. */
export async function stopAllRegistries(): Promise<void> {
  await Promise.all([...running].map((r) => r.stop()));
}

/** sha256 of a buffer as a digest string. */
export const digestOf = (b: Buffer | string): string => 'sha256:' + createHash('sha256').update(b).digest('hex');
