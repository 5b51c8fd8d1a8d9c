/**
 * One HTTP/2 connection, server side, cleartext (h2c with prior knowledge, as gRPC clients speak on a unix
 * socket): the frame parser, stream states, flow control both ways and the batched writer.
 *
 * Writing: every frame the connection produces in one turn of the event loop (answers of many calls, SETTINGS
 * and PING acknowledgements, window updates) is collected and handed to the socket in one write at the end of
 * the turn (setImmediate), so a unary answer (HEADERS + DATA + trailers) is one socket write, and a burst of
 * answers is one too. DATA respects the peer's connection and stream windows and the socket's own buffer:
 * what does not fit waits in the stream's queue until a WINDOW_UPDATE or the socket's 'drain'.
 *
 * Reading: frames are parsed in place from the socket's chunks (a frame split across chunks is joined once).
 * The connection window is credited as data arrives (the stream windows bound what can be buffered); a
 * stream's window is credited as its consumer takes the data, and not while it is paused, so a slow consumer
 * holds its client back.
 */
import type { Socket } from 'node:net';
import {
  DEFAULT_MAX_FRAME,
  DEFAULT_WINDOW,
  ErrorCode,
  FRAME_HEADER,
  Flag,
  FrameType,
  MAX_WINDOW,
  PREFACE,
  Setting,
  encodeFrame,
  writeFrameHeader,
} from './frames.js';
import { HpackDecoder, HpackError, encodeHeaders, type HeaderMap } from './hpack.js';

/** What the call above a stream is told. */
export interface StreamSink {
  /** Request bytes (DATA payloads), in order. */
  onData(chunk: Buffer): void;
  /** The client half-closed its side. */
  onEnd(): void;
  /** The stream is gone: answered and closed, reset by the client, or its connection lost. Called once. */
  onClose(): void;
  /** A write that returned false has been handed on; more may follow. */
  onDrain(): void;
}

export interface ConnectionOptions {
  /** SETTINGS_MAX_CONCURRENT_STREAMS announced and enforced. */
  maxConcurrentStreams: number;
  /** SETTINGS_INITIAL_WINDOW_SIZE announced: what a client may send on a stream before its consumer takes it. */
  initialWindowSize: number;
  /** The connection's receive window (raised from 65,535 by a WINDOW_UPDATE right after the SETTINGS). */
  connectionWindowSize: number;
  /** Largest header block accepted (decoded size, as SETTINGS_MAX_HEADER_LIST_SIZE counts it). */
  maxHeaderListSize: number;
  /** A new request stream. */
  onStream(stream: H2Stream): void;
}

/** Bytes handed to the socket that it has not written yet, past which DATA waits for its 'drain'. */
const SOCKET_HIGH_WATER = 1 << 20;
/** Stream queue size past which write() asks the caller to wait for onDrain. */
const STREAM_HIGH_WATER = 64 << 10;
/** Batches larger than this are handed to the socket as separate buffers (one writev) instead of joined. */
const JOIN_LIMIT = 8 << 10;
/** Buffers smaller than this are joined with their neighbours in a writev. */
const SMALL = 1024;

const RESPONSE_BLOCK = encodeHeaders([
  [':status', '200'],
  ['content-type', 'application/grpc'],
]);
const OK_TRAILERS = encodeHeaders([['grpc-status', '0']]);

const EMPTY = Buffer.alloc(0);

