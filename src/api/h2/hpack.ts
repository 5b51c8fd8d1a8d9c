/**
 * HPACK (RFC 7541) for the server side of Strata's HTTP/2 transport: a full decoder (static and dynamic table,
 * Huffman-coded strings, table size updates) for the request headers clients send, and a small encoder for
 * the few response headers gRPC answers carry (static-table indices and literals without indexing, so the
 * encoder keeps no dynamic table and a peer's SETTINGS_HEADER_TABLE_SIZE never concerns it).
 */
import { HUFFMAN_CODES, HUFFMAN_LENGTHS } from './huffman-table.js';

/** A header block that cannot be decoded: the connection ends with COMPRESSION_ERROR. */
export class HpackError extends Error {}

/** RFC 7541 Appendix A. */
export const STATIC_TABLE: readonly (readonly [string, string])[] = [
  [':authority', ''],
  [':method', 'GET'],
  [':method', 'POST'],
  [':path', '/'],
  [':path', '/index.html'],
  [':scheme', 'http'],
  [':scheme', 'https'],
  [':status', '200'],
  [':status', '204'],
  [':status', '206'],
  [':status', '304'],
  [':status', '400'],
  [':status', '404'],
  [':status', '500'],
  ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'],
  ['accept-language', ''],
  ['accept-ranges', ''],
  ['accept', ''],
  ['access-control-allow-origin', ''],
  ['age', ''],
  ['allow', ''],
  ['authorization', ''],
  ['cache-control', ''],
  ['content-disposition', ''],
  ['content-encoding', ''],
  ['content-language', ''],
  ['content-length', ''],
  ['content-location', ''],
  ['content-range', ''],
  ['content-type', ''],
  ['cookie', ''],
  ['date', ''],
  ['etag', ''],
  ['expect', ''],
  ['expires', ''],
  ['from', ''],
  ['host', ''],
  ['if-match', ''],
  ['if-modified-since', ''],
  ['if-none-match', ''],
  ['if-range', ''],
  ['if-unmodified-since', ''],
  ['last-modified', ''],
  ['link', ''],
  ['location', ''],
  ['max-forwards', ''],
  ['proxy-authenticate', ''],
  ['proxy-authorization', ''],
  ['range', ''],
  ['referer', ''],
  ['refresh', ''],
  ['retry-after', ''],
  ['server', ''],
  ['set-cookie', ''],
  ['strict-transport-security', ''],
  ['transfer-encoding', ''],
  ['user-agent', ''],
  ['vary', ''],
  ['via', ''],
  ['www-authenticate', ''],
];

// ---- Huffman decoding: a binary trie over the codes, walked 4 bits at a time through a precomputed table ----

/**
 * The decoding automaton: a state is a trie node (0 = root); for each state and nibble, the next state, the
 * symbol emitted on the way (or -1) and whether the walk is still on an all-ones path from the root (the only
 * legal padding). Built once from the code table.
 */
const NIBBLE_NEXT: Int32Array[] = [];
const NIBBLE_SYM: Int32Array[] = [];
const NIBBLE_FAIL: Uint8Array[] = [];
/** Whether a state is reached from the root by 1-bits only, and how many (padding must be 0-7 of them). */
const ONES_DEPTH: Int32Array = (() => {
  // Binary trie: children per node, symbol at leaves.
  const left: number[] = [-1];
  const right: number[] = [-1];
  const sym: number[] = [-1];
  const add = (code: number, len: number, s: number) => {
    let node = 0;
    for (let i = len - 1; i >= 0; i--) {
      const bit = (code >>> i) & 1;
      const arr = bit ? right : left;
      let next = arr[node]!;
      if (next < 0) {
        next = left.length;
        left.push(-1);
        right.push(-1);
        sym.push(-1);
        arr[node] = next;
      }
      node = next;
    }
    sym[node] = s;
  };
  for (let s = 0; s < 256; s++) add(HUFFMAN_CODES[s]!, HUFFMAN_LENGTHS[s]!, s);
  add(0x3fffffff, 30, 256); // EOS
  const internal: number[] = [];
  const stateOf = new Map<number, number>();
  for (let n = 0; n < left.length; n++) {
    if (sym[n] === -1) {
      stateOf.set(n, internal.length);
      internal.push(n);
    }
  }
  const ones = new Int32Array(internal.length).fill(-1);
  {
    let node = 0;
    let depth = 0;
    while (node >= 0 && sym[node] === -1) {
      ones[stateOf.get(node)!] = depth;
      node = right[node]!;
      depth++;
    }
  }
  for (let st = 0; st < internal.length; st++) {
    const next = new Int32Array(16);
    const out = new Int32Array(16).fill(-1);
    const fail = new Uint8Array(16);
    for (let nib = 0; nib < 16; nib++) {
      let node = internal[st]!;
      let emitted = -1;
      let bad = 0;
      for (let b = 3; b >= 0; b--) {
        const bit = (nib >>> b) & 1;
        node = bit ? right[node]! : left[node]!;
        if (node < 0) {
          bad = 1;
          break;
        }
        if (sym[node] !== -1) {
          if (sym[node] === 256 || emitted !== -1) {
            // EOS inside a string is an error; two symbols in one nibble cannot happen (codes are >= 5 bits).
            bad = 1;
            break;
          }
          emitted = sym[node]!;
          node = 0;
        }
      }
      next[nib] = bad ? 0 : stateOf.get(node)!;
      out[nib] = emitted;
      fail[nib] = bad;
    }
    NIBBLE_NEXT.push(next);
    NIBBLE_SYM.push(out);
    NIBBLE_FAIL.push(fail);
  }
  return ones;
})();

