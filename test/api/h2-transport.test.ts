/**
 * Strata's HTTP/2 transport for gRPC (src/api/h2) driven frame by frame: a gRPC server with a few test methods
 * serves a socket the test controls (bytes in, every byte the server writes out), so splits, windows and
 * resets happen exactly where the test puts them. A real unix socket serves the garbage and shutdown cases.
 */
import { EventEmitter, once } from 'node:events';
import net from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCode, Flag, FrameType, PREFACE, Setting, encodeFrame } from '../../src/api/h2/frames.js';
import { HpackDecoder, encodeHeaders } from '../../src/api/h2/hpack.js';
import { GrpcServer, type ServerCall } from '../../src/api/server.js';
import { tempDir, type TempDir } from '../helpers/temp.js';

const identity = (b: Buffer) => Buffer.from(b);
const method = (path: string, requestStream: boolean, responseStream: boolean) => ({
  path,
  requestStream,
  responseStream,
  requestDeserialize: identity,
  responseSerialize: (m: unknown) => m as Buffer,
});

/** What the test methods saw: cancellations by path. */
const cancelled: string[] = [];
/** Resolvers of calls the test holds open. */
const holds: (() => void)[] = [];

function makeServer(): GrpcServer {
  const server = new GrpcServer({ maxReceiveMessageLength: 4 << 20, maxSendMessageLength: 4 << 20, maxConcurrentStreams: 100 }, 'strata');
  server.addService(
    {
      Echo: method('/test.T/Echo', false, false),
      Hold: method('/test.T/Hold', false, false),
      Big: method('/test.T/Big', false, true),
      Sink: method('/test.T/Sink', true, false),
    },
    {
      Echo: (call: ServerCall, cb: (e: unknown, r?: Buffer) => void) => cb(null, call.request as Buffer),
      Hold: (call: ServerCall, cb: (e: unknown, r?: Buffer) => void) => {
        call.on('cancelled', () => cancelled.push('/test.T/Hold'));
        holds.push(() => cb(null, Buffer.from('late')));
      },
      // Server streaming: as many messages of `size` bytes (byte i % 251) as the request's first byte says.
      Big: async (call: ServerCall) => {
        const req = call.request as Buffer;
        const count = req[0]!;
        const size = req.readUInt32BE(1);
        for (let i = 0; i < count; i++) {
          const m = Buffer.alloc(size);
          for (let j = 0; j < size; j++) m[j] = (j + i) % 251;
          if (!call.write(m)) await once(call, 'drain');
        }
        call.end();
      },
      // Client streaming: sums the bytes of every message; pauses after each message until the test resumes.
      Sink: (call: ServerCall, cb: (e: unknown, r?: Buffer) => void) => {
        let total = 0;
        call.on('data', (m: Buffer) => {
          total += m.length;
          call.pause();
          holds.push(() => call.resume());
        });
        call.on('end', () => {
          const out = Buffer.alloc(4);
          out.writeUInt32BE(total);
          cb(null, out);
        });
      },
    },
  );
  return server;
}

/** A socket whose input the test writes and whose output it reads, as the server sees a net.Socket. */
class FakeSocket extends EventEmitter {
  out: Buffer[] = [];
  ended = false;
  destroyed = false;
  writableLength = 0;
  setNoDelay(): void {}
  cork(): void {}
  uncork(): void {}
  write(b: Buffer): boolean {
    this.out.push(Buffer.from(b));
    return true;
  }
  end(): void {
    this.ended = true;
  }
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.emit('close');
  }
  /** Feeds bytes to the server. */
  feed(b: Buffer): void {
    this.emit('data', b);
  }
  /** Every byte the server wrote so far, taken. */
  take(): Buffer {
    const all = Buffer.concat(this.out);
    this.out = [];
    return all;
  }
}

interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

