/**
 * Registry authorization as containerd's docker authorizer does it: the first request goes out anonymous;
 * a 401 names the scheme in `WWW-Authenticate`. Bearer: a token for (realm, service, scopes) is fetched from
 * the realm, with basic credentials when the host has some (an identity token goes through the OAuth2
 * refresh-token grant instead), cached per host and scope set until it expires, and sent on every later
 * request to that host. Basic: the credentials are sent on every later request. A 401 for a request that
 * was already authorized is final ('permission denied'), except that a Bearer `error="invalid_token"` gets
 * one fresh token.
 */
import { Buffer } from 'node:buffer';
import { StrataError } from '../core/errdefs.js';
import type { Credentials } from './types.js';

export interface Challenge {
  /** Lower-case scheme: 'basic', 'bearer', 'digest'... */
  scheme: string;
  /** Lower-case parameter names. */
  params: Record<string, string>;
}

const isTokenChar = (c: string) => /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(c);

/**
 * Parses WWW-Authenticate header values (one challenge per value, as registries send them), e.g.
 * `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:x:pull"`.
 * Bearer challenges sort before Basic ones (containerd prefers the stronger scheme).
 */
export function parseAuthHeader(values: string | string[] | undefined): Challenge[] {
  if (values === undefined) return [];
  const list = Array.isArray(values) ? values : [values];
  const out: Challenge[] = [];
  for (const v of list) {
    let i = 0;
    const skipSpace = () => {
      while (i < v.length && /[ \t\r\n]/.test(v[i]!)) i++;
    };
    const token = () => {
      const start = i;
      while (i < v.length && isTokenChar(v[i]!)) i++;
      return v.slice(start, i);
    };
    skipSpace();
    const scheme = token().toLowerCase();
    if (!scheme) continue;
    const params: Record<string, string> = {};
    for (;;) {
      skipSpace();
      const key = token().toLowerCase();
      if (!key || v[i] !== '=') break;
      i++;
      let value = '';
      if (v[i] === '"') {
        i++;
        while (i < v.length && v[i] !== '"') {
          if (v[i] === '\\' && i + 1 < v.length) i++;
          value += v[i];
          i++;
        }
        i++; // closing quote
      } else {
        value = token();
      }
      params[key] = value;
      skipSpace();
      if (v[i] !== ',') break;
      i++;
    }
    out.push({ scheme, params });
  }
  const rank = (s: string) => (s === 'bearer' ? 0 : s === 'digest' ? 1 : s === 'basic' ? 2 : 3);
  return out.map((c, idx) => ({ c, idx })).sort((a, b) => rank(a.c.scheme) - rank(b.c.scheme) || a.idx - b.idx).map((x) => x.c);
}

/** A minimal HTTP round trip for token requests (supplied by the resolver's transport). */
export type TokenTransport = (
  url: URL,
  init: { method: 'GET' | 'POST'; headers: Record<string, string>; body?: string },
) => Promise<{ status: number; body: string }>;

interface Handler {
  scheme: 'basic' | 'bearer';
  realm?: string;
  service?: string;
  /** Credentials for the token request (bearer) or every request (basic); '' = anonymous. */
  username: string;
  secret: string;
}

interface CachedToken {
  promise: Promise<string>;
  /** ms since epoch; Infinity until the fetch settles. */
  expiresAt: number;
}

/** Tokens are refreshed this long before they expire. */
const EXPIRY_MARGIN_MS = 5_000;
/** The docker token spec's default (and minimum) lifetime. */
const DEFAULT_TOKEN_LIFETIME_S = 60;

export const basicAuthHeader = (username: string, secret: string) =>
  'Basic ' + Buffer.from(`${username}:${secret}`, 'utf8').toString('base64');

export class Authorizer {
  private readonly handlers = new Map<string, Handler>();
  private readonly tokens = new Map<string, CachedToken>();
  /** Token requests made (per host), for logs and tests. */
  tokenFetches = 0;

  constructor(
    private readonly transport: TokenTransport,
    private readonly credentials?: (host: string) => Credentials | undefined,
    private readonly clientId = 'strata',
  ) {}

  /** Whether requests to `host` carry an Authorization header (a challenge was answered before). */
  has(host: string): boolean {
    return this.handlers.has(host);
  }

  /** The Authorization header value for a request to `host` with these scopes, if the host needs one. */
  async authorize(host: string, scopes: string[]): Promise<string | undefined> {
    const h = this.handlers.get(host);
    if (!h) return undefined;
    if (h.scheme === 'basic') return basicAuthHeader(h.username, h.secret);
    return 'Bearer ' + (await this.bearerToken(host, h, scopes));
  }

  /**
   * Takes a 401's challenges. Returns true when the request should be retried with new authorization,
   * false when nothing more can be done (no supported scheme, no credentials for basic, or the same
   * authorization was already refused).
   */
  addChallenge(host: string, wwwAuthenticate: string | string[] | undefined, scopes: string[], wasAuthorized: boolean): boolean {
    const challenges = parseAuthHeader(wwwAuthenticate);
    const existing = this.handlers.get(host);
    for (const c of challenges) {
      if (c.scheme === 'bearer') {
        const realm = c.params['realm'];
        if (!realm) continue;
        if (wasAuthorized && existing?.scheme === 'bearer' && existing.realm === realm) {
          // A token we sent was refused: forget it. An invalid (expired, revoked) token is worth one fresh
          // fetch; otherwise (insufficient_scope) the credentials do not grant the scope.
          this.tokens.delete(this.tokenKey(host, scopes));
          return c.params['error'] === 'invalid_token';
        }
        const creds = this.credentials?.(host);
        this.handlers.set(host, {
          scheme: 'bearer',
          realm,
          ...(c.params['service'] !== undefined ? { service: c.params['service'] } : {}),
          username: creds?.username ?? '',
          secret: creds?.secret ?? '',
        });
        return true;
      }
      if (c.scheme === 'basic') {
        if (wasAuthorized && existing?.scheme === 'basic') return false;
        const creds = this.credentials?.(host);
        if (!creds || !creds.username || !creds.secret) return false;
        this.handlers.set(host, { scheme: 'basic', username: creds.username, secret: creds.secret });
        return true;
      }
    }
    return false;
  }

