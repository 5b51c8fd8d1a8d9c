/**
 * Fuzzing the gRPC decoders: every method of every service definition generated in src/api/gen, random and
 * malformed request bodies (reproducible from a seed), and a raw HTTP/2 client that sends them as they are.
 * Used by test/fuzz/grpc.test.ts (a bounded number per method) and bench/fuzz.ts (the long run).
 *
 * What a body may be (the 5-byte gRPC prefix is written here, so it can lie too):
 *   random bytes; a random protobuf message (random field numbers and wire types, varints up to 10 bytes and
 *   overlong ones, nested messages, strings, lengths that overrun); such a message truncated; an empty
 *   message; no message at all; two messages on a unary call; a prefix declaring more than is sent, or more
 *   than the server accepts (4 GiB); the compressed flag; a prefix cut short; garbage before the prefix.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Rng } from './tar-gen.js';

export interface FuzzMethod {
  /** e.g. /containerd.services.content.v1.Content/Write */
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize?: (v: unknown) => Uint8Array;
  requestDeserialize?: (b: Buffer) => unknown;
}

/**
 * Every method of every service definition generated in `genDir` (src/api/gen under vitest, dist/src/api/gen
 * compiled): each export named *Service whose members have a gRPC `path`.
 */
export async function generatedMethods(genDir: string): Promise<FuzzMethod[]> {
  const files: string[] = [];
  const walk = (d: string) => {
    for (const n of readdirSync(d)) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p);
      else if (/\.(ts|js)$/.test(n) && !n.endsWith('.d.ts') && /export const \w+Service = \{/.test(readFileSync(p, 'utf8'))) files.push(p);
    }
  };
  walk(genDir);
  const out: FuzzMethod[] = [];
  for (const f of files.sort()) {
    const mod = (await import(pathToFileURL(f).href)) as Record<string, unknown>;
    for (const [name, v] of Object.entries(mod)) {
      if (!name.endsWith('Service') || typeof v !== 'object' || v === null) continue;
      for (const m of Object.values(v as Record<string, Partial<FuzzMethod>>)) {
        if (typeof m?.path === 'string') {
          out.push({
            path: m.path,
            requestStream: !!m.requestStream,
            responseStream: !!m.responseStream,
            ...(m.requestSerialize ? { requestSerialize: m.requestSerialize } : {}),
            ...(m.requestDeserialize ? { requestDeserialize: m.requestDeserialize } : {}),
          });
        }
      }
    }
  }
  return out;
}

function varint(n: bigint): Buffer {
  const out: number[] = [];
  let v = BigInt.asUintN(64, n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return Buffer.from(out);
}

const PRINTABLE = 'abcdefgXYZ0189-_./:@ %\u00e9\u65e5';

function randomString(r: Rng): string {
  return r.weighted<() => string>([
    [6, () => Array.from({ length: r.range(0, 24) }, () => PRINTABLE[r.int(PRINTABLE.length)]).join('')],
    [2, () => r.pick(['', 'default', 'fuzz', '..', '../../etc/passwd', '/etc/passwd', 'sha256:', `sha256:${'0'.repeat(64)}`, 'a'.repeat(300), 'containerd.io/gc.root', 'overlayfs', 'native', 'Bad Ref!!', 'x\u0000y'])],
    [1, () => r.bytes(r.range(1, 40)).toString('latin1')],
  ])();
}

/** A random protobuf message: valid wire format mostly, with lies sprinkled in. */
export function randomMessage(r: Rng, depth = 0): Buffer {
  const parts: Buffer[] = [];
  const n = r.range(0, depth === 0 ? 8 : 4);
  for (let i = 0; i < n; i++) {
    const field = r.weighted([
      [12, r.range(1, 12)],
      [1, r.range(13, 3000)],
      [1, r.range(1, 2 ** 29 - 1)],
      [1, 0],
    ]);
    const wt = r.weighted([
      [5, 0],
      [1, 1],
      [8, 2],
      [1, 5],
      [1, r.pick([3, 4, 6, 7])],
    ]);
    parts.push(varint(BigInt(field) * 8n + BigInt(wt)));
    switch (wt) {
      case 0:
        parts.push(
          r.weighted<() => Buffer>([
            [6, () => varint(BigInt(r.int(300)))],
            [3, () => varint(BigInt(r.u32()) * BigInt(r.u32()))],
            [1, () => varint(-1n)],
            [1, () => Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])], // 11 bytes
          ])(),
        );
        break;
      case 1:
        parts.push(r.bytes(8));
        break;
      case 5:
        parts.push(r.bytes(4));
        break;
      case 2: {
        const payload = r.weighted<() => Buffer>([
          [6, () => Buffer.from(randomString(r))],
          [3, () => (depth < 3 ? randomMessage(r, depth + 1) : r.bytes(r.range(0, 20)))],
          // A map entry: {1: key, 2: value}.
          [2, () => Buffer.concat([Buffer.from([0x0a]), varint(BigInt(4)), Buffer.from(randomString(r).slice(0, 4).padEnd(4, 'k')), Buffer.from([0x12]), varint(3n), Buffer.from('val')])],
          [2, () => r.bytes(r.range(0, 64))],
        ])();
        const declared = r.chance(0.05) ? payload.length + r.range(1, 1000) : payload.length;
        parts.push(varint(BigInt(declared)), payload);
        break;
      }
      default:
        parts.push(r.bytes(r.range(0, 8)));
    }
  }
  return Buffer.concat(parts);
}

