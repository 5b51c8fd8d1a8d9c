/**
 * Wire helpers for the gRPC layer's hot paths. The generated code calls asBuffer() (see scripts/gen-proto.sh)
 * so that decoding and serializing do not copy payloads; the hand-written codecs below encode the two
 * messages that carry bulk data (Read responses, Write requests) with a single allocation and one copy.
 */

import { extendIntoHeadroom, headroomOf } from '../content/headroom.js';
import { fromParts, subMsOf, type NanoTime } from '../core/time.js';

/** A Buffer view of the same memory (no copy). */
export function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

function putVarint(buf: Buffer, at: number, n: number): number {
  while (n >= 0x80) {
    buf[at++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[at++] = n;
  return at;
}

function putString(buf: Buffer, at: number, tag: number, s: string): number {
  if (!s) return at;
  buf[at++] = tag;
  at = putVarint(buf, at, Buffer.byteLength(s));
  return at + buf.write(s, at);
}

const stringFieldSize = (s: string) => (s ? 1 + varintSize(Buffer.byteLength(s)) + Buffer.byteLength(s) : 0);
const varintFieldSize = (n: number) => (n ? 1 + varintSize(n) : 0);

/**
 * containerd.services.content.v1.ReadContentResponse { int64 offset = 1; bytes data = 2; }
 * When the data was read into a buffer with headroom (src/content/headroom.ts), the header is written into
 * that headroom and the message is a view over header + data: no allocation, no copy.
 */
export function encodeReadContentResponse(m: { offset: number; data: Uint8Array }): Buffer {
  const len = m.data.byteLength;
  const header = varintFieldSize(m.offset) + (len ? 1 + varintSize(len) : 0);
  if (len > 0 && headroomOf(m.data) >= header) {
    const start = m.data.byteOffset - header;
    const out = Buffer.from(m.data.buffer, start, header + len);
    let at = 0;
    if (m.offset) {
      out[at++] = 0x08;
      at = putVarint(out, at, m.offset);
    }
    out[at++] = 0x12;
    putVarint(out, at, len);
    return extendIntoHeadroom(out, m.data, header);
  }
  const size = header + len;
  const buf = Buffer.allocUnsafe(size);
  let at = 0;
  if (m.offset) {
    buf[at++] = 0x08;
    at = putVarint(buf, at, m.offset);
  }
  if (len) {
    buf[at++] = 0x12;
    at = putVarint(buf, at, len);
    buf.set(m.data, at);
  }
  return buf;
}

/**
 * containerd.services.content.v1.WriteContentRequest { WriteAction action = 1; string ref = 2; int64 total = 3;
 * string expected = 4; int64 offset = 5; bytes data = 6; map<string, string> labels = 7; }
 */
export function encodeWriteContentRequest(m: {
  action: number;
  ref: string;
  total: number;
  expected: string;
  offset: number;
  data: Uint8Array;
  labels: Record<string, string>;
}): Buffer {
  const entries = Object.entries(m.labels ?? {}).map(([k, v]) => {
    const inner = stringFieldSize(k) + stringFieldSize(v);
    return { k, v, inner };
  });
  const len = m.data.byteLength;
  const size =
    varintFieldSize(m.action) +
    stringFieldSize(m.ref) +
    varintFieldSize(m.total) +
    stringFieldSize(m.expected) +
    varintFieldSize(m.offset) +
    (len ? 1 + varintSize(len) + len : 0) +
    entries.reduce((n, e) => n + 1 + varintSize(e.inner) + e.inner, 0);
  const buf = Buffer.allocUnsafe(size);
  let at = 0;
  if (m.action) {
    buf[at++] = 0x08;
    at = putVarint(buf, at, m.action);
  }
  at = putString(buf, at, 0x12, m.ref);
  if (m.total) {
    buf[at++] = 0x18;
    at = putVarint(buf, at, m.total);
  }
  at = putString(buf, at, 0x22, m.expected);
  if (m.offset) {
    buf[at++] = 0x28;
    at = putVarint(buf, at, m.offset);
  }
  if (len) {
    buf[at++] = 0x32;
    at = putVarint(buf, at, len);
    buf.set(m.data, at);
    at += len;
  }
  for (const e of entries) {
    buf[at++] = 0x3a;
    at = putVarint(buf, at, e.inner);
    at = putString(buf, at, 0x0a, e.k);
    at = putString(buf, at, 0x12, e.v);
  }
  return buf;
}

/**
 * google.protobuf.Timestamp <-> Date for the generated code (scripts/gen-proto.sh rewrites ts-proto's
 * toTimestamp/fromTimestamp into these): exact to the nanosecond through src/time's NanoTime, where ts-proto's
 * own conversion keeps milliseconds.
 */
export function dateToTimestamp(d: Date): { seconds: number; nanos: number } {
  const ms = d.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: (ms - seconds * 1000) * 1_000_000 + subMsOf(d) };
}

export function timestampToDate(t: { seconds: number; nanos: number }): NanoTime {
  const nanos = t.nanos || 0;
  return fromParts((t.seconds || 0) * 1000 + Math.floor(nanos / 1_000_000), nanos % 1_000_000);
}
