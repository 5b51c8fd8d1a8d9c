/**
 * Registry host configuration in containerd's hosts.toml layout (containerd's remotes/docker/config):
 * `<hostsDir>/<host>/hosts.toml`, where a host with a port is looked up as `<host>_<port>_` first, then as
 * `<host>:<port>`, then `_default`. A file names mirrors with `[host."https://mirror"]` tables (tried in file
 * order) and the upstream with `server = "..."` (tried last; the reference's own registry when absent).
 *
 * Per host: `capabilities` (pull, resolve, push; all three when absent), `skip_verify`, `ca` (file or
 * files), `client` (cert file, or [cert, key] pairs), `header` (extra request headers), `override_path`
 * (the URL path is the API root as given, no "/v2" appended). A directory without hosts.toml contributes
 * Docker-style certificate files (`*.crt` CAs, `*.cert` + `*.key` client pairs) for the default host.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, isAbsolute, join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { invalidArgument } from '../core/errdefs.js';
import { DEFAULT_DOMAIN, DOCKER_IO_API_HOST, isLocalhost } from './reference.js';

export type HostCapability = 'pull' | 'resolve' | 'push';
export const ALL_CAPABILITIES: readonly HostCapability[] = ['pull', 'resolve', 'push'];

export interface RegistryHost {
  scheme: 'http' | 'https';
  /** host[:port] the requests go to. */
  host: string;
  /** The API root path, "/v2" unless overridden. */
  path: string;
  capabilities: HostCapability[];
  /** Skip TLS certificate verification. */
  skipVerify: boolean;
  /** Extra CA certificate files (PEM), added to the system roots. */
  caFiles: string[];
  /** Client certificate pairs: [cert file, key file] (key '' = in the cert file). */
  clientPairs: Array<[string, string]>;
  /** Extra request headers. */
  header: Record<string, string[]>;
}

export interface HostsOptions {
  hostsDir?: string;
  /** http:// for the default host (and for hosts.toml entries written without a scheme). */
  plainHttp?: boolean;
}

/** "host:port" → "host_port_" (containerd's directory naming for hosts with a port). */
function hostDirectoryName(host: string): string {
  const i = host.lastIndexOf(':');
  return i > 0 ? `${host.slice(0, i)}_${host.slice(i + 1)}_` : host;
}

/** The directories consulted for a host, in order. */
export function hostDirCandidates(root: string, host: string): string[] {
  const out: string[] = [];
  const ch = hostDirectoryName(host);
  if (ch !== host) out.push(join(root, ch));
  out.push(join(root, host), join(root, '_default'));
  return out;
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return false;
    throw err;
  }
}

/** A host entry while parsing; `host` '' = the reference's own registry (filled in later). */
type PartialHost = Omit<RegistryHost, 'scheme' | 'host' | 'path'> & { scheme: 'http' | 'https' | ''; host: string; path: string };

function emptyHost(): PartialHost {
  return { scheme: '', host: '', path: '', capabilities: [...ALL_CAPABILITIES], skipVerify: false, caFiles: [], clientPairs: [], header: {} };
}

const abs = (p: string, base: string) => (isAbsolute(p) ? p : join(base, p));

function stringList(v: unknown, what: string, file: string): string[] {
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
  throw invalidArgument(`${file}: invalid ${what}: expected a string or an array of strings`);
}

function parseHostEntry(server: string, cfg: Record<string, unknown>, baseDir: string, file: string, opts: HostsOptions): PartialHost {
  const h = emptyHost();
  const overridePath = cfg['override_path'] === true;
  if (server !== '') {
    let s = server;
    if (!/^https?:\/\//i.test(s)) {
      // containerd assumes https; Strata also uses http for loopback hosts and under plainHttp.
      const hostPart = s.split('/')[0]!;
      s = (opts.plainHttp || isLocalhost(hostPart) ? 'http://' : 'https://') + s;
    }
    let u: URL;
    try {
      u = new URL(s);
    } catch (err) {
      throw invalidArgument(`${file}: unable to parse server ${JSON.stringify(server)}`, err);
    }
    h.scheme = u.protocol === 'http:' ? 'http' : 'https';
    h.host = u.host;
    let p = u.pathname.replace(/\/+$/, '');
    if (p === '' || p === '/') p = overridePath ? '' : '/v2';
    else if (!p.endsWith('/v2') && !overridePath) p += '/v2';
    h.path = p;
  }
  if (cfg['capabilities'] !== undefined) {
    const caps = stringList(cfg['capabilities'], 'capabilities', file);
    h.capabilities = [];
    for (const c of caps) {
      const lc = c.toLowerCase();
      if (lc !== 'pull' && lc !== 'resolve' && lc !== 'push') throw invalidArgument(`${file}: unknown capability ${JSON.stringify(c)}`);
      if (!h.capabilities.includes(lc)) h.capabilities.push(lc);
    }
  }
  if (cfg['skip_verify'] !== undefined) {
    if (typeof cfg['skip_verify'] !== 'boolean') throw invalidArgument(`${file}: skip_verify must be a boolean`);
    h.skipVerify = cfg['skip_verify'];
  }
  if (cfg['ca'] !== undefined) h.caFiles = stringList(cfg['ca'], 'ca', file).map((p) => abs(p, baseDir));
  if (cfg['client'] !== undefined) {
    const c = cfg['client'];
    if (typeof c === 'string') h.clientPairs = [[abs(c, baseDir), '']];
    else if (Array.isArray(c)) {
      for (const item of c) {
        if (typeof item === 'string') h.clientPairs.push([abs(item, baseDir), '']);
        else if (Array.isArray(item) && item.length === 2 && item.every((x) => typeof x === 'string')) {
          h.clientPairs.push([abs(item[0] as string, baseDir), abs(item[1] as string, baseDir)]);
        } else throw invalidArgument(`${file}: invalid client entry ${JSON.stringify(item)}`);
      }
    } else throw invalidArgument(`${file}: invalid client`);
  }
  if (cfg['header'] !== undefined) {
    const hdr = cfg['header'];
    if (typeof hdr !== 'object' || hdr === null || Array.isArray(hdr)) throw invalidArgument(`${file}: header must be a table`);
    for (const [k, v] of Object.entries(hdr)) h.header[k] = stringList(v, `header ${k}`, file);
  }
  return h;
}