/**
 * A well-typed request with random values: the method's own request type, its fields found by decoding an empty
 * message (ts-proto gives every scalar, list and map its default), filled at random and encoded. These get past
 * the decoder into the handlers.
 */
export function schemaMessage(r: Rng, m: FuzzMethod): Buffer | undefined {
  if (!m.requestDeserialize || !m.requestSerialize) return undefined;
  const fill = (base: Record<string, unknown>, depth: number): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(base)) {
      if (r.chance(0.2)) continue;
      if (typeof v === 'string') out[k] = randomString(r);
      else if (typeof v === 'number') out[k] = r.weighted([[5, r.int(10)], [2, r.u32()], [1, -1], [1, 2 ** 53 - 1], [1, -(2 ** 31)]]);
      else if (typeof v === 'boolean') out[k] = r.chance(0.5);
      else if (Array.isArray(v)) out[k] = Array.from({ length: r.range(0, 3) }, () => randomString(r));
      else if (v instanceof Uint8Array) out[k] = r.bytes(r.range(0, 64));
      else if (v instanceof Date) out[k] = new Date(r.int(2 ** 31) * 1000);
      else if (v && typeof v === 'object' && depth < 2) {
        // A map (string to string in containerd's API: labels, annotations).
        out[k] = Object.fromEntries(Array.from({ length: r.range(0, 3) }, () => [randomString(r), randomString(r)]));
      } else if (v === undefined && depth < 2) {
        // A message field (its type is not known here): the names containerd's messages use, which its encoder
        // picks up where they exist and ignores elsewhere.
        out[k] = common(depth);
      }
    }
    return out;
  };
  const common = (depth: number): Record<string, unknown> => {
    const o: Record<string, unknown> = {};
    for (const f of ['name', 'id', 'key', 'parent', 'digest', 'mediaType', 'ref', 'namespace', 'snapshotter', 'image', 'topic', 'typeUrl', 'kind', 'path']) {
      if (r.chance(0.5)) o[f] = randomString(r);
    }
    if (r.chance(0.5)) o.size = r.pick([0, 1, 2 ** 40, -1]);
    if (r.chance(0.4)) o.labels = Object.fromEntries(Array.from({ length: r.range(0, 3) }, () => [randomString(r), randomString(r)]));
    if (r.chance(0.3)) o.value = r.bytes(r.range(0, 32));
    if (depth < 1 && r.chance(0.4)) o.target = common(depth + 1);
    return o;
  };
  try {
    const base = m.requestDeserialize(Buffer.alloc(0)) as Record<string, unknown>;
    return Buffer.from(m.requestSerialize({ ...base, ...fill(base, 0) }));
  } catch {
    return undefined; // a field of a type this does not fill (an array of messages): the caller falls back
  }
}

