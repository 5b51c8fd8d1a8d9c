/**
 * The HTTP layer under the resolver: undici keep-alive agents (one per TLS setting), authorization through
 * the Authorizer (a 401 is answered once per request and the request replayed), redirects for GET/HEAD
 * (authorization is dropped when a redirect leaves the registry's origin, as for blobs served from object
 * storage), and retries with exponential backoff for connection errors, 408, 429 and 5xx. Retries happen
 * before a response is handed to the caller, so no body byte is ever delivered twice.
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Readable } from 'node:stream';
import { rootCertificates } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, type Dispatcher } from 'undici';
import { StrataError, invalidArgument, unavailable } from '../core/errdefs.js';
import type { Logger } from '../log/index.js';
import { STRATA_VERSION } from '../version.js';
import { Authorizer } from './auth.js';
import type { RegistryHost } from './hosts.js';
import type { Credentials } from './types.js';

export const USER_AGENT = `strata/${STRATA_VERSION}`;

export type Headers = Record<string, string | string[] | undefined>;

export interface RegistryResponse {
  status: number;
  headers: Headers;
  /** The body; the caller consumes or destroys it. */
  body: Readable & { text(): Promise<string>; dump(opts?: { limit: number }): Promise<void> };
  /** The URL that answered (after redirects). */
  url: URL;
}

export interface RegistryRequest {
  host: RegistryHost;
  method: 'GET' | 'HEAD' | 'PUT' | 'POST' | 'DELETE' | 'PATCH';
  /** Path with query, from the origin ("/v2/library/busybox/manifests/latest"). */
  path: string;
  headers?: Record<string, string>;
  /** Token scopes for this request. */
  scopes: string[];
  /** A body factory: called again for every replay (auth, retry), so a stream is never sent twice. */
  body?: () => Promise<Readable | Buffer | string>;
  /** false: no Authorization header (a redirect target or an upload location on another origin). */
  auth?: boolean;
  /** Override the transport's retry count (0 for non-idempotent requests retried higher up). */
  retries?: number;
}

export interface TransportOptions {
  credentials?: (host: string) => Credentials | undefined;
  retries?: number;
  /** Connections per origin. */
  connections?: number;
  logger?: Logger;
  /** Base of the backoff, ms (tests may lower it). */
  backoffBaseMs?: number;
  /** TCP connect + TLS handshake limit per connection, ms; default 30 s (containerd's dialer timeout). */
  connectTimeoutMs?: number;
  /** Limit between sending a request and the response's headers, ms; default 30 s (containerd has none). */
  responseHeaderTimeoutMs?: number;
}

/** containerd's dialer timeout (remotes/docker/config: net.Dialer{Timeout: 30 * time.Second}). */
export const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;
/**
 * containerd sets no response-header timeout, so a registry that accepts and never answers stalls a pull
 * for good; Strata gives up on such a host after this long and goes on to the next one.
 */
export const DEFAULT_RESPONSE_HEADER_TIMEOUT_MS = 30_000;

/** Errors that mean the host did not answer in time: worth trying another host, not the same one again. */
const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT']);

/** Error codes of transport failures worth retrying. */
const TRANSIENT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'ECONNABORTED',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
]);

const errCode = (err: unknown): string | undefined => {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | null;
  if (e && typeof e.code === 'string') return e.code;
  if (e && e.cause && typeof e.cause.code === 'string') return e.cause.code;
  return undefined;
};

export const isTransientError = (err: unknown): boolean => {
  const c = errCode(err);
  return c !== undefined && TRANSIENT_CODES.has(c);
};

/** OpenSSL/Node verification failures of a server certificate. */
const TLS_TRUST_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

export const isTimeoutError = (err: unknown): boolean => {
  const c = errCode(err);
  return c !== undefined && TIMEOUT_CODES.has(c);
};

export const isRetryableStatus = (s: number): boolean => s === 408 || s === 429 || (s >= 500 && s !== 501 && s !== 505);

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 10;
/** Most bytes of an error body read for its message. */
const ERROR_BODY_LIMIT = 64 * 1024;

export const header = (h: Headers, name: string): string | undefined => {
  const v = h[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
};

/** Reads at most `limit` bytes of a body (then destroys the rest). */
export async function readBody(body: Readable, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    const b = c as Buffer;
    chunks.push(b);
    n += b.length;
    if (n > limit) {
      body.destroy();
      break;
    }
  }
  return Buffer.concat(chunks);
}

