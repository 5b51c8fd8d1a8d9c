/**
 * The gRPC limits of a real stratad ([grpc] max_recv_message_size, max_send_message_size,
 * max_concurrent_streams): a message over a size limit ends its call with RESOURCE_EXHAUSTED naming the limit
 * and leaves nothing behind; the concurrent-stream limit is HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS, which a
 * client honours by waiting (the extra calls are served as others end), and which the HTTP/2 layer enforces on
 * a client that does not (RST_STREAM REFUSED_STREAM) while the daemon goes on serving; 64 concurrent callers on
 * one connection, as containerd's Go client bench makes them, all run at once under the default.
 */
import * as grpc from '@grpc/grpc-js';
import { get } from 'node:http';
import http2 from 'node:http2';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StrataClient } from '../../src/api/clients/strata.js';
import { WriteAction } from '../../src/api/gen/containerd/services/content/v1/content.js';
import { sha256 } from '../helpers/data.js';
import { startDaemon, stopAll, type StartedDaemon } from '../helpers/daemon.js';
import { checkLines, goBinary, runGo } from '../helpers/go.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const STREAMS = 4;
const MAX_MSG = 65536;
const SUBSCRIBE = '/containerd.services.events.v1.Events/Subscribe';

let small: StartedDaemon; // small limits
let dflt: StartedDaemon; // the defaults
const dirs: TempDir[] = [];
const clients: StrataClient[] = [];

/** A daemon with its debug endpoint on a unix socket in its state directory (to count the calls in flight). */
async function daemonWithDebug(grpcToml: string): Promise<StartedDaemon> {
  const dir = await tempDir('stratad-limits-');
  dirs.push(dir);
  return startDaemon({ dir, grpc: grpcToml, config: `[debug]\naddress = "${join(dir.path, 'state', 'debug.sock')}"` });
}

beforeAll(async () => {
  small = await daemonWithDebug([`max_recv_message_size = ${MAX_MSG}`, `max_send_message_size = ${MAX_MSG}`, `max_concurrent_streams = ${STREAMS}`].join('\n'));
  dflt = await daemonWithDebug('');
}, 60_000);

afterAll(async () => {
  for (const c of clients) c.close();
  await stopAll();
  for (const d of dirs) await d.cleanup();
});

function client(d: StartedDaemon, ns = 'default'): StrataClient {
  const c = d.client(ns);
  clients.push(c);
  return c;
}

/** The calls in flight in the daemon (its debug endpoint's /debug/state), by method. */
function inFlight(d: StartedDaemon, method: string): Promise<number> {
  return new Promise((resolve, reject) => {
    get({ socketPath: join(d.dir.path, 'state', 'debug.sock'), path: '/debug/state' }, (res) => {
      let body = '';
      res.on('data', (b: Buffer) => (body += b.toString()));
      res.on('end', () => resolve((JSON.parse(body) as { calls: { method: string }[] }).calls.filter((c) => c.method === method).length));
    }).on('error', reject);
  });
}

/** Waits until `method` has `n` calls in flight in the daemon. */
async function untilInFlight(d: StartedDaemon, method: string, n: number): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if ((await inFlight(d, method)) === n) return;
    await sleep(25);
  }
  throw new Error(`${method}: ${await inFlight(d, method)} calls in flight, never ${n}`);
}

describe('message size limits', () => {
  it('a request message over max_recv_message_size ends the call with RESOURCE_EXHAUSTED naming the limit, and writes nothing', async () => {
    const c = client(small);
    const data = Buffer.alloc(MAX_MSG + 1000, 7);
    const call = c.content.write(c.metadata());
    call.on('data', () => undefined);
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      call.once('error', resolve);
      call.write({ action: WriteAction.WRITE, ref: 'too-big', total: data.length, expected: sha256(data), offset: 0, data, labels: {} });
    });
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toMatch(/^Received message larger than max \(\d+ vs\. 65536\): over the limit max_recv_message_size = 65536 \(\[grpc\]\)$/);
    // The message was refused before it was decoded: no ingest of that ref, no blob.
    const statuses = (await c.call(c.content, c.content.listStatuses, { filters: [] })).statuses;
    expect(statuses.map((s) => s.ref)).not.toContain('too-big');
    await expect(c.call(c.content, c.content.info, { digest: sha256(data) })).rejects.toThrow(/not found/);
    // The same data in messages under the limit goes through.
    await c.writeBlob([data.subarray(0, 40_000), data.subarray(40_000)], { ref: 'too-big', expected: sha256(data), total: data.length });
    expect((await c.call(c.content, c.content.info, { digest: sha256(data) })).info!.size).toBe(data.length);
  });

  it('a response message over max_send_message_size ends the call with RESOURCE_EXHAUSTED naming the limit', async () => {
    const c = client(small);
    const data = Buffer.alloc(MAX_MSG * 2, 3);
    const pieces: Buffer[] = []; // written in pieces under the receive limit
    for (let i = 0; i < data.length; i += 40_000) pieces.push(data.subarray(i, i + 40_000));
    await c.writeBlob(pieces, { ref: 'to-read', expected: sha256(data), total: data.length });
    const read = c.content.read({ digest: sha256(data), offset: 0, size: 0 }, c.metadata());
    read.on('data', () => undefined);
    const err = await new Promise<grpc.ServiceError>((resolve) => read.once('error', resolve));
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    // The ReadContentResponse is the data and 4 bytes of protobuf framing (field tag and length).
    expect(err.details).toBe(`Sent message larger than max (${data.length + 4} vs. ${MAX_MSG}): over the limit max_send_message_size = ${MAX_MSG} ([grpc])`);
    // A read within the limit is answered; the daemon serves on.
    const part = await c.collect(c.content.read({ digest: sha256(data), offset: 0, size: 1000 }, c.metadata()));
    expect(Buffer.concat(part.map((r) => r.data)).length).toBe(1000);
  });

  it('a unary request over max_recv_message_size is RESOURCE_EXHAUSTED too', async () => {
    const c = client(small);
    const err = await new Promise<grpc.ServiceError>((resolve, reject) =>
      c.events.publish({ topic: '/big', event: { typeUrl: 'strata.test.X', value: Buffer.alloc(MAX_MSG * 2) } }, c.metadata(), (e) =>
        e ? resolve(e) : reject(new Error('a 128 KiB message got through a 64 KiB limit')),
      ),
    );
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toContain('max_recv_message_size = 65536');
  });
});