function prefix(len: number, compressed = false): Buffer {
  const b = Buffer.alloc(5);
  b[0] = compressed ? 1 : 0;
  b.writeUInt32BE(len >>> 0, 1);
  return b;
}

const framed = (msg: Buffer) => Buffer.concat([prefix(msg.length), msg]);

export interface FuzzBody {
  what: string;
  body: Buffer;
}

/** The request body of case `seed` for a method (streaming methods get several messages). */
export function fuzzBody(seed: number, m: FuzzMethod): FuzzBody {
  const r = new Rng(seed);
  const kind = r.weighted([
    [12, 'schema'],
    [10, 'message'],
    [5, 'random'],
    [3, 'truncated'],
    [2, 'empty'],
    [1, 'none'],
    [2, 'two'],
    [2, 'overdeclared'],
    [1, 'oversized'],
    [1, 'compressed'],
    [1, 'short-prefix'],
    [1, 'garbage-prefix'],
    [2, 'stream'],
  ] as const);
  switch (kind) {
    case 'schema': {
      const n = m.requestStream ? r.range(1, 6) : 1;
      const msgs = Array.from({ length: n }, () => schemaMessage(r, m) ?? randomMessage(r));
      return { what: `schema x${n}`, body: Buffer.concat(msgs.map(framed)) };
    }
    case 'message':
      return { what: kind, body: framed(randomMessage(r)) };
    case 'random':
      return { what: kind, body: framed(r.bytes(r.weighted([[5, r.range(1, 64)], [2, r.range(64, 4096)], [1, r.range(4096, 200_000)]]))) };
    case 'truncated': {
      const msg = randomMessage(r);
      return { what: kind, body: framed(msg.subarray(0, r.int(msg.length + 1))) };
    }
    case 'empty':
      return { what: kind, body: framed(Buffer.alloc(0)) };
    case 'none':
      return { what: kind, body: Buffer.alloc(0) };
    case 'two':
      return { what: kind, body: Buffer.concat([framed(randomMessage(r)), framed(randomMessage(r))]) };
    case 'overdeclared': {
      const msg = randomMessage(r);
      return { what: kind, body: Buffer.concat([prefix(msg.length + r.range(1, 100_000)), msg]) };
    }
    case 'oversized':
      return { what: kind, body: Buffer.concat([prefix(r.pick([0xffffffff, 0x80000000, (16 << 20) + 1])), r.bytes(r.range(0, 100))]) };
    case 'compressed': {
      const msg = randomMessage(r);
      return { what: kind, body: Buffer.concat([prefix(msg.length, true), msg]) };
    }
    case 'short-prefix':
      return { what: kind, body: r.bytes(r.range(1, 4)) };
    case 'garbage-prefix':
      return { what: kind, body: Buffer.concat([Buffer.from([r.range(2, 255)]), r.bytes(r.range(4, 40))]) };
    case 'stream': {
      const n = m.requestStream ? r.range(2, 20) : 1;
      return { what: `${kind} of ${n}`, body: Buffer.concat(Array.from({ length: n }, () => framed(randomMessage(r)))) };
    }
  }
}

export interface CallOutcome {
  /** grpc-status, or undefined when the call ended without one (reset, connection lost, client timeout). */
  code?: number;
  message: string;
  /** How it ended without a status. */
  failure?: string;
  bytes: number;
}

/** A raw HTTP/2 connection to a gRPC unix socket. */
export class RawGrpc {
  private constructor(readonly session: http2.ClientHttp2Session) {}

  static connect(socket: string): Promise<RawGrpc> {
    return new Promise((resolve, reject) => {
      // Node's default session memory (10 MB) is less than one oversized request: the client itself would
      // give up with ENHANCE_YOUR_CALM. grpc-js lifts it the same way.
      const session = http2.connect('http://localhost', { createConnection: () => net.connect(socket), maxSessionMemory: Number.MAX_SAFE_INTEGER });
      session.once('connect', () => resolve(new RawGrpc(session)));
      session.once('error', reject);
    });
  }

