/**
 * Listen addresses as containerd's config writes them: "host:port" ([metrics] address) or, where a unix socket
 * is allowed too ([debug] address), an absolute path. Read by the config's validation and by the endpoints.
 */

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