describe('concurrent streams per connection', () => {
  it('announces max_concurrent_streams in its HTTP/2 settings: 4 as configured, 1000 by default', async () => {
    for (const [d, want] of [
      [small, STREAMS],
      [dflt, 1000],
    ] as const) {
      const session = http2.connect('http://localhost', { createConnection: () => connect(d.address) });
      try {
        await new Promise<void>((resolve, reject) => {
          session.once('remoteSettings', () => resolve());
          session.once('error', reject);
        });
        expect(session.remoteSettings.maxConcurrentStreams).toBe(want);
      } finally {
        session.close();
      }
    }
  });

  it('a client opening 10 streams on one connection has 4 served at once; the others wait and are served as streams end', async () => {
    const c = client(small);
    const calls = Array.from({ length: 10 }, () => {
      const call = c.events.subscribe({ filters: [] }, c.metadata());
      call.on('error', () => undefined);
      return call;
    });
    await untilInFlight(small, SUBSCRIBE, STREAMS);
    // More time does not get more of them served: the client holds them back, as HTTP/2 asks.
    await sleep(300);
    expect(await inFlight(small, SUBSCRIBE)).toBe(STREAMS);
    // Ending a served stream lets a waiting one through: with k of them ended (the first k, which were served
    // first), min(4, 10 - k) are served at once, until every one of the 10 has been.
    for (let k = 1; k <= calls.length; k++) {
      calls[k - 1]!.cancel();
      await untilInFlight(small, SUBSCRIBE, Math.min(STREAMS, calls.length - k));
    }
  });

  it('64 concurrent unary calls on one connection all succeed under a limit of 4 (they wait their turn)', async () => {
    const c = client(small, 'calls64');
    const results = await Promise.all(Array.from({ length: 64 }, (_, i) => c.call(c.namespaces, c.namespaces.create, { namespace: { name: `n${i}`, labels: {} } })));
    expect(results).toHaveLength(64);
    const names = (await c.call(c.namespaces, c.namespaces.list, { filter: '' })).namespaces.map((n) => n.name);
    for (let i = 0; i < 64; i++) expect(names).toContain(`n${i}`);
  });

  it('64 concurrent callers on one connection all run at once under the default limit', async () => {
    const c = client(dflt);
    const calls = Array.from({ length: 64 }, () => {
      const call = c.events.subscribe({ filters: [] }, c.metadata());
      call.on('error', () => undefined);
      return call;
    });
    await untilInFlight(dflt, SUBSCRIBE, 64);
    for (const call of calls) call.cancel();
    await untilInFlight(dflt, SUBSCRIBE, 0);
  });

  it('a client that opens streams past the limit without waiting gets them refused with REFUSED_STREAM; the others are answered and the daemon serves on', async () => {
    const frames = await rawStreams(small.address, 10);
    // Streams 1, 3, 5, 7 (the first 4) are answered with headers; 9 to 19 are reset with REFUSED_STREAM (7).
    const answered = [...new Set(frames.filter((f) => f.type === 1).map((f) => f.stream))].sort((a, b) => a - b);
    const refused = frames.filter((f) => f.type === 3).map((f) => [f.stream, f.payload.readUInt32BE(0)]);
    expect(answered).toEqual([1, 3, 5, 7]);
    expect(refused).toEqual([9, 11, 13, 15, 17, 19].map((s) => [s, 7]));
    expect(frames.some((f) => f.type === 7)).toBe(false); // no GOAWAY: the connection stays up
    // The daemon is still there for everyone.
    const c = client(small);
    expect((await c.call(c.version, c.version.version, {})).version).not.toBe('');
  });
});