/** Discards a response body without failing. */
export async function drain(res: RegistryResponse): Promise<void> {
  try {
    await res.body.dump({ limit: 256 * 1024 });
  } catch {
    res.body.destroy();
  }
}

/** The registry's error text: `{"errors":[{"code":..,"message":..,"detail":..}]}` or the raw body. */
async function errorText(res: RegistryResponse): Promise<string> {
  let raw = '';
  try {
    raw = (await readBody(res.body, ERROR_BODY_LIMIT)).toString('utf8');
  } catch {
    return '';
  }
  try {
    const j = JSON.parse(raw) as { errors?: Array<{ code?: string; message?: string; detail?: unknown }> };
    if (Array.isArray(j.errors) && j.errors.length) {
      return j.errors
        .map((e) => [e.code, e.message].filter(Boolean).join(': ') + (e.detail !== undefined && e.detail !== null ? ` (${JSON.stringify(e.detail)})` : ''))
        .join('; ');
    }
  } catch {
    // not JSON
  }
  return raw.trim().slice(0, 200);
}

/** A StrataError for an unexpected status (the body is consumed). */
export async function statusError(res: RegistryResponse, what: string): Promise<StrataError> {
  const text = res.status === 404 || res.status === 401 || res.status === 403 ? await errorText(res).catch(() => '') : await errorText(res);
  const detail = `${what}: unexpected status ${res.status} from ${res.url.origin}${res.url.pathname}${text ? ` (${text})` : ''}`;
  const s = res.status;
  if (s === 404) return new StrataError('not found', what);
  if (s === 401 || s === 403) return new StrataError('permission denied', `${what}: ${s === 401 ? 'unauthorized' : 'forbidden'}${text ? ` (${text})` : ''}`);
  if (isRetryableStatus(s)) return unavailable(detail);
  if (s === 400) return invalidArgument(detail);
  if (s === 416) return new StrataError('out of range', detail);
  if (s === 409 || s === 412) return new StrataError('failed precondition', detail);
  return new StrataError('unknown', detail);
}

export class RegistryTransport {
  readonly authorizer: Authorizer;
  private readonly defaultAgent: Agent;
  private readonly agents = new Map<string, Promise<Agent>>();
  /** The agent of each host seen, for token requests to the same origin. */
  private readonly agentOfHost = new Map<string, Promise<Agent>>();
  private readonly retries: number;
  private readonly backoffBase: number;
  private readonly connections: number;
  private readonly connectTimeout: number;
  private readonly headersTimeout: number;
  private readonly log: Logger | undefined;
  private closed = false;

  constructor(opts: TransportOptions = {}) {
    this.retries = opts.retries ?? 3;
    this.backoffBase = opts.backoffBaseMs ?? 100;
    this.connections = opts.connections ?? 16;
    this.connectTimeout = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.headersTimeout = opts.responseHeaderTimeoutMs ?? DEFAULT_RESPONSE_HEADER_TIMEOUT_MS;
    for (const [name, v] of [['connect timeout', this.connectTimeout], ['response header timeout', this.headersTimeout]] as const) {
      if (!Number.isFinite(v) || v <= 0) throw invalidArgument(`registry ${name} must be a positive duration, got ${v} ms`);
    }
    this.log = opts.logger;
    this.defaultAgent = this.newAgent({});
    this.authorizer = new Authorizer(
      async (url, init) => {
        const agent = (await this.agentOfHost.get(url.host)) ?? this.defaultAgent;
        return this.tokenRoundTrip(agent, url, init);
      },
      opts.credentials,
    );
  }

  private newAgent(connect: Record<string, unknown>): Agent {
    return new Agent({
      connections: this.connections,
      keepAliveTimeout: 30_000,
      headersTimeout: this.headersTimeout,
      connect: { timeout: this.connectTimeout, ...connect },
    });
  }