/**
 * Parses a hosts.toml text: the mirrors in file order, then the server entry ('' host = the default).
 * Errors name the file as "<host directory>/hosts.toml", never by its path on this machine.
 */
export function parseHostsToml(text: string, baseDir: string, opts: HostsOptions = {}, file = `${basename(baseDir)}/hosts.toml`): PartialHost[] {
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    throw invalidArgument(`${file}: failed to parse TOML: ${(err as Error).message}`, err);
  }
  const out: PartialHost[] = [];
  const hostTables = doc['host'];
  if (hostTables !== undefined) {
    if (typeof hostTables !== 'object' || hostTables === null || Array.isArray(hostTables)) throw invalidArgument(`${file}: invalid \`host\` tree`);
    // smol-toml keeps the tables in file order (the keys are URLs, never integer-like).
    for (const [server, cfg] of Object.entries(hostTables as Record<string, unknown>)) {
      if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) throw invalidArgument(`${file}: host ${JSON.stringify(server)} must be a table`);
      out.push(parseHostEntry(server, cfg as Record<string, unknown>, baseDir, file, opts));
    }
  }
  const server = doc['server'];
  if (server !== undefined && typeof server !== 'string') throw invalidArgument(`${file}: server must be a string`);
  out.push(parseHostEntry(server ?? '', doc, baseDir, file, opts));
  return out;
}

/** Docker's certs.d layout: *.crt are CAs, *.cert (+ same-named *.key) are client pairs. */
async function loadCertFiles(dir: string): Promise<PartialHost[]> {
  const h = emptyHost();
  let names: string[] = [];
  try {
    names = (await readdir(dir, { withFileTypes: true })).filter((e) => !e.isDirectory()).map((e) => e.name).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  for (const n of names) {
    if (n.endsWith('.crt')) h.caFiles.push(join(dir, n));
    if (n.endsWith('.cert')) {
      const key = join(dir, n.slice(0, -'.cert'.length) + '.key');
      h.clientPairs.push([join(dir, n), names.includes(n.slice(0, -'.cert'.length) + '.key') ? key : '']);
    }
  }
  return [h];
}

/**
 * The hosts to try for a reference host, in order. Without a hosts directory (or without an entry for the
 * host) that is the registry itself: registry-1.docker.io over https for docker.io, http for loopback hosts
 * or under plainHttp, https otherwise.
 */
export async function configureHosts(refHost: string, opts: HostsOptions = {}): Promise<RegistryHost[]> {
  let hosts: PartialHost[] | undefined;
  if (opts.hostsDir) {
    for (const dir of hostDirCandidates(opts.hostsDir, refHost)) {
      if (!(await isDir(dir))) continue;
      const file = join(dir, 'hosts.toml');
      let text = '';
      try {
        text = await readFile(file, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      hosts = text.trim() === '' ? await loadCertFiles(dir) : parseHostsToml(text, dir, opts);
      break;
    }
  }
  if (!hosts) hosts = [emptyHost()];
  const last = hosts[hosts.length - 1];
  if (last && last.host === '') {
    if (refHost === DEFAULT_DOMAIN) {
      last.scheme = 'https';
      last.host = DOCKER_IO_API_HOST;
    } else {
      last.host = refHost;
      last.scheme = opts.plainHttp || isLocalhost(refHost) ? 'http' : 'https';
    }
    last.path = '/v2';
    last.capabilities = [...ALL_CAPABILITIES];
  }
  return hosts.map((h) => ({ ...h, scheme: h.scheme === '' ? 'https' : h.scheme }));
}

/** Whether a host is a mirror (a proxy) for the reference host: requests to it carry `?ns=<refHost>`. */
export function isProxyFor(h: RegistryHost, refHost: string): boolean {
  if (h.host === refHost) return false;
  return !(refHost === DEFAULT_DOMAIN && h.host === DOCKER_IO_API_HOST);
}