/** Decodes a Huffman-coded string (RFC 7541 5.2); throws HpackError on EOS, bad padding or an invalid code. */
export function huffmanDecode(src: Uint8Array, start = 0, end = src.length): string {
  const out = Buffer.allocUnsafe(((end - start) * 8) / 5 + 1);
  let n = 0;
  let state = 0;
  for (let i = start; i < end; i++) {
    const byte = src[i]!;
    let nib = byte >>> 4;
    for (let half = 0; half < 2; half++) {
      if (NIBBLE_FAIL[state]![nib]) throw new HpackError('invalid Huffman code');
      const s = NIBBLE_SYM[state]![nib]!;
      if (s >= 0) out[n++] = s;
      state = NIBBLE_NEXT[state]![nib]!;
      nib = byte & 15;
    }
  }
  const pad = ONES_DEPTH[state]!;
  if (pad < 0 || pad > 7) throw new HpackError('invalid Huffman padding');
  return out.toString('latin1', 0, n);
}

/** Huffman-encodes a string (used by tests; the encoder below sends plain literals). */
export function huffmanEncode(s: string): Buffer {
  const bytes = Buffer.from(s, 'latin1');
  const out: number[] = [];
  let acc = 0n;
  let bits = 0;
  for (const b of bytes) {
    acc = (acc << BigInt(HUFFMAN_LENGTHS[b]!)) | BigInt(HUFFMAN_CODES[b]!);
    bits += HUFFMAN_LENGTHS[b]!;
    while (bits >= 8) {
      bits -= 8;
      out.push(Number((acc >> BigInt(bits)) & 0xffn));
    }
    acc &= (1n << BigInt(bits)) - 1n;
  }
  if (bits > 0) out.push(Number(((acc << BigInt(8 - bits)) | ((1n << BigInt(8 - bits)) - 1n)) & 0xffn));
  return Buffer.from(out);
}

// ---- Decoder ----

/** Decoded headers: name -> value, or the values in order when a name repeats. */
export type HeaderMap = Record<string, string | string[]>;

export class HpackDecoder {
  /** Newest last: dynamic index 1 is the last element. */
  private readonly table: [string, string][] = [];
  private size = 0;
  /** The largest size the peer may set (our SETTINGS_HEADER_TABLE_SIZE). */
  private readonly limit: number;
  private maxSize: number;

  constructor(limit = 4096) {
    this.limit = limit;
    this.maxSize = limit;
  }