  /** The agent for a host's TLS settings (shared by hosts with the same settings). */
  agentFor(h: RegistryHost): Promise<Agent> {
    let p: Promise<Agent>;
    if (h.scheme === 'http' || (!h.skipVerify && h.caFiles.length === 0 && h.clientPairs.length === 0)) {
      p = Promise.resolve(this.defaultAgent);
    } else {
      const key = JSON.stringify([h.skipVerify, h.caFiles, h.clientPairs]);
      let a = this.agents.get(key);
      if (!a) {
        a = (async () => {
          const connect: Record<string, unknown> = {};
          if (h.skipVerify) connect['rejectUnauthorized'] = false;
          // Errors name the file by its base name only (no host paths in messages).
          const pem = (f: string, what: string) =>
            readFile(f, 'utf8').catch((err: NodeJS.ErrnoException) => {
              throw invalidArgument(`unable to read ${what} ${JSON.stringify(basename(f))} for ${h.host}: ${err.code ?? 'read error'}`, err);
            });
          if (h.caFiles.length) connect['ca'] = [...rootCertificates, ...(await Promise.all(h.caFiles.map((f) => pem(f, 'CA certificate'))))];
          if (h.clientPairs.length) {
            // Node takes one client certificate per connection: the first pair.
            const [cert, key] = h.clientPairs[0]!;
            const certPem = await pem(cert, 'client certificate');
            connect['cert'] = certPem;
            connect['key'] = key ? await pem(key, 'client key') : certPem;
          }
          return this.newAgent(connect);
        })();
        a.catch(() => this.agents.delete(key));
        this.agents.set(key, a);
      }
      p = a;
    }
    this.agentOfHost.set(h.host, p);
    return p;
  }