  private tokenKey(host: string, scopes: string[]): string {
    return `${host}|${normalizeScopes(scopes).join(' ')}`;
  }

  private bearerToken(host: string, h: Handler, scopes: string[]): Promise<string> {
    const key = this.tokenKey(host, scopes);
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt > Date.now()) return cached.promise;
    const entry: CachedToken = { promise: Promise.resolve(''), expiresAt: Number.POSITIVE_INFINITY };
    entry.promise = this.fetchToken(h, normalizeScopes(scopes)).then(
      ({ token, expiresIn, issuedAt }) => {
        const lifetime = Math.max(expiresIn ?? DEFAULT_TOKEN_LIFETIME_S, DEFAULT_TOKEN_LIFETIME_S) * 1000;
        const start = issuedAt !== undefined && issuedAt <= Date.now() ? issuedAt : Date.now();
        entry.expiresAt = start + lifetime - EXPIRY_MARGIN_MS;
        return token;
      },
      (err: unknown) => {
        if (this.tokens.get(key) === entry) this.tokens.delete(key);
        throw err;
      },
    );
    this.tokens.set(key, entry);
    return entry.promise;
  }

  private async fetchToken(h: Handler, scopes: string[]): Promise<{ token: string; expiresIn?: number; issuedAt?: number }> {
    let realm: URL;
    try {
      realm = new URL(h.realm!);
    } catch (err) {
      throw new StrataError('unknown', `invalid token realm ${JSON.stringify(h.realm)}`, { cause: err });
    }
    let res: { status: number; body: string };
    if (h.secret && !h.username) {
      // An identity token: the OAuth2 refresh-token grant (as docker and containerd do).
      const form = new URLSearchParams();
      form.set('grant_type', 'refresh_token');
      form.set('refresh_token', h.secret);
      form.set('client_id', this.clientId);
      if (h.service) form.set('service', h.service);
      if (scopes.length) form.set('scope', scopes.join(' '));
      res = await this.transport(realm, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' },
        body: form.toString(),
      });
    } else {
      const u = new URL(realm);
      if (h.service) u.searchParams.set('service', h.service);
      for (const s of scopes) u.searchParams.append('scope', s);
      const headers: Record<string, string> = {};
      if (h.username && h.secret) headers['authorization'] = basicAuthHeader(h.username, h.secret);
      res = await this.transport(u, { method: 'GET', headers });
    }
    this.tokenFetches++;
    if (res.status === 401 || res.status === 403) {
      throw new StrataError('permission denied', `token request to ${realm.origin}${realm.pathname} refused (HTTP ${res.status})`);
    }
    if (res.status < 200 || res.status > 299) {
      throw new StrataError(res.status >= 500 ? 'unavailable' : 'unknown', `token request to ${realm.origin}${realm.pathname} failed: HTTP ${res.status}`);
    }
    let parsed: { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown };
    try {
      parsed = JSON.parse(res.body) as typeof parsed;
    } catch (err) {
      throw new StrataError('unknown', `token response from ${realm.origin}${realm.pathname} is not JSON`, { cause: err });
    }
    const token = typeof parsed.token === 'string' && parsed.token ? parsed.token : typeof parsed.access_token === 'string' ? parsed.access_token : '';
    if (!token) throw new StrataError('unknown', `token response from ${realm.origin}${realm.pathname} has no token`);
    const expiresIn = typeof parsed.expires_in === 'number' && parsed.expires_in > 0 ? parsed.expires_in : undefined;
    const issued = typeof parsed.issued_at === 'string' ? Date.parse(parsed.issued_at) : NaN;
    return { token, ...(expiresIn !== undefined ? { expiresIn } : {}), ...(Number.isFinite(issued) ? { issuedAt: issued } : {}) };
  }
}

/**
 * Merges scopes the way containerd does: one entry per resource, actions unioned and sorted, resources
 * sorted ("repository:a:pull,push", "repository:b:pull").
 */
export function normalizeScopes(scopes: string[]): string[] {
  const byResource = new Map<string, Set<string>>();
  const order: string[] = [];
  for (const s of scopes) {
    const i = s.lastIndexOf(':');
    if (i < 0) {
      if (!byResource.has(s)) {
        byResource.set(s, new Set());
        order.push(s);
      }
      continue;
    }
    const resource = s.slice(0, i);
    let set = byResource.get(resource);
    if (!set) {
      set = new Set();
      byResource.set(resource, set);
      order.push(resource);
    }
    for (const a of s.slice(i + 1).split(',')) if (a) set.add(a);
  }
  return order
    .sort()
    .map((r) => {
      const actions = [...byResource.get(r)!].sort();
      return actions.length ? `${r}:${actions.join(',')}` : r;
    });
}

/** `repository:<repo>:pull` or `repository:<repo>:pull,push`. */
export function repositoryScope(repository: string, push: boolean): string {
  return `repository:${repository}:${push ? 'pull,push' : 'pull'}`;
}