  /** Decodes one complete header block; `maxListSize` bounds the decoded size (name + value + 32 per field). */
  decode(block: Uint8Array, maxListSize = 1 << 20): HeaderMap {
    const headers: HeaderMap = Object.create(null) as HeaderMap;
    let listSize = 0;
    let pos = 0;
    let fieldsSeen = false;
    const len = block.length;
    const add = (name: string, value: string) => {
      fieldsSeen = true;
      listSize += name.length + value.length + 32;
      if (listSize > maxListSize) throw new HpackError('header list too large');
      const prev = headers[name];
      if (prev === undefined) headers[name] = value;
      else if (typeof prev === 'string') headers[name] = [prev, value];
      else prev.push(value);
    };
    // Integer with an n-bit prefix (RFC 7541 5.1), starting at block[pos].
    const int = (prefixBits: number): number => {
      const mask = (1 << prefixBits) - 1;
      let v = block[pos++]! & mask;
      if (v < mask) return v;
      let m = 0;
      for (;;) {
        if (pos >= len) throw new HpackError('truncated integer');
        const b = block[pos++]!;
        v += (b & 0x7f) * 2 ** m;
        m += 7;
        if (v > 0xffffffff) throw new HpackError('integer too large');
        if ((b & 0x80) === 0) return v;
      }
    };
    const str = (): string => {
      if (pos >= len) throw new HpackError('truncated string');
      const huff = (block[pos]! & 0x80) !== 0;
      const n = int(7);
      if (pos + n > len) throw new HpackError('truncated string');
      const s = huff ? huffmanDecode(block, pos, pos + n) : Buffer.from(block.buffer, block.byteOffset + pos, n).toString('latin1');
      pos += n;
      return s;
    };
    while (pos < len) {
      const b = block[pos]!;
      if (b & 0x80) {
        const [name, value] = this.entry(int(7));
        add(name, value);
      } else if (b & 0x40) {
        const idx = int(6);
        const name = idx === 0 ? str() : this.entry(idx)[0];
        const value = str();
        add(name, value);
        this.insert(name, value);
      } else if (b & 0x20) {
        // A dynamic table size update: only at the start of a block.
        if (fieldsSeen) throw new HpackError('table size update after a header field');
        const size = int(5);
        if (size > this.limit) throw new HpackError('table size update over the limit');
        this.maxSize = size;
        this.evict(0);
      } else {
        // Literal without indexing (0000) or never indexed (0001).
        const idx = int(4);
        const name = idx === 0 ? str() : this.entry(idx)[0];
        add(name, str());
      }
    }
    return headers;
  }

  private entry(index: number): readonly [string, string] {
    if (index === 0) throw new HpackError('index 0');
    if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1]!;
    const d = index - STATIC_TABLE.length;
    if (d > this.table.length) throw new HpackError(`index ${index} out of the table`);
    return this.table[this.table.length - d]!;
  }

  private insert(name: string, value: string): void {
    const size = name.length + value.length + 32;
    this.evict(size);
    if (size > this.maxSize) return; // larger than the table: the table is emptied and nothing added
    this.table.push([name, value]);
    this.size += size;
  }

  /** Evicts oldest entries until `room` more octets fit. */
  private evict(room: number): void {
    while (this.table.length > 0 && this.size + room > this.maxSize) {
      const [n, v] = this.table.shift()!;
      this.size -= n.length + v.length + 32;
    }
  }

  /** The dynamic table, newest first (for tests). */
  dynamicTable(): [string, string][] {
    return [...this.table].reverse();
  }

  tableSize(): number {
    return this.size;
  }
}

// ---- Encoder ----

function encodeInt(out: number[], value: number, prefixBits: number, first: number): void {
  const mask = (1 << prefixBits) - 1;
  if (value < mask) {
    out.push(first | value);
    return;
  }
  out.push(first | mask);
  value -= mask;
  while (value >= 128) {
    out.push((value & 0x7f) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
}

/** Static-table name index for a few names, for literals with an indexed name. */
const STATIC_NAME_INDEX = new Map<string, number>();
for (let i = STATIC_TABLE.length - 1; i >= 0; i--) STATIC_NAME_INDEX.set(STATIC_TABLE[i]![0], i + 1);
const STATIC_FULL_INDEX = new Map<string, number>();
for (let i = STATIC_TABLE.length - 1; i >= 0; i--) STATIC_FULL_INDEX.set(`${STATIC_TABLE[i]![0]}\0${STATIC_TABLE[i]![1]}`, i + 1);

/**
 * Encodes header fields without touching any dynamic table: a field in the static table as its index, else a
 * literal without indexing (the name by static index when it is there). Strings are sent as-is (no Huffman).
 */
export function encodeHeaders(fields: readonly (readonly [string, string])[]): Buffer {
  const out: number[] = [];
  for (const [name, value] of fields) {
    const full = STATIC_FULL_INDEX.get(`${name}\0${value}`);
    if (full !== undefined) {
      encodeInt(out, full, 7, 0x80);
      continue;
    }
    const nameIdx = STATIC_NAME_INDEX.get(name);
    if (nameIdx !== undefined) encodeInt(out, nameIdx, 4, 0x00);
    else {
      out.push(0x00);
      const n = Buffer.from(name, 'latin1');
      encodeInt(out, n.length, 7, 0x00);
      for (const b of n) out.push(b);
    }
    const v = Buffer.from(value, 'latin1');
    encodeInt(out, v.length, 7, 0x00);
    for (const b of v) out.push(b);
  }
  return Buffer.from(out);
}
