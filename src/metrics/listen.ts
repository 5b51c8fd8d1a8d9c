/** Listening on a ListenAddress (src/core/address.ts) with node:http, and closing. */
import type { Server } from 'node:http';
import type { ListenAddress } from '../core/address.js';

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