  private async tokenRoundTrip(
    agent: Dispatcher,
    url: URL,
    init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string },
  ): Promise<{ status: number; body: string }> {
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await agent.request({
          origin: url.origin,
          path: url.pathname + url.search,
          method: init.method,
          headers: { 'user-agent': USER_AGENT, ...init.headers },
          ...(init.body !== undefined ? { body: init.body } : {}),
        });
        if (isRetryableStatus(res.statusCode) && attempt < this.retries) {
          await res.body.dump().catch(() => undefined);
          await this.backoff(attempt, undefined);
          continue;
        }
        const body = (await readBody(res.body, 1024 * 1024)).toString('utf8');
        return { status: res.statusCode, body };
      } catch (err) {
        if (err instanceof StrataError) throw err;
        if (isTransientError(err) && attempt < this.retries) {
          await this.backoff(attempt, undefined);
          continue;
        }
        throw unavailable(`token request to ${url.origin}${url.pathname}: ${(err as Error).message}`, err);
      }
    }
  }

  /** 100ms·2^n with ±50% jitter; a Retry-After (seconds) is honoured up to 10s. */
  private async backoff(attempt: number, retryAfter: string | undefined): Promise<void> {
    let ms = this.backoffBase * 2 ** attempt;
    ms = ms / 2 + Math.random() * ms;
    if (retryAfter !== undefined && /^\d+$/.test(retryAfter.trim())) ms = Math.max(ms, Math.min(Number(retryAfter) * 1000, 10_000));
    await sleep(ms);
  }

  /**
   * Sends a request with authorization, redirects and retries. Returns the final response whatever its
   * status (the caller maps statuses); throws 'unavailable' when the registry cannot be reached after the
   * retries, 'permission denied' when a token is refused.
   */
  async roundTrip(req: RegistryRequest): Promise<RegistryResponse> {
    if (this.closed) throw unavailable('registry client is closed');
    const retries = req.retries ?? this.retries;
    // Without the query: upload locations carry long opaque state there.
    const url = `${req.host.scheme}://${req.host.host}${req.path.split('?')[0]}`;
    for (let attempt = 0; ; attempt++) {
      let res: RegistryResponse;
      try {
        res = await this.authorizedRoundTrip(req);
      } catch (err) {
        if (err instanceof StrataError) throw err;
        // A host that did not answer in time is not asked again: the caller moves on to the next host.
        if (isTransientError(err) && !isTimeoutError(err) && attempt < retries) {
          this.log?.debug('registry request failed, retrying', { method: req.method, url, attempt, error: err });
          await this.backoff(attempt, undefined);
          continue;
        }
        const code = errCode(err);
        if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH') {
          throw invalidArgument(`${req.method} ${url}: the content does not have the announced size`, err);
        }
        const hint = code && TLS_TRUST_CODES.has(code) ? `; the certificate is not trusted: give the registry's CA as \`ca\` in its hosts.toml, or set skip_verify` : '';
        throw unavailable(`${req.method} ${url}: ${(err as Error).message}${code && !(err as Error).message.includes(code) ? ` (${code})` : ''}${hint}`, err);
      }
      if (isRetryableStatus(res.status) && attempt < retries) {
        this.log?.debug('registry answered a retryable status, retrying', { method: req.method, url, status: res.status, attempt });
        const ra = header(res.headers, 'retry-after');
        await drain(res);
        await this.backoff(attempt, ra);
        continue;
      }
      return res;
    }
  }

  /** One logical request: answers up to two 401 challenges, follows redirects. */
  private async authorizedRoundTrip(req: RegistryRequest): Promise<RegistryResponse> {
    const agent = await this.agentFor(req.host);
    for (let authTries = 0; ; authTries++) {
      const headers: Record<string, string | string[]> = { 'user-agent': USER_AGENT };
      for (const [k, v] of Object.entries(req.host.header)) headers[k.toLowerCase()] = v.length === 1 ? v[0]! : v;
      for (const [k, v] of Object.entries(req.headers ?? {})) headers[k.toLowerCase()] = v;
      let authorization: string | undefined;
      if (req.auth !== false) {
        authorization = await this.authorizer.authorize(req.host.host, req.scopes);
        if (authorization) headers['authorization'] = authorization;
      }
      const res = await this.send(agent, req, headers);
      if (res.status === 401 && req.auth !== false && authTries < 2) {
        const challenge = res.headers['www-authenticate'];
        if (this.authorizer.addChallenge(req.host.host, challenge, req.scopes, authorization !== undefined)) {
          await drain(res);
          continue;
        }
      }
      return res;
    }
  }

  /** One HTTP exchange plus redirects (GET/HEAD only). */
  private async send(agent: Dispatcher, req: RegistryRequest, headers: Record<string, string | string[]>): Promise<RegistryResponse> {
    let url = new URL(`${req.host.scheme}://${req.host.host}${req.path}`);
    const registryOrigin = url.origin;
    let method: string = req.method;
    let hdrs = headers;
    for (let hops = 0; ; hops++) {
      let body: Readable | Buffer | string | undefined;
      if (req.body && (method === 'PUT' || method === 'POST' || method === 'PATCH')) {
        try {
          body = await req.body();
        } catch (err) {
          // The content source failed (not the registry): no retry, its own error kind.
          if (err instanceof StrataError) throw err;
          throw new StrataError('unknown', `${method} ${url.origin}${url.pathname}: opening the content failed: ${(err as Error).message}`, { cause: err });
        }
      }
      let r: Dispatcher.ResponseData;
      try {
        this.log?.trace('registry request', { method, url: url.href });
        r = await agent.request({
          origin: url.origin,
          path: url.pathname + url.search,
          method: method as Dispatcher.HttpMethod,
          headers: hdrs,
          ...(body !== undefined ? { body } : {}),
        });
      } catch (err) {
        if (body && typeof body === 'object' && 'destroy' in body && !body.destroyed) body.destroy();
        throw err;
      }
      if (body && typeof body === 'object' && 'destroy' in body && !body.destroyed) body.destroy();
      const res: RegistryResponse = { status: r.statusCode, headers: r.headers as Headers, body: r.body, url };
      this.log?.trace('registry response', { method, url: url.href, status: r.statusCode });
      const location = header(res.headers, 'location');
      if (REDIRECTS.has(res.status) && location && (method === 'GET' || method === 'HEAD')) {
        if (hops >= MAX_REDIRECTS) {
          await drain(res);
          throw unavailable(`${req.method} ${req.host.host}${req.path}: stopped after ${MAX_REDIRECTS} redirects`);
        }
        await drain(res);
        url = new URL(location, url);
        if (url.origin !== registryOrigin && hdrs['authorization'] !== undefined) {
          hdrs = { ...hdrs };
          delete hdrs['authorization'];
        }
        continue;
      }
      return res;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const agents = [this.defaultAgent, ...(await Promise.all([...this.agents.values()].map((p) => p.catch(() => undefined))))];
    await Promise.all(agents.filter((a): a is Agent => a !== undefined).map((a) => a.destroy().catch(() => undefined)));
  }
}
