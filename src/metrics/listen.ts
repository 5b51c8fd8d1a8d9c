/**
 * Where the metrics and debug endpoints listen: "host:port" (as containerd's [metrics] and [debug] address) or,
 * for the debug endpoint, an absolute unix socket path.
 */
import type { Server } from 'node:http';

export type ListenAddress = { path: string } | { host: string; port: number };

/** Parses "host:port", "[v6]:port" or an absolute path. Throws Error with a message naming `key`. */
export function parseListenAddress(key: string, address: string, allowUnix: boolean): ListenAddress {
  if (address.startsWith('/')) {
    if (!allowUnix) throw new Error(`${key} must be host:port, not a unix socket path: ${address}`);
    return { path: address };
  }
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(address);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`${key} must be host:port${allowUnix ? ' or an absolute unix socket path' : ''}: ${address}`);
  return { host: m[1] ?? m[2] ?? '', port };
}

/** Loopback hosts: the debug endpoint hands out heap snapshots (secrets in memory) and is never exposed. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(\.\d{1,3}){3}$/.test(host);
}

export function listen(server: Server, at: ListenAddress): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if ('path' in at) server.listen(at.path, done);
    else server.listen(at.port, at.host || undefined, done);
  });
}

/** The address a server ended up on ("host:port" with the real port when 0 was asked), for the log. */
export function boundAddress(server: Server): string {
  const a = server.address();
  if (typeof a === 'string' || a === null) return String(a);
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