describe("containerd's Go client from 64 goroutines on its one connection", () => {
  it('under the default limit: 64 callers making 1,920 calls, and 64 event subscriptions open at once, all answered', async () => {
    const bin = await goBinary('streams');
    const r = await runGo(bin, ['-address', dflt.address, '-namespace', 'go-streams', '-callers', '64', '-calls', '10', '-subscribers', '64'], { timeoutMs: 90_000 });
    expect(r.stderr).toBe('');
    expect([...checkLines(r.stdout)]).toEqual([
      ['concurrent callers', 'PASS'],
      ['concurrent subscriptions', 'PASS'],
    ]);
    expect(r.code).toBe(0);
  }, 120_000);

  it('under a limit of 4 streams: the 64 callers wait their turn and every call is answered', async () => {
    const bin = await goBinary('streams');
    const r = await runGo(bin, ['-address', small.address, '-namespace', 'go-streams', '-callers', '64', '-calls', '5'], { timeoutMs: 90_000 });
    expect([...checkLines(r.stdout)]).toEqual([['concurrent callers', 'PASS']]);
    expect(r.code).toBe(0);
  }, 120_000);
});

describe('concurrent streams past an acknowledged limit', () => {
  it('a client that acknowledged the limit and still opens streams past it loses its connection (GOAWAY); the daemon serves on', async () => {
    const frames = await rawStreams(small.address, 10, true);
    // The HTTP/2 layer (nghttp2 in Node) treats it as a connection error (RFC 9113 5.4.1 allows this for a
    // stream error): a GOAWAY whose last stream is within the first 4, so no stream past the limit was
    // processed; none of them got an answer.
    const goaway = frames.filter((f) => f.type === 7);
    expect(goaway).toHaveLength(1);
    expect(goaway[0]!.payload.readUInt32BE(0) & 0x7fffffff).toBeLessThanOrEqual(7);
    expect(goaway[0]!.payload.readUInt32BE(4)).not.toBe(0); // an error code, not NO_ERROR
    expect(frames.filter((f) => f.type === 1 && f.stream > 7)).toEqual([]);
    const c = client(small);
    expect((await c.call(c.version, c.version.version, {})).version).not.toBe('');
  });
});

interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

/** HPACK: one header as a literal without indexing, new name, no Huffman coding (names and values < 127 bytes). */
function hpackLiteral(name: string, value: string): Buffer {
  return Buffer.concat([Buffer.from([0x00, name.length]), Buffer.from(name), Buffer.from([value.length]), Buffer.from(value)]);
}

function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

/**
 * A client that ignores the server's SETTINGS_MAX_CONCURRENT_STREAMS: opens `n` gRPC health-check streams on
 * one connection at once (HEADERS only, so each stays open), then sends each request message and ends it.
 * Returns every frame the server sent within a second of the last write.
 */
async function rawStreams(address: string, n: number, ackFirst = false): Promise<Frame[]> {
  const sock = connect(address);
  await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
  const frames: Frame[] = [];
  let buf = Buffer.alloc(0);
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      frames.push({ type: buf[3]!, flags: buf[4]!, stream: buf.readUInt32BE(5) & 0x7fffffff, payload: buf.subarray(9, 9 + len) });
      buf = buf.subarray(9 + len);
    }
  });
  const headers = Buffer.concat([
    hpackLiteral(':method', 'POST'),
    hpackLiteral(':scheme', 'http'),
    hpackLiteral(':path', '/grpc.health.v1.Health/Check'),
    hpackLiteral(':authority', 'localhost'),
    hpackLiteral('content-type', 'application/grpc'),
    hpackLiteral('te', 'trailers'),
  ]);
  const out: Buffer[] = [Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frame(4, 0, 0, Buffer.alloc(0))];
  if (ackFirst) {
    // Acknowledge the server's SETTINGS first: the limit is then in force, not pending.
    sock.write(Buffer.concat(out.splice(0)));
    while (!frames.some((f) => f.type === 4 && (f.flags & 1) === 0)) await sleep(10);
    out.push(frame(4, 0x1 /* ACK */, 0, Buffer.alloc(0)));
  }
  const ids = Array.from({ length: n }, (_, i) => 2 * i + 1);
  for (const id of ids) out.push(frame(1, 0x4 /* END_HEADERS */, id, headers));
  // The request message: an empty HealthCheckRequest (5-byte prefix, no bytes), ending each stream.
  for (const id of ids) out.push(frame(0, 0x1 /* END_STREAM */, id, Buffer.alloc(5)));
  sock.write(Buffer.concat(out));
  await sleep(1000);
  sock.destroy();
  return frames;
}
