/**
 * HPACK of Strata's HTTP/2 transport against RFC 7541 Appendix C: the request examples without and with
 * Huffman coding (C.3, C.4) and the response examples with a 256-octet table that evicts (C.5, C.6), decoded
 * in sequence on one decoder, with the dynamic table checked after each block; then what the encoder emits
 * decodes back, and malformed blocks are refused.
 */
import { describe, expect, it } from 'vitest';
import { HpackDecoder, HpackError, encodeHeaders, huffmanDecode, huffmanEncode } from '../../src/api/h2/hpack.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

interface Step {
  block: string;
  headers: [string, string][];
  table: [string, string][];
  size: number;
}

function run(steps: Step[], limit = 4096): void {
  const d = new HpackDecoder(limit);
  for (const step of steps) {
    const got = d.decode(hex(step.block));
    const flat: [string, string][] = [];
    for (const [k, v] of Object.entries(got)) for (const one of Array.isArray(v) ? v : [v]) flat.push([k, one]);
    expect(flat).toEqual(step.headers);
    expect(d.dynamicTable()).toEqual(step.table);
    expect(d.tableSize()).toBe(step.size);
  }
}

const REQ1: [string, string][] = [
  [':method', 'GET'],
  [':scheme', 'http'],
  [':path', '/'],
  [':authority', 'www.example.com'],
];
const REQ2: [string, string][] = [...REQ1, ['cache-control', 'no-cache']];
const REQ3: [string, string][] = [
  [':method', 'GET'],
  [':scheme', 'https'],
  [':path', '/index.html'],
  [':authority', 'www.example.com'],
  ['custom-key', 'custom-value'],
];
const REQ_TABLES: [string, string][][] = [
  [[':authority', 'www.example.com']],
  [
    ['cache-control', 'no-cache'],
    [':authority', 'www.example.com'],
  ],
  [
    ['custom-key', 'custom-value'],
    ['cache-control', 'no-cache'],
    [':authority', 'www.example.com'],
  ],
];

const RESP1: [string, string][] = [
  [':status', '302'],
  ['cache-control', 'private'],
  ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
  ['location', 'https://www.example.com'],
];
const RESP2: [string, string][] = [[':status', '307'], ...RESP1.slice(1)];
const RESP3: [string, string][] = [
  [':status', '200'],
  ['cache-control', 'private'],
  ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'],
  ['location', 'https://www.example.com'],
  ['content-encoding', 'gzip'],
  ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'],
];
const RESP_TABLES: [string, string][][] = [
  [
    ['location', 'https://www.example.com'],
    ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
    ['cache-control', 'private'],
    [':status', '302'],
  ],
  [
    [':status', '307'],
    ['location', 'https://www.example.com'],
    ['date', 'Mon, 21 Oct 2013 20:13:21 GMT'],
    ['cache-control', 'private'],
  ],
  [
    ['set-cookie', 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1'],
    ['content-encoding', 'gzip'],
    ['date', 'Mon, 21 Oct 2013 20:13:22 GMT'],
  ],
];

describe('HPACK decoding (RFC 7541 Appendix C)', () => {
  it('decodes the request examples without Huffman coding (C.3) and keeps the dynamic table as the RFC shows it', () => {
    run([
      { block: '8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d', headers: REQ1, table: REQ_TABLES[0]!, size: 57 },
      { block: '8286 84be 5808 6e6f 2d63 6163 6865', headers: REQ2, table: REQ_TABLES[1]!, size: 110 },
      { block: '8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65', headers: REQ3, table: REQ_TABLES[2]!, size: 164 },
    ]);
  });

  it('decodes the request examples with Huffman coding (C.4)', () => {
    run([
      { block: '8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff', headers: REQ1, table: REQ_TABLES[0]!, size: 57 },
      { block: '8286 84be 5886 a8eb 1064 9cbf', headers: REQ2, table: REQ_TABLES[1]!, size: 110 },
      { block: '8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf', headers: REQ3, table: REQ_TABLES[2]!, size: 164 },
    ]);
  });

  it('decodes the response examples without Huffman coding with a 256-octet table that evicts (C.5)', () => {
    run(
      [
        {
          block:
            '4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d',
          headers: RESP1,
          table: RESP_TABLES[0]!,
          size: 222,
        },
        { block: '4803 3330 37c1 c0bf', headers: RESP2, table: RESP_TABLES[1]!, size: 222 },
        {
          block:
            '88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31',
          headers: RESP3,
          table: RESP_TABLES[2]!,
          size: 215,
        },
      ],
      256,
    );
  });

  it('decodes the response examples with Huffman coding and eviction (C.6)', () => {
    run(
      [
        {
          block:
            '4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3',
          headers: RESP1,
          table: RESP_TABLES[0]!,
          size: 222,
        },
        { block: '4883 640e ffc1 c0bf', headers: RESP2, table: RESP_TABLES[1]!, size: 222 },
        {
          block:
            '88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07',
          headers: RESP3,
          table: RESP_TABLES[2]!,
          size: 215,
        },
      ],
      256,
    );
  });

  it('Huffman-decodes every byte value, alone and in a run, as it was encoded', () => {
    for (let b = 0; b < 256; b++) {
      const s = String.fromCharCode(b);
      expect(huffmanDecode(huffmanEncode(s))).toBe(s);
    }
    const all = Array.from({ length: 256 }, (_, i) => String.fromCharCode(i)).join('');
    expect(huffmanDecode(huffmanEncode(all + all))).toBe(all + all);
  });

  it('refuses Huffman strings with EOS, padding longer than 7 bits or padding that is not all ones', () => {
    expect(() => huffmanDecode(Buffer.from([0xff, 0xff, 0xff, 0xff]))).toThrow(HpackError); // EOS (30 ones)
    expect(() => huffmanDecode(Buffer.from([0xff]))).toThrow(HpackError); // 8 bits of padding
    // 'a' is 00011 (5 bits): padded with 000 instead of 111.
    expect(() => huffmanDecode(Buffer.from([0b00011000]))).toThrow(HpackError);
    expect(huffmanDecode(Buffer.from([0b00011111]))).toBe('a');
  });

  it('refuses an index past the tables, a truncated block and a table size update over the limit', () => {
    expect(() => new HpackDecoder().decode(Buffer.from([0xbe]))).toThrow(HpackError); // index 62, empty dynamic table
    expect(() => new HpackDecoder().decode(Buffer.from([0x80]))).toThrow(HpackError); // index 0
    expect(() => new HpackDecoder().decode(Buffer.from([0x40, 0x05, 0x61]))).toThrow(HpackError); // name cut short
    expect(() => new HpackDecoder(4096).decode(Buffer.from([0x3f, 0xe2, 0x1f]))).toThrow(HpackError); // size 4097
    expect(() => new HpackDecoder().decode(Buffer.from([0x82, 0x20]))).toThrow(HpackError); // update after a field
  });

  it("what the encoder writes decodes back and leaves the peer's dynamic table empty", () => {
    const fields: [string, string][] = [
      [':status', '200'],
      ['content-type', 'application/grpc'],
      ['grpc-status', '5'],
      ['grpc-message', 'x'.repeat(300)],
    ];
    const d = new HpackDecoder();
    const got = d.decode(encodeHeaders(fields));
    expect(Object.entries(got)).toEqual(fields);
    expect(d.dynamicTable()).toEqual([]);
  });
});