function parseFrames(buf: Buffer): Frame[] {
  const frames: Frame[] = [];
  let pos = 0;
  while (pos + 9 <= buf.length) {
    const len = buf.readUIntBE(pos, 3);
    frames.push({ type: buf[pos + 3]!, flags: buf[pos + 4]!, stream: buf.readUInt32BE(pos + 5) & 0x7fffffff, payload: buf.subarray(pos + 9, pos + 9 + len) });
    pos += 9 + len;
  }
  expect(pos).toBe(buf.length);
  return frames;
}

const turn = () => new Promise<void>((r) => setImmediate(r));

function settings(pairs: [number, number][] = []): Buffer {
  const p = Buffer.alloc(pairs.length * 6);
  pairs.forEach(([k, v], i) => {
    p.writeUInt16BE(k, i * 6);
    p.writeUInt32BE(v, i * 6 + 2);
  });
  return encodeFrame(FrameType.SETTINGS, 0, 0, p);
}

function requestHeaders(path: string): Buffer {
  return encodeHeaders([
    [':method', 'POST'],
    [':scheme', 'http'],
    [':path', path],
    [':authority', 'localhost'],
    ['content-type', 'application/grpc'],
    ['te', 'trailers'],
  ]);
}

function grpcMessage(payload: Buffer): Buffer {
  const out = Buffer.alloc(5 + payload.length);
  out.writeUInt32BE(payload.length, 1);
  payload.copy(out, 5);
  return out;
}

function windowUpdate(stream: number, inc: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(inc);
  return encodeFrame(FrameType.WINDOW_UPDATE, 0, stream, p);
}

/** A unary request on `stream`: HEADERS, then DATA with the message and END_STREAM. */
function unaryRequest(stream: number, path: string, payload: Buffer): Buffer {
  return Buffer.concat([
    encodeFrame(FrameType.HEADERS, Flag.END_HEADERS, stream, requestHeaders(path)),
    encodeFrame(FrameType.DATA, Flag.END_STREAM, stream, grpcMessage(payload)),
  ]);
}

/** The response of one stream read from frames: headers, the DATA bytes, trailers. */
function responseOf(frames: Frame[], stream: number, dec = new HpackDecoder()) {
  const mine = frames.filter((f) => f.stream === stream);
  const headerBlocks = mine.filter((f) => f.type === FrameType.HEADERS).map((f) => dec.decode(f.payload));
  const data = Buffer.concat(mine.filter((f) => f.type === FrameType.DATA).map((f) => f.payload));
  return { headers: headerBlocks[0], trailers: headerBlocks[1], data, frames: mine };
}

function connect(server: GrpcServer, clientSettings: [number, number][] = []): FakeSocket {
  const sock = new FakeSocket();
  server.accept(sock as unknown as net.Socket);
  sock.feed(Buffer.concat([PREFACE, settings(clientSettings)]));
  return sock;
}

