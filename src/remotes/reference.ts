/**
 * Image references, parsed and normalized the way containerd's reference/docker package does it
 * (ParseDockerRef): "busybox" is docker.io/library/busybox:latest, a first path component is a registry
 * host only when it holds a '.' or a ':' or is "localhost", "index.docker.io" means docker.io, and a
 * reference with both a tag and a digest is named by its digest.
 */
import { invalidArgument } from '../core/errdefs.js';
import { isValidDigest } from '../content/digest.js';

export const DEFAULT_DOMAIN = 'docker.io';
const LEGACY_DEFAULT_DOMAIN = 'index.docker.io';
const OFFICIAL_REPO_PREFIX = 'library/';
/** The host that serves docker.io's distribution API. */
export const DOCKER_IO_API_HOST = 'registry-1.docker.io';
/** The longest repository name (domain + path) a reference may carry. */
export const NAME_TOTAL_LENGTH_MAX = 255;

// The grammar of distribution's reference package (the version containerd 1.6 vendors).
const alphaNumeric = '[a-z0-9]+';
const separator = '(?:[._]|__|[-]*)';
const nameComponent = `${alphaNumeric}(?:${separator}${alphaNumeric})*`;
const domainComponent = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const domain = `${domainComponent}(?:\\.${domainComponent})*(?::[0-9]+)?`;
const tag = '[\\w][\\w.-]{0,127}';
const digest = '[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}';
const name = `(?:${domain}/)?${nameComponent}(?:/${nameComponent})*`;

const referenceRe = new RegExp(`^(${name})(?::(${tag}))?(?:@(${digest}))?$`);
const anchoredNameRe = new RegExp(`^(?:(${domain})/)?(${nameComponent}(?:/${nameComponent})*)$`);
const anchoredTagRe = new RegExp(`^${tag}$`);
const identifierRe = /^[a-f0-9]{64}$/;

/** Digest algorithms and their hex lengths (go-digest's registered set). */

export interface ParsedReference {
  /** The registry host as named in the reference ("docker.io", "127.0.0.1:5000"). */
  host: string;
  /** The repository path on that host ("library/busybox"). */
  repository: string;
  /** The tag; "latest" when the reference has neither tag nor digest. */
  tag?: string;
  digest?: string;
  /** The normalized reference: host/repository followed by ":tag", or by "@digest" when there is one. */
  name: string;
}

/** Whether `d` is a well-formed digest of an algorithm Strata knows (the content store's rule). */
export { isValidDigest };

/** Throws 'invalid argument' unless `d` is a valid digest. */
export function validateDigest(d: string): string {
  if (!isValidDigest(d)) throw invalidArgument(`invalid digest ${JSON.stringify(d)}`);
  return d;
}

/** Splits a name as docker does: the first component is a domain only with '.' or ':' or as "localhost". */
function splitDockerDomain(s: string): [string, string] {
  const i = s.indexOf('/');
  let dom: string;
  let rest: string;
  if (i === -1 || (!/[.:]/.test(s.slice(0, i)) && s.slice(0, i) !== 'localhost')) {
    dom = DEFAULT_DOMAIN;
    rest = s;
  } else {
    dom = s.slice(0, i);
    rest = s.slice(i + 1);
  }
  if (dom === LEGACY_DEFAULT_DOMAIN) dom = DEFAULT_DOMAIN;
  if (dom === DEFAULT_DOMAIN && !rest.includes('/')) rest = OFFICIAL_REPO_PREFIX + rest;
  return [dom, rest];
}

/**
 * Parses and normalizes an image reference. Errors: 'invalid argument' (empty, bad syntax, uppercase in
 * the repository, a bare 64-hex identifier, a name over 255 characters, an unknown digest algorithm).
 */