  /** Sends `body` as the request of `path` and waits for the status (at most `clientTimeoutMs`). */
  call(path: string, body: Buffer, headers: Record<string, string>, clientTimeoutMs = 15_000): Promise<CallOutcome> {
    return new Promise((resolve) => {
      const out: CallOutcome = { message: '', bytes: 0 };
      let done = false;
      const finish = (failure?: string) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (failure && out.code === undefined) out.failure = failure;
        resolve(out);
      };
      const read = (h: http2.IncomingHttpHeaders) => {
        if (h['grpc-status'] !== undefined) {
          out.code = Number(h['grpc-status']);
          out.message = decodeMessage(String(h['grpc-message'] ?? ''));
        }
      };
      let req: http2.ClientHttp2Stream;
      try {
        req = this.session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
      } catch (err) {
        resolve({ message: '', bytes: 0, failure: `request: ${String(err)}` });
        return;
      }
      const timer = setTimeout(() => {
        req.close(http2.constants.NGHTTP2_CANCEL);
        finish('client timeout');
      }, clientTimeoutMs);
      req.on('response', read);
      req.on('trailers', read);
      req.on('data', (c: Buffer) => (out.bytes += c.length));
      req.on('error', (err) => finish(`stream error: ${err.message}`));
      req.on('close', () => finish(out.code === undefined ? `closed without a status (rst ${req.rstCode})` : undefined));
      req.end(body);
    });
  }

  close(): void {
    this.session.close();
  }
}

function decodeMessage(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The headers of case `seed`: mostly a namespace, sometimes none or an invalid one; a deadline always. */
export function fuzzHeaders(seed: number): Record<string, string> {
  const r = new Rng(seed ^ 0x4eade5);
  const ns = r.weighted([
    [8, 'fuzz'],
    [1, ''],
    [1, r.pick(['Bad NS!', '-x', 'a'.repeat(80), '..'])],
  ]);
  return { ...(ns ? { 'containerd-namespace': ns } : {}), 'grpc-timeout': '3S' };
}

/** Valid gRPC status codes. */
const CODES = new Set(Array.from({ length: 17 }, (_, i) => i));

/** What a message must not show: JavaScript's own errors leaking out of a handler. */
const JS_INTERNALS = /TypeError|RangeError|ReferenceError|SyntaxError|Cannot read prop|is not a function|is not iterable|Maximum call stack|ERR_[A-Z_]+|at [\w.<>]+ \(/;

/** The problems with one call's outcome: no status, a code out of range, a host path or JS internals in its message. */
export function checkOutcome(out: CallOutcome, hostPaths: string[]): string[] {
  const problems: string[] = [];
  if (out.code === undefined) return [`no status: ${out.failure ?? '?'}`];
  if (!CODES.has(out.code)) problems.push(`status ${out.code} is not a gRPC code`);
  for (const p of hostPaths) if (out.message.includes(p)) problems.push(`host path in the message: ${out.message.slice(0, 300)}`);
  if (JS_INTERNALS.test(out.message)) problems.push(`internals in the message (${out.code}): ${out.message.slice(0, 300)}`);
  // INTERNAL only for what does not decode, as grpc-go answers it ("grpc: error unmarshalling request").
  if (out.code === 13 && !out.message.startsWith('error deserializing request')) problems.push(`INTERNAL: ${out.message.slice(0, 300)}`);
  if (out.message.length > 4096) problems.push(`a message of ${out.message.length} characters`);
  return problems;
}

/** Lines of the daemon's JSON log at level error or above (a call that failed unexpectedly logs one, with its stack). */
export function unexpectedLogLines(logs: string, hostPaths: string[]): string[] {
  const out: string[] = [];
  for (const line of logs.split('\n')) {
    if (!line.startsWith('{')) {
      if (line.trim() && !/^\s*$/.test(line)) out.push(`not a log line: ${line.slice(0, 300)}`);
      continue;
    }
    let rec: { level?: string; msg?: string };
    try {
      rec = JSON.parse(line) as { level?: string; msg?: string };
    } catch {
      out.push(`unparsable: ${line.slice(0, 300)}`);
      continue;
    }
    if (rec.level === 'error' || rec.level === 'fatal') {
      let shown = line;
      for (const p of hostPaths) shown = shown.split(p).join('<dir>');
      out.push(shown.slice(0, 800));
    }
  }
  return out;
}