describe('frames split anywhere', () => {
  it('a unary call whose bytes arrive split at every possible byte, and one byte at a time, is answered the same', async () => {
    const server = makeServer();
    const payload = Buffer.from('hello over h2');
    const bytes = Buffer.concat([PREFACE, settings([[Setting.INITIAL_WINDOW_SIZE, 1 << 20]]), unaryRequest(1, '/test.T/Echo', payload)]);
    const check = (out: Buffer) => {
      const frames = parseFrames(out);
      expect(frames[0]!.type).toBe(FrameType.SETTINGS);
      const r = responseOf(frames, 1);
      expect(r.headers).toMatchObject({ ':status': '200', 'content-type': 'application/grpc' });
      expect(r.data).toEqual(grpcMessage(payload));
      expect(r.trailers).toEqual({ 'grpc-status': '0' });
      expect(r.frames.at(-1)!.flags & Flag.END_STREAM).toBe(Flag.END_STREAM);
    };
    for (let cut = 1; cut < bytes.length; cut++) {
      const sock = new FakeSocket();
      server.accept(sock as unknown as net.Socket);
      sock.feed(bytes.subarray(0, cut));
      sock.feed(bytes.subarray(cut));
      await turn();
      check(sock.take());
      sock.destroy();
    }
    const sock = new FakeSocket();
    server.accept(sock as unknown as net.Socket);
    for (let i = 0; i < bytes.length; i++) sock.feed(bytes.subarray(i, i + 1));
    await turn();
    check(sock.take());
    sock.destroy();
  });

  it('answers in one socket write: HEADERS, DATA and trailers of a unary call, and several answers of one turn together', async () => {
    const server = makeServer();
    const sock = connect(server);
    await turn();
    sock.take();
    sock.feed(Buffer.concat([unaryRequest(1, '/test.T/Echo', Buffer.from('a')), unaryRequest(3, '/test.T/Echo', Buffer.from('b'))]));
    await turn();
    expect(sock.out).toHaveLength(1);
    const frames = parseFrames(sock.take());
    const dec = new HpackDecoder();
    expect(responseOf(frames, 1, dec).data).toEqual(grpcMessage(Buffer.from('a')));
    expect(responseOf(frames, 3, dec).data).toEqual(grpcMessage(Buffer.from('b')));
    sock.destroy();
  });

  it('a header block split into HEADERS and CONTINUATION frames is decoded whole', async () => {
    const server = makeServer();
    const sock = connect(server);
    const block = encodeHeaders([
      [':method', 'POST'],
      [':path', '/test.T/Echo'],
      ['x-long', 'v'.repeat(40_000)],
    ]);
    sock.feed(
      Buffer.concat([
        encodeFrame(FrameType.HEADERS, 0, 1, block.subarray(0, 10)),
        encodeFrame(FrameType.CONTINUATION, 0, 1, block.subarray(10, 16_000)),
        encodeFrame(FrameType.CONTINUATION, 0, 1, block.subarray(16_000, 32_000)),
        encodeFrame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, block.subarray(32_000)),
        encodeFrame(FrameType.DATA, Flag.END_STREAM, 1, grpcMessage(Buffer.from('c'))),
      ]),
    );
    await turn();
    expect(responseOf(parseFrames(sock.take()), 1).data).toEqual(grpcMessage(Buffer.from('c')));
    sock.destroy();
  });

  it('answers a PING with an ACK of the same 8 bytes and acknowledges SETTINGS', async () => {
    const server = makeServer();
    const sock = connect(server);
    sock.feed(encodeFrame(FrameType.PING, 0, 0, Buffer.from('12345678')));
    await turn();
    const frames = parseFrames(sock.take());
    expect(frames.filter((f) => f.type === FrameType.SETTINGS && f.flags & Flag.ACK)).toHaveLength(1);
    const pong = frames.find((f) => f.type === FrameType.PING)!;
    expect(pong.flags).toBe(Flag.ACK);
    expect(pong.payload.toString()).toBe('12345678');
    sock.destroy();
  });
});