export function parseReference(ref: string): ParsedReference {
  const bad = (why: string) => invalidArgument(`invalid reference ${JSON.stringify(ref)}: ${why}`);
  if (ref === '') throw bad('repository name must have at least one component');
  if (identifierRe.test(ref)) throw bad('cannot specify 64-byte hexadecimal strings');

  const [dom, remainder] = splitDockerDomain(ref);
  // The repository part (before any tag) must be lowercase.
  const tagSep = remainder.indexOf(':');
  const remoteName = tagSep > -1 ? remainder.slice(0, tagSep) : remainder;
  const atSep = remoteName.indexOf('@');
  const repoOnly = atSep > -1 ? remoteName.slice(0, atSep) : remoteName;
  if (repoOnly.toLowerCase() !== repoOnly) throw bad('repository name must be lowercase');

  const full = `${dom}/${remainder}`;
  const m = referenceRe.exec(full);
  if (!m) {
    if (referenceRe.test(full.toLowerCase())) throw bad('repository name must be lowercase');
    throw bad('invalid reference format');
  }
  const nameStr = m[1]!;
  if (nameStr.length > NAME_TOTAL_LENGTH_MAX) throw bad(`repository name must not be more than ${NAME_TOTAL_LENGTH_MAX} characters`);
  const nm = anchoredNameRe.exec(nameStr);
  if (!nm || !nm[1]) throw bad('invalid reference format');
  const host = nm[1];
  const repository = nm[2]!;
  let tagStr = m[2];
  const dgst = m[3];
  if (dgst !== undefined && !isValidDigest(dgst)) throw bad(`invalid digest ${JSON.stringify(dgst)}`);
  if (tagStr === undefined && dgst === undefined) tagStr = 'latest';
  const normalized = dgst !== undefined ? `${host}/${repository}@${dgst}` : `${host}/${repository}:${tagStr}`;
  return { host, repository, ...(tagStr !== undefined ? { tag: tagStr } : {}), ...(dgst !== undefined ? { digest: dgst } : {}), name: normalized };
}

/** The normalized name of a reference (ParseDockerRef(ref).String()). */
export function normalizeReference(ref: string): string {
  return parseReference(ref).name;
}

/** Whether `t` is a valid tag. */
export function isValidTag(t: string): boolean {
  return anchoredTagRe.test(t);
}

/**
 * The short form docker prints: "docker.io/library/busybox:latest" → "busybox:latest",
 * "docker.io/foo/bar@sha256:.." → "foo/bar@sha256:..". Other hosts are kept.
 */
export function familiarName(ref: string): string {
  const p = parseReference(ref);
  let repo = `${p.host}/${p.repository}`;
  if (p.host === DEFAULT_DOMAIN) {
    repo = p.repository.startsWith(OFFICIAL_REPO_PREFIX) && p.repository.split('/').length === 2 ? p.repository.slice(OFFICIAL_REPO_PREFIX.length) : p.repository;
  }
  return p.digest !== undefined ? `${repo}@${p.digest}` : `${repo}:${p.tag}`;
}

/** The host that serves a reference host's API: docker.io → registry-1.docker.io, others unchanged. */
export function apiHost(host: string): string {
  return host === DEFAULT_DOMAIN ? DOCKER_IO_API_HOST : host;
}

/** The host part without its port ("[::1]:5000" → "::1", "localhost:5000" → "localhost"). */
export function hostnameOf(host: string): string {
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    return end > 0 ? host.slice(1, end) : host;
  }
  const colons = host.split(':').length - 1;
  if (colons === 1) return host.slice(0, host.indexOf(':'));
  return host; // no port, or a bare IPv6 address
}

/** Whether a registry host is on the loopback interface: localhost, 127.0.0.0/8 or ::1 (any port). */
export function isLocalhost(host: string): boolean {
  const h = hostnameOf(host).toLowerCase();
  if (h === 'localhost') return true;
  if (/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)) return h.split('.').every((o) => Number(o) <= 255);
  return h === '::1' || h === '0:0:0:0:0:0:0:1';
}
