/**
 * A small HTTP proxy in front of a real registry on loopback: it forwards every request unchanged to the
 * registry, counts the blob requests it sees (method, digest, status), and can slow blob bodies down to a
 * given rate so that concurrent pulls are sure to overlap while a blob is downloading (on loopback a 16 MiB
 * layer would otherwise be gone before the second client has started). The registry still does all the
 * answering; the proxy only relays bytes.
 */
import { request as httpRequest, createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface BlobRequest {
  method: string;
  digest: string;
  status: number;
  /** Body bytes relayed to the client. */
  bytes: number;
  /** The request's Range header, if any ("bytes=0-1023"). */
  range?: string;
}

export interface CountingProxy {
  /** "127.0.0.1:PORT": what clients pull from. */
  host: string;
  /** Every blob request answered so far, in order of completion. */
  readonly requests: BlobRequest[];
  /** Blob GETs answered with the blob's bytes (200 or 206), by digest. HEADs are not counted. */
  blobGets(): Map<string, number>;
  /**
   * Faults for blob GETs from now on: 'refuse-range' answers those with a Range header 503 (whole GETs pass),
   * 'stall' accepts them and never answers; 'none' (the default) relays them.
   */
  fault: 'none' | 'refuse-range' | 'stall';
  stop(): Promise<void>;
}

const BLOB_PATH = /^\/v2\/.+\/blobs\/(sha(?:256|384|512):[0-9a-f]+)(?:\?.*)?$/;

/**
 * Starts a proxy to `upstream` ("127.0.0.1:PORT"). With `blobBytesPerSecond`, each blob body is relayed at
 * about that rate (per request).
 */
export async function startCountingProxy(upstream: string, opts: { blobBytesPerSecond?: number } = {}): Promise<CountingProxy> {
  const [upHost, upPort] = upstream.split(':') as [string, string];
  const requests: BlobRequest[] = [];
  const sockets = new Set<Socket>();
  const rate = opts.blobBytesPerSecond;

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const blob = BLOB_PATH.exec(req.url ?? '');
    if (blob && req.method === 'GET' && proxy.fault !== 'none') {
      if (proxy.fault === 'stall') return; // the socket stays open, unanswered (stop() destroys it)
      if (req.headers.range) {
        requests.push({ method: 'GET', digest: blob[1]!, status: 503, bytes: 0, range: req.headers.range });
        res.writeHead(503).end();
        return;
      }
    }
    const up = httpRequest(
      { host: upHost, port: Number(upPort), method: req.method, path: req.url, headers: { ...req.headers, host: upstream } },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        let bytes = 0;
        const done = () => {
          if (blob) {
            const range = req.headers.range;
            requests.push({ method: req.method ?? '', digest: blob[1]!, status: upRes.statusCode ?? 0, bytes, ...(range ? { range } : {}) });
          }
        };
        if (!blob || !rate || req.method !== 'GET') {
          upRes.on('data', (d: Buffer) => (bytes += d.length));
          upRes.pipe(res);
          upRes.on('end', done);
          return;
        }
        // Throttled relay: pause the upstream after each chunk for as long as the chunk takes at `rate`.
        void (async () => {
          try {
            for await (const chunk of upRes as AsyncIterable<Buffer>) {
              bytes += chunk.length;
              if (!res.write(chunk)) await new Promise((r) => res.once('drain', r));
              await sleep(Math.ceil((chunk.length / rate) * 1000));
            }
            res.end();
            done();
          } catch {
            res.destroy();
          }
        })();
      },
    );
    up.on('error', () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    res.on('close', () => up.destroy());
    req.pipe(up);
  };

  const server: Server = createServer(handle);
  server.on('connection', (s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  const proxy: CountingProxy = {
    host,
    requests,
    fault: 'none',
    blobGets() {
      const counts = new Map<string, number>();
      for (const r of requests) {
        if (r.method !== 'GET' || (r.status !== 200 && r.status !== 206)) continue;
        counts.set(r.digest, (counts.get(r.digest) ?? 0) + 1);
      }
      return counts;
    },
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