describe('flow control', () => {
  it('a client granting a 1,000-byte stream window gets no more DATA than it granted, and the whole answer as it grants more', async () => {
    const server = makeServer();
    const sock = connect(server, [[Setting.INITIAL_WINDOW_SIZE, 1000]]);
    const req = Buffer.alloc(5);
    req[0] = 3; // 3 messages
    req.writeUInt32BE(50_000, 1); // of 50,000 bytes: 150,015 framed bytes, past the 65,535 connection window too
    sock.feed(unaryRequest(1, '/test.T/Big', req));
    await turn();
    let frames = parseFrames(sock.take());
    let received = Buffer.concat(frames.filter((f) => f.type === FrameType.DATA).map((f) => f.payload));
    expect(received.length).toBe(1000);
    let granted = 1000;
    let connGranted = 65_535;
    const dec = new HpackDecoder();
    frames.filter((f) => f.type === FrameType.HEADERS).forEach((f) => dec.decode(f.payload));
    let trailers: Record<string, unknown> | undefined;
    for (let round = 0; round < 200 && !trailers; round++) {
      // Grant small steps: 7,000 bytes on the stream; the connection only when it runs out.
      sock.feed(windowUpdate(1, 7000));
      granted += 7000;
      if (granted > connGranted) {
        sock.feed(windowUpdate(0, 50_000));
        connGranted += 50_000;
      }
      await turn();
      frames = parseFrames(sock.take());
      for (const f of frames) {
        if (f.type === FrameType.DATA) {
          expect(f.payload.length).toBeLessThanOrEqual(16_384);
          received = Buffer.concat([received, f.payload]);
        }
        if (f.type === FrameType.HEADERS) trailers = dec.decode(f.payload);
      }
      expect(received.length).toBeLessThanOrEqual(Math.min(granted, connGranted));
    }
    expect(trailers).toEqual({ 'grpc-status': '0' });
    expect(received.length).toBe(3 * 50_005);
    for (let i = 0; i < 3; i++) {
      const msg = received.subarray(i * 50_005, (i + 1) * 50_005);
      expect(msg.readUInt32BE(1)).toBe(50_000);
      expect(msg[5]).toBe(i % 251);
      expect(msg[5 + 50_000 - 1]).toBe((49_999 + i) % 251);
    }
    sock.destroy();
  });

  it('a larger SETTINGS_INITIAL_WINDOW_SIZE mid-stream lets the waiting DATA go', async () => {
    const server = makeServer();
    const sock = connect(server, [[Setting.INITIAL_WINDOW_SIZE, 10]]);
    const req = Buffer.alloc(5);
    req[0] = 1;
    req.writeUInt32BE(30_000, 1);
    sock.feed(unaryRequest(1, '/test.T/Big', req));
    await turn();
    expect(parseFrames(sock.take()).filter((f) => f.type === FrameType.DATA).reduce((n, f) => n + f.payload.length, 0)).toBe(10);
    sock.feed(settings([[Setting.INITIAL_WINDOW_SIZE, 100_000]]));
    await turn();
    const frames = parseFrames(sock.take());
    expect(frames.filter((f) => f.type === FrameType.DATA).reduce((n, f) => n + f.payload.length, 0)).toBe(30_005 - 10);
    expect(frames.at(-1)!.type).toBe(FrameType.HEADERS);
    expect(frames.at(-1)!.flags & Flag.END_STREAM).toBe(Flag.END_STREAM);
    sock.destroy();
  });

  it('a paused reader gets no stream WINDOW_UPDATE until it resumes, so the client is held back', async () => {
    const server = makeServer();
    const sock = connect(server);
    await turn();
    sock.take();
    // 600 KiB in one message: past half the 1 MiB stream window, which is credited only once consumed.
    const big = grpcMessage(Buffer.alloc(600 << 10, 7));
    const parts: Buffer[] = [encodeFrame(FrameType.HEADERS, Flag.END_HEADERS, 1, requestHeaders('/test.T/Sink'))];
    for (let at = 0; at < big.length; at += 16_384) parts.push(encodeFrame(FrameType.DATA, 0, 1, big.subarray(at, at + 16_384)));
    // A second message arrives while the handler is paused on the first.
    for (let at = 0; at < big.length; at += 16_384) parts.push(encodeFrame(FrameType.DATA, 0, 1, big.subarray(at, at + 16_384)));
    sock.feed(Buffer.concat(parts));
    await turn();
    const updates = () =>
      parseFrames(sock.take())
        .filter((f) => f.type === FrameType.WINDOW_UPDATE && f.stream === 1)
        .reduce((n, f) => n + f.payload.readUInt32BE(0), 0);
    // The first message was consumed (then the reader paused): some credit; the second waits unconsumed.
    const first = updates();
    expect(first).toBeLessThanOrEqual(big.length);
    expect(holds).toHaveLength(1);
    holds.shift()!(); // resume: the second message is taken, its window given back
    await turn();
    expect(first + updates()).toBeGreaterThan(big.length);
    holds.shift()!();
    sock.feed(encodeFrame(FrameType.DATA, Flag.END_STREAM, 1, Buffer.alloc(0)));
    await turn();
    const r = responseOf(parseFrames(sock.take()), 1);
    expect(r.data.readUInt32BE(5)).toBe(2 * (600 << 10));
    sock.destroy();
  });
});

