/**
 * Registry credentials from a Docker client config file (`$DOCKER_CONFIG/config.json`, else
 * `~/.docker/config.json`): the `auths` entries, each with `auth` (base64 "user:password"), or
 * `username` + `password`, or `identitytoken` (an OAuth2 refresh token, used with an empty username).
 * Keys may be bare hosts ("127.0.0.1:5000") or URLs ("https://index.docker.io/v1/"); docker.io's
 * entry is "https://index.docker.io/v1/" and serves docker.io, index.docker.io and registry-1.docker.io.
 * Credential helpers (`credsStore`, `credHelpers`) are not run.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Buffer } from 'node:buffer';
import { invalidArgument } from '../core/errdefs.js';
import type { Credentials } from './types.js';

const DOCKER_HUB_HOSTS = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);
const DOCKER_HUB_KEY = 'index.docker.io';

/** The default config path: $DOCKER_CONFIG/config.json, else ~/.docker/config.json. */
export function defaultDockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env['DOCKER_CONFIG'] || join(homedir(), '.docker');
  return join(dir, 'config.json');
}

/** An auths key or a registry host, reduced to a lookup key ("host[:port]", docker.io's three as one). */
export function credentialKey(hostOrUrl: string): string {
  let h = hostOrUrl.trim();
  h = h.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  const slash = h.indexOf('/');
  if (slash >= 0) h = h.slice(0, slash);
  h = h.toLowerCase();
  return DOCKER_HUB_HOSTS.has(h) ? DOCKER_HUB_KEY : h;
}

interface AuthEntry {
  auth?: unknown;
  username?: unknown;
  password?: unknown;
  identitytoken?: unknown;
}

function entryCredentials(key: string, e: AuthEntry, file: string): Credentials | undefined {
  if (typeof e.identitytoken === 'string' && e.identitytoken) {
    return { username: '', secret: e.identitytoken };
  }
  if (typeof e.auth === 'string' && e.auth) {
    const decoded = Buffer.from(e.auth, 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    if (i < 0) throw invalidArgument(`${file}: auths[${JSON.stringify(key)}].auth is not base64 of "user:password"`);
    return { username: decoded.slice(0, i), secret: decoded.slice(i + 1) };
  }
  if (typeof e.username === 'string' && typeof e.password === 'string' && e.username) {
    return { username: e.username, secret: e.password };
  }
  return undefined;
}

/** Parses a config.json text into credentials per lookup key. */
export function parseDockerConfig(text: string, file = 'config.json'): Map<string, Credentials> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw invalidArgument(`${file}: not valid JSON`, err);
  }
  const out = new Map<string, Credentials>();
  if (typeof doc !== 'object' || doc === null) throw invalidArgument(`${file}: not a JSON object`);
  const auths = (doc as { auths?: unknown }).auths;
  if (auths === undefined || auths === null) return out;
  if (typeof auths !== 'object' || Array.isArray(auths)) throw invalidArgument(`${file}: "auths" is not an object`);
  for (const [key, entry] of Object.entries(auths as Record<string, unknown>)) {
    if (typeof entry !== 'object' || entry === null) continue;
    const c = entryCredentials(key, entry as AuthEntry, file);
    if (!c) continue;
    const k = credentialKey(key);
    // A bare host entry wins over a URL-shaped one for the same host (docker's own precedence).
    if (!out.has(k) || !/:\/\//.test(key)) out.set(k, c);
  }
  return out;
}

/**
 * A credentials callback for the resolver, read once from the config file (default: the Docker client's).
 * A missing file means no credentials; an unreadable or malformed one is 'invalid argument'.
 */
export function credentialsFromDockerConfig(path?: string): (host: string) => Credentials | undefined {
  const file = path ?? defaultDockerConfigPath();
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return () => undefined;
    throw invalidArgument(`cannot read docker config ${file}: ${(err as Error).message}`, err);
  }
  const creds = parseDockerConfig(text, file);
  return (host: string) => creds.get(credentialKey(host));
}
