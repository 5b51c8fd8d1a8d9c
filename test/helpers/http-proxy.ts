/**
 * A counting, optionally faulting HTTP proxy on loopback, in front of a real registry. It logs every request
 * (method, path, Range header, status, bytes sent) and how many were in flight at once, and lets a test edit
 * request or response headers, stall requests, or rewrite or cut response bodies. Tests say why they put it
 * there; the registry behind it is the real one.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface ProxyLogEntry {
  method: string;
  path: string;
  /** The Range header as the client sent it ('' = none). */
  range: string;
  status: number;
  /** Body bytes sent to the client. */
  sent: number;
  /** Response headers as sent to the client. */
  headers: Record<string, string | string[] | undefined>;
}

export interface BodyFault {
  /**
   * Sees each chunk of the response body (with the bytes sent before it) and returns what to send instead;
   * 'cut' sends nothing more and destroys the connection.
   */
  (chunk: Buffer, sentBefore: number): Buffer | 'cut';
}

export interface ProxyOptions {
  /** Edits the request headers on the way up (e.g. drops Range). */
  request?: (entry: ProxyLogEntry, headers: Record<string, string | string[] | undefined>) => void;
  /** Edits the response headers on the way down (e.g. drops Accept-Ranges). */
  response?: (entry: ProxyLogEntry, headers: Record<string, string | string[] | undefined>) => void;
  /** A body fault for this request, or undefined to pass it through. */
  body?: (entry: ProxyLogEntry) => BodyFault | undefined;
  /** Holds the request (no answer) while it returns true. */
  stall?: (entry: ProxyLogEntry) => boolean;
  /** Answers the request itself (returning true), e.g. with a 503; the registry never sees it. */
  answer?: (entry: ProxyLogEntry, res: ServerResponse) => boolean;
}

export interface CountingProxy {
  host: string;
  log: ProxyLogEntry[];
  /** Most requests in flight at once. */
  maxInFlight(): number;
  /** Requests for blobs (GET .../blobs/...). */
  blobGets(): ProxyLogEntry[];
  /** Destroys every connection and stops listening: clients then get resets and refusals. */
  close(): Promise<void>;
}

const proxies = new Set<CountingProxy>();

export async function startCountingProxy(target: string, opts: ProxyOptions = {}): Promise<CountingProxy> {
  const log: ProxyLogEntry[] = [];
  const sockets = new Set<Socket>();
  let inFlight = 0;
  let maxInFlight = 0;
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const entry: ProxyLogEntry = { method: req.method!, path: req.url!, range: String(req.headers.range ?? ''), status: 0, sent: 0, headers: {} };
    log.push(entry);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    let counted = true;
    const done = () => {
      if (counted) inFlight--;
      counted = false;
    };
    res.once('close', done);
    if (opts.stall?.(entry)) return; // never answered; the socket is destroyed by close()
    if (opts.answer?.(entry, res)) {
      entry.status = res.statusCode;
      return;
    }
    const headers = { ...req.headers };
    opts.request?.(entry, headers);
    const [thost, tport] = target.split(':');
    const up = httpRequest({ host: thost, port: Number(tport), method: req.method, path: req.url, headers }, (ures) => {
      const h = { ...ures.headers };
      opts.response?.(entry, h);
      entry.status = ures.statusCode!;
      entry.headers = h;
      const fault = opts.body?.(entry);
      if (fault) delete h['content-length'];
      res.writeHead(ures.statusCode!, h as Record<string, string | string[]>);
      ures.on('data', (c: Buffer) => {
        let out: Buffer | 'cut' = c;
        if (fault) out = fault(c, entry.sent);
        if (out === 'cut') {
          ures.destroy();
          res.socket?.destroy();
          return;
        }
        entry.sent += out.length;
        if (!res.write(out)) {
          ures.pause();
          res.once('drain', () => ures.resume());
        }
      });
      ures.on('end', () => res.end());
      ures.on('error', () => res.destroy());
      res.on('close', () => ures.destroy());
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const proxy: CountingProxy = {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    log,
    maxInFlight: () => maxInFlight,
    blobGets: () => log.filter((e) => e.method === 'GET' && e.path.includes('/blobs/')),
    close: async () => {
      proxies.delete(proxy);
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  proxies.add(proxy);
  return proxy;
}

/** Closes every proxy still open (afterAll). */
export async function stopAllProxies(): Promise<void> {
  await Promise.all([...proxies].map((p) => p.close()));
}

/** The first and last byte of a `bytes=a-b` or `bytes=a-` Range header (last undefined when open-ended). */
export function parseRange(range: string): { first: number; last: number | undefined } | undefined {
  const m = /^bytes=(\d+)-(\d*)$/.exec(range);
  if (!m) return undefined;
  return { first: Number(m[1]), last: m[2] ? Number(m[2]) : undefined };
}