describe('resets and errors', () => {
  it('a stream reset by the client mid-call cancels the handler; the connection serves on', async () => {
    const server = makeServer();
    const sock = connect(server);
    sock.feed(unaryRequest(1, '/test.T/Hold', Buffer.from('x')));
    await turn();
    expect(holds).toHaveLength(1);
    const rst = Buffer.alloc(4);
    rst.writeUInt32BE(ErrorCode.CANCEL);
    sock.feed(encodeFrame(FrameType.RST_STREAM, 0, 1, rst));
    await turn();
    expect(cancelled).toEqual(['/test.T/Hold']);
    holds.shift()!(); // the late answer goes nowhere
    sock.take();
    sock.feed(unaryRequest(3, '/test.T/Echo', Buffer.from('still here')));
    await turn();
    const frames = parseFrames(sock.take());
    expect(frames.filter((f) => f.stream === 1)).toEqual([]);
    expect(responseOf(frames, 3).data).toEqual(grpcMessage(Buffer.from('still here')));
    sock.destroy();
  });

  it('a lost connection cancels its calls', async () => {
    cancelled.length = 0;
    const server = makeServer();
    const sock = connect(server);
    sock.feed(unaryRequest(1, '/test.T/Hold', Buffer.from('x')));
    await turn();
    sock.destroy();
    expect(cancelled).toEqual(['/test.T/Hold']);
    holds.shift()!();
  });

  it('an unknown method is answered trailers-only with UNIMPLEMENTED', async () => {
    const server = makeServer();
    const sock = connect(server);
    sock.feed(unaryRequest(1, '/test.T/Nope', Buffer.from('x')));
    await turn();
    const r = responseOf(parseFrames(sock.take()), 1);
    expect(r.headers).toMatchObject({ ':status': '200', 'grpc-status': '12', 'grpc-message': 'unknown method /test.T/Nope' });
    expect(r.frames[0]!.flags & Flag.END_STREAM).toBe(Flag.END_STREAM);
    // Answered before the client ended its side: the stream is then reset with NO_ERROR (as grpc-go does).
    expect(r.frames.slice(1).map((f) => [f.type, f.payload.readUInt32BE(0)])).toEqual([[FrameType.RST_STREAM, ErrorCode.NO_ERROR]]);
    sock.destroy();
  });

  for (const [what, bytes, code] of [
    ['DATA on stream 0', encodeFrame(FrameType.DATA, 0, 0, Buffer.from('x')), ErrorCode.PROTOCOL_ERROR],
    ['a frame larger than 16 KiB', encodeFrame(FrameType.DATA, 0, 1, Buffer.alloc(20_000)), ErrorCode.FRAME_SIZE_ERROR],
    ['a header block that is not HPACK', encodeFrame(FrameType.HEADERS, Flag.END_HEADERS, 1, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff])), ErrorCode.COMPRESSION_ERROR],
    ['a stream id going backwards', Buffer.concat([unaryRequest(5, '/test.T/Echo', Buffer.from('a')), unaryRequest(3, '/test.T/Echo', Buffer.from('b'))]), ErrorCode.PROTOCOL_ERROR],
    ['CONTINUATION with no HEADERS before', encodeFrame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, Buffer.from([0x82])), ErrorCode.PROTOCOL_ERROR],
    ['a PUSH_PROMISE', encodeFrame(FrameType.PUSH_PROMISE, 0, 1, Buffer.alloc(4)), ErrorCode.PROTOCOL_ERROR],
    ['a WINDOW_UPDATE overflowing the connection window', windowUpdate(0, 0x7fffffff), ErrorCode.FLOW_CONTROL_ERROR],
  ] as const) {
    it(`a client sending ${what} gets a GOAWAY (code ${code}) and its connection ends`, async () => {
      const server = makeServer();
      const sock = connect(server);
      sock.feed(bytes);
      await turn();
      const goaway = parseFrames(sock.take()).filter((f) => f.type === FrameType.GOAWAY);
      expect(goaway).toHaveLength(1);
      expect(goaway[0]!.payload.readUInt32BE(4)).toBe(code);
      expect(sock.ended).toBe(true);
      sock.destroy();
    });
  }
});