/** grpc-message is percent-encoded: bytes outside printable ASCII, and '%' itself. */
export function encodeGrpcMessage(s: string): string {
  // eslint-disable-next-line no-control-regex
  if (!/[^\x20-\x24\x26-\x7e]/.test(s)) return s;
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function statusFields(code: number, message: string): [string, string][] {
  const f: [string, string][] = [['grpc-status', String(code)]];
  if (message) f.push(['grpc-message', encodeGrpcMessage(message)]);
  return f;
}

/** A connection error: ends the connection with a GOAWAY carrying `code`. */
class ConnectionError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

export class H2Stream {
  sink: StreamSink | undefined;
  /** What the peer lets us send on this stream. */
  sendWindow: number;
  /** What the peer may still send us on this stream. */
  recvWindow: number;
  /** Bytes taken by the consumer since the last WINDOW_UPDATE. */
  private consumed = 0;
  /** Outgoing DATA not yet handed to the connection, and its size. */
  queue: Buffer[] = [];
  queued = 0;
  /** The trailer block to send once the queue is empty. */
  trailers: Buffer | undefined;
  headersSent = false;
  /** end() was called (trailers may still wait behind flow control). */
  localEnded = false;
  /** END_STREAM has been sent: with the client's side ended too, the stream is closed. */
  endSent = false;
  remoteEnded = false;
  closed = false;
  needDrain = false;
  private paused = false;
  private inbox: Buffer[] = [];
  private endPending = false;

  constructor(
    readonly id: number,
    readonly headers: HeaderMap,
    private readonly conn: H2Connection,
  ) {
    this.sendWindow = conn.peerInitialWindow;
    this.recvWindow = conn.options.initialWindowSize;
  }

  /** Whether the connection the stream came on is still open. */
  connected(): boolean {
    return !this.conn.closed;
  }

  /** Sends the response headers (200, application/grpc) unless already sent. */
  sendHeaders(): void {
    if (this.headersSent || this.localEnded) return;
    this.headersSent = true;
    this.conn.pushHeaders(this.id, RESPONSE_BLOCK, false);
  }

  /** Queues DATA (a framed gRPC message); false when the caller should wait for onDrain. */
  write(data: Buffer): boolean {
    if (this.localEnded || this.closed) return true;
    this.sendHeaders();
    if (data.length > 0) {
      this.queue.push(data);
      this.queued += data.length;
      this.conn.pump(this);
    }
    if (this.queued >= STREAM_HIGH_WATER) {
      this.needDrain = true;
      return false;
    }
    return true;
  }

  /**
   * Ends the response: the last DATA if any, then the status in trailers; a response with neither headers nor
   * data sent yet is trailers-only (the status in the response headers).
   */
  end(code: number, message: string, last?: Buffer): void {
    if (this.localEnded || this.closed) return;
    if (!this.headersSent && !last) {
      this.headersSent = true;
      this.localEnded = true;
      const block = code === 0 && !message ? encodeHeaders([[':status', '200'], ['content-type', 'application/grpc'], ['grpc-status', '0']]) : encodeHeaders([[':status', '200'], ['content-type', 'application/grpc'], ...statusFields(code, message)]);
      this.conn.pushHeaders(this.id, block, true);
      this.conn.localEnd(this);
      return;
    }
    this.sendHeaders();
    if (last && last.length > 0) {
      this.queue.push(last);
      this.queued += last.length;
    }
    this.trailers = code === 0 && !message ? OK_TRAILERS : encodeHeaders(statusFields(code, message));
    this.localEnded = true;
    this.conn.pump(this);
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    while (!this.paused && this.inbox.length > 0 && !this.closed) {
      const chunk = this.inbox.shift()!;
      this.sink?.onData(chunk);
      this.credit(chunk.length);
    }
    if (!this.paused && this.inbox.length === 0 && this.endPending && !this.closed) {
      this.endPending = false;
      this.sink?.onEnd();
    }
  }

  /** DATA from the peer (padding already credited). */
  receive(chunk: Buffer, endStream: boolean): void {
    if (this.paused || this.inbox.length > 0) {
      if (chunk.length > 0) this.inbox.push(chunk);
      if (endStream) this.endPending = true;
      return;
    }
    if (chunk.length > 0) {
      this.sink?.onData(chunk);
      this.credit(chunk.length);
    }
    if (endStream && !this.closed) {
      if (this.paused) this.endPending = true;
      else this.sink?.onEnd();
    }
  }

  /** Gives the peer back the window the consumer freed, in steps of half the initial window. */
  credit(n: number): void {
    if (this.remoteEnded || this.closed) return;
    this.consumed += n;
    if (this.consumed >= this.conn.options.initialWindowSize >>> 1) {
      this.conn.windowUpdate(this.id, this.consumed);
      this.recvWindow += this.consumed;
      this.consumed = 0;
    }
  }

  /** Closes the stream (once): the sink learns it. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.queued = 0;
    this.inbox = [];
    this.sink?.onClose();
  }
}

export class H2Connection {
  readonly streams = new Map<number, H2Stream>();
  closed = false;
  peerInitialWindow = DEFAULT_WINDOW;
  private peerMaxFrame = DEFAULT_MAX_FRAME;
  /** The connection windows: what we may send, and what the peer may still send before a WINDOW_UPDATE. */
  private sendWindow = DEFAULT_WINDOW;
  private recvWindow: number;
  private recvUnacked = 0;
  private readonly decoder: HpackDecoder;
  /** The highest stream id the client opened, and the highest we took on (GOAWAY's last stream). */
  private lastStreamId = 0;
  private lastProcessed = 0;
  private prefaceSeen = false;
  private settingsSeen = false;
  /** Whether the client acknowledged our SETTINGS (from then on, the stream limit is a connection error). */
  private settingsAcked = false;
  /** A header block being received: its stream, END_STREAM and fragments. */
  private headerBlock: { stream: number; endStream: boolean; parts: Buffer[]; size: number } | undefined;
  /** A DATA frame whose payload is still arriving: its stream (undefined: dropped), bytes to come, flags. */
  private partialData: { stream: H2Stream | undefined; remaining: number; flags: number } | undefined;
  /** Bytes of an incomplete frame (or preface) carried over to the next chunk. */
  private leftover: Buffer | undefined;
  private out: Buffer[] = [];
  private outBytes = 0;
  private flushScheduled = false;
  /** Input is being parsed: output waits for the end of the chunk. */
  private parsing = false;
  /** Streams whose queued DATA waits for a window or the socket. */
  private readonly blocked = new Set<H2Stream>();
  private goingAway = false;
  /** The ids of the last streams closed (a bounded memory: 256), for frames that cross a stream's end. */
  private readonly recentlyClosed = new Set<number>();
  private onIdle: (() => void) | undefined;

  constructor(
    private readonly socket: Socket,
    readonly options: ConnectionOptions,
  ) {
    this.decoder = new HpackDecoder(4096);
    this.recvWindow = options.connectionWindowSize;
    socket.setNoDelay?.(true);
    socket.on('data', (chunk: Buffer) => this.onBytes(chunk));
    socket.on('drain', () => this.pumpAll());
    socket.on('error', () => undefined);
    socket.on('close', () => this.teardown());
    // Our SETTINGS, then the connection window raised to its size.
    const settings = Buffer.alloc(18);
    settings.writeUInt16BE(Setting.MAX_CONCURRENT_STREAMS, 0);
    settings.writeUInt32BE(options.maxConcurrentStreams, 2);
    settings.writeUInt16BE(Setting.INITIAL_WINDOW_SIZE, 6);
    settings.writeUInt32BE(options.initialWindowSize, 8);
    settings.writeUInt16BE(Setting.MAX_HEADER_LIST_SIZE, 12);
    settings.writeUInt32BE(options.maxHeaderListSize, 14);
    this.push(encodeFrame(FrameType.SETTINGS, 0, 0, settings));
    if (options.connectionWindowSize > DEFAULT_WINDOW) this.windowUpdate(0, options.connectionWindowSize - DEFAULT_WINDOW);
    this.flush();
  }

  // ---- output ----

  private push(buf: Buffer): void {
    this.out.push(buf);
    this.outBytes += buf.length;
    // While input is parsed, what it produces is written once at the end of the chunk; otherwise at the end of
    // this tick (after its microtasks: the answers of handlers that resolved a promise in it).
    if (!this.flushScheduled && !this.parsing) {
      this.flushScheduled = true;
      process.nextTick(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    const out = this.out;
    if (out.length === 0 || this.closed) {
      this.out = [];
      this.outBytes = 0;
      return;
    }
    this.out = [];
    const bytes = this.outBytes;
    this.outBytes = 0;
    if (out.length === 1) this.socket.write(out[0]!);
    else if (bytes <= JOIN_LIMIT) this.socket.write(Buffer.concat(out, bytes));
    else {
      // Bulk DATA: the payloads go as they are (one writev), runs of small frames between them joined.
      this.socket.cork();
      let run: Buffer[] = [];
      let runBytes = 0;
      for (const b of out) {
        if (b.length < SMALL) {
          run.push(b);
          runBytes += b.length;
          continue;
        }
        if (run.length > 0) {
          this.socket.write(run.length === 1 ? run[0]! : Buffer.concat(run, runBytes));
          run = [];
          runBytes = 0;
        }
        this.socket.write(b);
      }
      if (run.length > 0) this.socket.write(run.length === 1 ? run[0]! : Buffer.concat(run, runBytes));
      this.socket.uncork();
    }
  }

  pushHeaders(stream: number, block: Buffer, endStream: boolean): void {
    // A block larger than the peer's frame size goes out as HEADERS + CONTINUATION frames.
    const max = this.peerMaxFrame;
    if (block.length <= max) {
      const f = Buffer.allocUnsafe(FRAME_HEADER + block.length);
      writeFrameHeader(f, 0, block.length, FrameType.HEADERS, Flag.END_HEADERS | (endStream ? Flag.END_STREAM : 0), stream);
      block.copy(f, FRAME_HEADER);
      this.push(f);
      return;
    }
    for (let at = 0; at < block.length; at += max) {
      const part = block.subarray(at, at + max);
      const last = at + max >= block.length;
      const type = at === 0 ? FrameType.HEADERS : FrameType.CONTINUATION;
      const flags = (last ? Flag.END_HEADERS : 0) | (at === 0 && endStream ? Flag.END_STREAM : 0);
      this.push(encodeFrame(type, flags, stream, part));
    }
  }

  windowUpdate(stream: number, increment: number): void {
    const f = Buffer.allocUnsafe(13);
    writeFrameHeader(f, 0, 4, FrameType.WINDOW_UPDATE, 0, stream);
    f.writeUInt32BE(increment, 9);
    this.push(f);
  }

  private rst(stream: number, code: number): void {
    const f = Buffer.allocUnsafe(13);
    writeFrameHeader(f, 0, 4, FrameType.RST_STREAM, 0, stream);
    f.writeUInt32BE(code, 9);
    this.push(f);
  }

  /** Moves a stream's queued DATA (then its trailers) into the output as far as the windows and socket allow. */
  pump(s: H2Stream): void {
    if (s.closed) return;
    while (s.queue.length > 0) {
      const room = Math.min(s.sendWindow, this.sendWindow, this.peerMaxFrame);
      if (room <= 0 || this.socket.writableLength + this.outBytes >= SOCKET_HIGH_WATER) {
        this.blocked.add(s);
        if (s.needDrain && s.queued < STREAM_HIGH_WATER) {
          // The caller may produce the next message while this one's tail waits for a window.
          s.needDrain = false;
          s.sink?.onDrain();
        }
        return;
      }
      const first = s.queue[0]!;
      let chunk: Buffer;
      if (first.length <= room) {
        chunk = first;
        s.queue.shift();
      } else {
        chunk = first.subarray(0, room);
        s.queue[0] = first.subarray(room);
      }
      s.queued -= chunk.length;
      s.sendWindow -= chunk.length;
      this.sendWindow -= chunk.length;
      const endNow = s.queue.length === 0 && s.trailers === undefined && s.localEnded;
      const head = Buffer.allocUnsafe(FRAME_HEADER);
      writeFrameHeader(head, 0, chunk.length, FrameType.DATA, endNow ? Flag.END_STREAM : 0, s.id);
      this.push(head);
      this.push(chunk);
    }
    this.blocked.delete(s);
    if (s.trailers !== undefined) {
      const t = s.trailers;
      s.trailers = undefined;
      this.pushHeaders(s.id, t, true);
      this.localEnd(s);
      return;
    }
    if (s.needDrain && s.queued < STREAM_HIGH_WATER) {
      s.needDrain = false;
      s.sink?.onDrain();
    }
  }

  private pumpAll(): void {
    if (this.blocked.size === 0) return;
    for (const s of [...this.blocked]) {
      if (this.sendWindow <= 0 || this.socket.writableLength + this.outBytes >= SOCKET_HIGH_WATER) return;
      this.pump(s);
    }
  }

  /** Our side of a stream has ended: the stream closes (reset with NO_ERROR when the client is still sending). */
  localEnd(s: H2Stream): void {
    s.endSent = true;
    if (!s.remoteEnded) this.rst(s.id, ErrorCode.NO_ERROR);
    this.closeStream(s);
  }

  private closeStream(s: H2Stream): void {
    this.streams.delete(s.id);
    this.recentlyClosed.add(s.id);
    if (this.recentlyClosed.size > 256) this.recentlyClosed.delete(this.recentlyClosed.values().next().value!);
    this.blocked.delete(s);
    s.close();
    if (this.goingAway && this.streams.size === 0) this.finishGoaway();
  }

  // ---- shutdown ----

  /** Graceful: a GOAWAY (no new streams), then the connection closes once its streams are done. */
  shutdown(onClosed: () => void): void {
    if (this.closed) return onClosed();
    this.socket.once('close', onClosed);
    if (!this.goingAway) {
      this.goingAway = true;
      this.goaway(ErrorCode.NO_ERROR);
    }
    if (this.streams.size === 0) this.finishGoaway();
  }

  private finishGoaway(): void {
    if (this.onIdle) return;
    this.onIdle = () => undefined;
    this.flush();
    this.socket.end();
  }

  private goaway(code: number, debug = ''): void {
    const payload = Buffer.alloc(8 + Buffer.byteLength(debug));
    payload.writeUInt32BE(this.lastProcessed, 0);
    payload.writeUInt32BE(code, 4);
    payload.write(debug, 8);
    this.push(encodeFrame(FrameType.GOAWAY, 0, 0, payload));
  }

  /** A connection error: GOAWAY with the code, then the connection ends; its streams are cancelled. */
  private fail(code: number, debug: string): void {
    if (this.closed) return;
    this.goaway(code, debug);
    this.flush();
    this.socket.end();
    this.teardown();
    // A client that never closes its side is cut off shortly after.
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  destroy(): void {
    this.socket.destroy();
    this.teardown();
  }

  private teardown(): void {
    if (this.closed) return;
    this.closed = true;
    this.out = [];
    this.outBytes = 0;
    const open = [...this.streams.values()];
    this.streams.clear();
    this.blocked.clear();
    for (const s of open) s.close();
  }

  // ---- input ----

  private onBytes(chunk: Buffer): void {
    if (this.closed) return;
    this.parsing = true;
    try {
      this.parse(chunk);
      this.parsing = false;
      if (this.out.length > 0) this.flush();
    } catch (err) {
      this.parsing = false;
      if (err instanceof ConnectionError) this.fail(err.code, err.message);
      else if (err instanceof HpackError) this.fail(ErrorCode.COMPRESSION_ERROR, err.message);
      else this.fail(ErrorCode.INTERNAL_ERROR, 'internal error');
    }
  }

  private parse(chunk: Buffer): void {
    const pd = this.partialData;
    if (pd) {
      const n = Math.min(pd.remaining, chunk.length);
      if (pd.stream && n > 0) this.dataPart(pd.stream, chunk.subarray(0, n));
      pd.remaining -= n;
      if (pd.remaining > 0) return;
      this.partialData = undefined;
      if (pd.stream) this.dataEnd(pd.stream, pd.flags);
      if (this.closed || n === chunk.length) return;
      chunk = chunk.subarray(n);
    }
    let buf = chunk;
    if (this.leftover) {
      // Complete the carried-over frame with as few bytes of the new chunk as it needs.
      const have = this.leftover;
      let need: number;
      if (!this.prefaceSeen) need = PREFACE.length - have.length;
      else if (have.length < FRAME_HEADER) need = FRAME_HEADER - have.length;
      else need = FRAME_HEADER + ((have[0]! << 16) | (have[1]! << 8) | have[2]!) - have.length;
      if (chunk.length < need) {
        this.leftover = Buffer.concat([have, chunk]);
        if (this.prefaceSeen && this.leftover.length >= FRAME_HEADER) this.checkLength(this.leftover);
        return;
      }
      this.leftover = undefined;
      const joined = Buffer.concat([have, chunk.subarray(0, need)]);
      const rest = chunk.subarray(need);
      if (this.prefaceSeen && joined.length === FRAME_HEADER) {
        // Only the header was completed: parse again with it in front of the rest.
        buf = Buffer.concat([joined, rest]);
      } else {
        this.parseBuffer(joined);
        if (this.closed) return;
        if (this.leftover) {
          this.leftover = Buffer.concat([this.leftover, rest]);
          return;
        }
        buf = rest;
      }
    }
    this.parseBuffer(buf);
  }

  private checkLength(head: Buffer): void {
    const len = (head[0]! << 16) | (head[1]! << 8) | head[2]!;
    if (len > DEFAULT_MAX_FRAME) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'frame too large');
  }

  /** Parses whole frames from `buf`; an incomplete tail is kept in `leftover`. */
  private parseBuffer(buf: Buffer): void {
    let pos = 0;
    if (!this.prefaceSeen) {
      const n = Math.min(buf.length, PREFACE.length);
      if (!buf.subarray(0, n).equals(PREFACE.subarray(0, n))) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'bad connection preface');
      if (n < PREFACE.length) {
        this.leftover = Buffer.from(buf);
        return;
      }
      this.prefaceSeen = true;
      pos = PREFACE.length;
    }
    while (pos < buf.length && !this.closed) {
      if (buf.length - pos < FRAME_HEADER) {
        this.leftover = Buffer.from(buf.subarray(pos));
        return;
      }
      const len = (buf[pos]! << 16) | (buf[pos + 1]! << 8) | buf[pos + 2]!;
      if (len > DEFAULT_MAX_FRAME) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'frame too large');
      if (buf.length - pos < FRAME_HEADER + len) {
        const type = buf[pos + 3]!;
        const flags = buf[pos + 4]!;
        if (type === FrameType.DATA && !(flags & Flag.PADDED)) {
          // A DATA frame cut by the chunk: what is there goes to its stream now, the rest as it comes (no join).
          this.checkOrder(type, flags);
          const s = this.dataBegin(flags, buf.readUInt32BE(pos + 5) & 0x7fffffff, len);
          const part = buf.subarray(pos + FRAME_HEADER);
          if (s && part.length > 0) this.dataPart(s, part);
          this.partialData = { stream: s, remaining: len - part.length, flags };
          return;
        }
        this.leftover = buf.subarray(pos);
        return;
      }
      const type = buf[pos + 3]!;
      const flags = buf[pos + 4]!;
      const stream = buf.readUInt32BE(pos + 5) & 0x7fffffff;
      const payload = buf.subarray(pos + FRAME_HEADER, pos + FRAME_HEADER + len);
      pos += FRAME_HEADER + len;
      this.frame(type, flags, stream, payload);
    }
  }

  /** Frame order: SETTINGS first; nothing between a HEADERS without END_HEADERS and its CONTINUATIONs. */
  private checkOrder(type: number, flags: number): void {
    if (!this.settingsSeen) {
      if (type !== FrameType.SETTINGS || flags & Flag.ACK) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'first frame is not SETTINGS');
      this.settingsSeen = true;
    }
    if (this.headerBlock && type !== FrameType.CONTINUATION) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'header block interrupted');
  }

  private frame(type: number, flags: number, stream: number, payload: Buffer): void {
    this.checkOrder(type, flags);
    switch (type) {
      case FrameType.DATA:
        return this.onData(flags, stream, payload);
      case FrameType.HEADERS:
        return this.onHeaders(flags, stream, payload);
      case FrameType.CONTINUATION:
        return this.onContinuation(flags, stream, payload);
      case FrameType.PRIORITY:
        if (stream === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'PRIORITY on stream 0');
        if (payload.length !== 5) this.rst(stream, ErrorCode.FRAME_SIZE_ERROR);
        return;
      case FrameType.RST_STREAM:
        return this.onRst(stream, payload);
      case FrameType.SETTINGS:
        return this.onSettings(flags, stream, payload);
      case FrameType.PUSH_PROMISE:
        throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'PUSH_PROMISE from a client');
      case FrameType.PING:
        if (stream !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'PING on a stream');
        if (payload.length !== 8) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'PING length');
        if (!(flags & Flag.ACK)) this.push(encodeFrame(FrameType.PING, Flag.ACK, 0, payload));
        return;
      case FrameType.GOAWAY:
        if (stream !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'GOAWAY on a stream');
        // The client leaves: its open streams finish; it closes the socket.
        return;
      case FrameType.WINDOW_UPDATE:
        return this.onWindowUpdate(stream, payload);
      default:
        return; // unknown frame types are ignored
    }
  }

  /** The payload without padding (PADDED flag), or a PROTOCOL_ERROR. */
  private unpad(flags: number, payload: Buffer): Buffer {
    if (!(flags & Flag.PADDED)) return payload;
    if (payload.length < 1) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'padding');
    const pad = payload[0]!;
    if (pad >= payload.length) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'padding longer than the frame');
    return payload.subarray(1, payload.length - pad);
  }

  private onData(flags: number, id: number, payload: Buffer): void {
    const s = this.dataBegin(flags, id, payload.length);
    const data = this.unpad(flags, payload);
    if (!s) return;
    if (data.length > 0) this.dataPart(s, data);
    // Padding counts against the window like data: given back at once.
    if (data.length < payload.length && !s.closed) s.credit(payload.length - data.length);
    this.dataEnd(s, flags);
  }

  /**
   * The flow-control accounting and checks of a DATA frame of `len` bytes, done from its header (its payload may
   * arrive in pieces); the stream to deliver to, or undefined when the frame is dropped.
   */
  private dataBegin(flags: number, id: number, len: number): H2Stream | undefined {
    if (id === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'DATA on stream 0');
    this.recvWindow -= len;
    if (this.recvWindow < 0) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'connection window exceeded');
    // The connection window is given back as data arrives: the stream windows bound what waits in memory.
    this.recvUnacked += len;
    if (this.recvUnacked >= this.options.connectionWindowSize >>> 2) {
      this.windowUpdate(0, this.recvUnacked);
      this.recvWindow += this.recvUnacked;
      this.recvUnacked = 0;
    }
    const s = this.streams.get(id);
    if (!s) {
      if (id > this.lastStreamId) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'DATA on an idle stream');
      return undefined; // a stream we closed or reset: ignored
    }
    if (s.remoteEnded) {
      this.rst(id, ErrorCode.STREAM_CLOSED);
      this.closeStream(s);
      return undefined;
    }
    s.recvWindow -= len;
    if (s.recvWindow < 0) {
      this.rst(id, ErrorCode.FLOW_CONTROL_ERROR);
      this.closeStream(s);
      return undefined;
    }
    return s;
  }

  private dataPart(s: H2Stream, data: Buffer): void {
    if (!s.closed) s.receive(data, false);
  }

  private dataEnd(s: H2Stream, flags: number): void {
    if (!(flags & Flag.END_STREAM) || s.closed) return;
    s.remoteEnded = true;
    s.receive(EMPTY, true);
    if (s.endSent && !s.closed) this.closeStream(s);
  }

  private onHeaders(flags: number, id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'HEADERS on stream 0');
    let frag = this.unpad(flags, payload);
    if (flags & Flag.PRIORITY) {
      if (frag.length < 5) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'HEADERS priority');
      frag = frag.subarray(5);
    }
    const endStream = (flags & Flag.END_STREAM) !== 0;
    if (flags & Flag.END_HEADERS) return this.onHeaderBlock(id, endStream, frag);
    this.headerBlock = { stream: id, endStream, parts: [Buffer.from(frag)], size: frag.length };
  }

  private onContinuation(flags: number, id: number, payload: Buffer): void {
    const hb = this.headerBlock;
    if (!hb || hb.stream !== id) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'CONTINUATION without HEADERS');
    hb.parts.push(Buffer.from(payload));
    hb.size += payload.length;
    if (hb.size > this.options.maxHeaderListSize + 4096) throw new ConnectionError(ErrorCode.ENHANCE_YOUR_CALM, 'header block too large');
    if (flags & Flag.END_HEADERS) {
      this.headerBlock = undefined;
      this.onHeaderBlock(id, hb.endStream, Buffer.concat(hb.parts));
    }
  }

  private onHeaderBlock(id: number, endStream: boolean, block: Buffer): void {
    // Decoded always: the HPACK table must follow every block, also of streams that are refused.
    const headers = this.decoder.decode(block, this.options.maxHeaderListSize);
    const existing = this.streams.get(id);
    if (existing) {
      // Trailers from the client: they end its side.
      if (!endStream) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'second HEADERS without END_STREAM');
      if (existing.remoteEnded) {
        this.rst(id, ErrorCode.STREAM_CLOSED);
        this.closeStream(existing);
        return;
      }
      existing.remoteEnded = true;
      existing.receive(Buffer.alloc(0), true);
      if (existing.endSent && !existing.closed) this.closeStream(existing);
      return;
    }
    if (id % 2 === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `HEADERS opening stream ${id}`);
    if (id <= this.lastStreamId) {
      // A stream we closed or refused (the client's trailers crossing our answer or reset): ignored. Ids reused
      // out of order are a connection error.
      if (this.closedBelow(id)) return;
      throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, `HEADERS opening stream ${id}`);
    }
    this.lastStreamId = id;
    if (this.goingAway) return; // after our GOAWAY: not processed (the client retries elsewhere)
    if (this.streams.size >= this.options.maxConcurrentStreams) {
      // Past the announced limit. Before the client acknowledged the setting it may not know it: the stream is
      // refused; after, it is a connection error (RFC 9113 5.1.2), as nghttp2 treats it.
      if (this.settingsAcked) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'too many concurrent streams');
      this.rst(id, ErrorCode.REFUSED_STREAM);
      this.recentlyClosed.add(id);
      return;
    }
    this.lastProcessed = id;
    const s = new H2Stream(id, headers, this);
    this.streams.set(id, s);
    this.options.onStream(s);
    if (endStream && !s.closed) {
      s.remoteEnded = true;
      s.receive(Buffer.alloc(0), true);
      if (s.endSent && !s.closed) this.closeStream(s);
    }
  }

  /**
   * Whether `id` (at most the last stream id) names a stream this connection saw and closed: the client sends
   * trailers on a stream it opened, so one it never opened is a new stream going backwards.
   */
  private closedBelow(id: number): boolean {
    return this.recentlyClosed.has(id);
  }

  private onRst(id: number, payload: Buffer): void {
    if (id === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'RST_STREAM on stream 0');
    if (payload.length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'RST_STREAM length');
    if (id > this.lastStreamId) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'RST_STREAM on an idle stream');
    const s = this.streams.get(id);
    if (s) this.closeStream(s);
  }

  private onSettings(flags: number, id: number, payload: Buffer): void {
    if (id !== 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'SETTINGS on a stream');
    if (flags & Flag.ACK) {
      if (payload.length !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'SETTINGS ACK with a payload');
      this.settingsAcked = true;
      return;
    }
    if (payload.length % 6 !== 0) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'SETTINGS length');
    let windowDelta = 0;
    for (let at = 0; at < payload.length; at += 6) {
      const key = payload.readUInt16BE(at);
      const value = payload.readUInt32BE(at + 2);
      switch (key) {
        case Setting.ENABLE_PUSH:
          if (value > 1) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'ENABLE_PUSH');
          break;
        case Setting.INITIAL_WINDOW_SIZE:
          if (value > MAX_WINDOW) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'INITIAL_WINDOW_SIZE');
          windowDelta += value - this.peerInitialWindow;
          this.peerInitialWindow = value;
          break;
        case Setting.MAX_FRAME_SIZE:
          if (value < DEFAULT_MAX_FRAME || value > 0xffffff) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'MAX_FRAME_SIZE');
          this.peerMaxFrame = value;
          break;
        default:
          break; // HEADER_TABLE_SIZE: our encoder uses no dynamic table; the others do not bind a server
      }
    }
    this.push(encodeFrame(FrameType.SETTINGS, Flag.ACK, 0));
    if (windowDelta !== 0) {
      for (const s of this.streams.values()) {
        s.sendWindow += windowDelta;
        if (s.sendWindow > MAX_WINDOW) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'stream window overflow');
      }
      if (windowDelta > 0) this.pumpAll();
    }
  }

  private onWindowUpdate(id: number, payload: Buffer): void {
    if (payload.length !== 4) throw new ConnectionError(ErrorCode.FRAME_SIZE_ERROR, 'WINDOW_UPDATE length');
    const inc = payload.readUInt32BE(0) & 0x7fffffff;
    if (id === 0) {
      if (inc === 0) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'WINDOW_UPDATE of 0');
      this.sendWindow += inc;
      if (this.sendWindow > MAX_WINDOW) throw new ConnectionError(ErrorCode.FLOW_CONTROL_ERROR, 'connection window overflow');
      this.pumpAll();
      return;
    }
    const s = this.streams.get(id);
    if (!s) {
      if (id > this.lastStreamId) throw new ConnectionError(ErrorCode.PROTOCOL_ERROR, 'WINDOW_UPDATE on an idle stream');
      return;
    }
    if (inc === 0) {
      this.rst(id, ErrorCode.PROTOCOL_ERROR);
      this.closeStream(s);
      return;
    }
    s.sendWindow += inc;
    if (s.sendWindow > MAX_WINDOW) {
      this.rst(id, ErrorCode.FLOW_CONTROL_ERROR);
      this.closeStream(s);
      return;
    }
    this.pump(s);
  }
}