describe('on a unix socket', () => {
  let dir: TempDir;
  let server: GrpcServer;
  let address: string;

  beforeAll(async () => {
    dir = await tempDir('h2-transport-');
    address = join(dir.path, 'grpc.sock');
    server = makeServer();
    await server.listen(address);
  });

  afterAll(async () => {
    server.forceShutdown();
    await dir.cleanup();
  });

  /** Writes `bytes`, collects what comes back until the server closes or `ms` pass. */
  async function exchange(bytes: Buffer, ms = 500): Promise<{ frames: Buffer; closed: boolean }> {
    const sock = net.connect(address);
    const got: Buffer[] = [];
    let closed = false;
    sock.on('data', (b: Buffer) => got.push(b));
    sock.on('error', () => undefined);
    const ended = new Promise<void>((r) => sock.on('close', () => ((closed = true), r())));
    sock.write(bytes);
    await Promise.race([ended, sleep(ms)]);
    sock.destroy();
    return { frames: Buffer.concat(got), closed };
  }

  it('a client that sends garbage instead of the preface gets a GOAWAY and is disconnected; the server serves the next client', async () => {
    const bad = await exchange(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), 3000);
    const frames = parseFrames(bad.frames);
    const goaway = frames.filter((f) => f.type === FrameType.GOAWAY);
    expect(goaway).toHaveLength(1);
    expect(goaway[0]!.payload.readUInt32BE(4)).toBe(ErrorCode.PROTOCOL_ERROR);
    expect(bad.closed).toBe(true);
    // Random bytes after a valid preface: the same.
    const noise = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) % 256));
    const bad2 = await exchange(Buffer.concat([PREFACE, settings(), noise]), 3000);
    expect(parseFrames(bad2.frames).filter((f) => f.type === FrameType.GOAWAY)).toHaveLength(1);
    expect(bad2.closed).toBe(true);
    const good = await exchange(Buffer.concat([PREFACE, settings(), unaryRequest(1, '/test.T/Echo', Buffer.from('ok'))]));
    expect(responseOf(parseFrames(good.frames), 1).data).toEqual(grpcMessage(Buffer.from('ok')));
  });

  it('graceful shutdown sends GOAWAY with NO_ERROR, lets the open call finish, then closes', async () => {
    const sock = net.connect(address);
    const got: Buffer[] = [];
    sock.on('data', (b: Buffer) => got.push(b));
    const closed = once(sock, 'close');
    sock.write(Buffer.concat([PREFACE, settings(), unaryRequest(1, '/test.T/Hold', Buffer.from('x'))]));
    for (let i = 0; i < 100 && holds.length === 0; i++) await sleep(10);
    expect(holds).toHaveLength(1);
    let shut = false;
    server.tryShutdown(() => (shut = true));
    await sleep(100);
    expect(shut).toBe(false);
    holds.shift()!();
    await closed;
    for (let i = 0; i < 100 && !shut; i++) await sleep(10);
    expect(shut).toBe(true);
    const frames = parseFrames(Buffer.concat(got));
    const goaway = frames.find((f) => f.type === FrameType.GOAWAY)!;
    expect(goaway.payload.readUInt32BE(0)).toBe(1);
    expect(goaway.payload.readUInt32BE(4)).toBe(ErrorCode.NO_ERROR);
    expect(responseOf(frames, 1).data).toEqual(grpcMessage(Buffer.from('late')));
  });
});
