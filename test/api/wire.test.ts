/**
 * The hand-written encoders for the bulk-data messages must produce exactly what the generated encoders
 * produce (same bytes), so peers decoding them with containerd's own protos see the same messages.
 */
import { describe, expect, it } from 'vitest';
import { asBuffer, encodeReadContentResponse, encodeWriteContentRequest } from '../../src/api/wire.js';
import { allocWithHeadroom, shrinkWithHeadroom } from '../../src/content/headroom.js';
import { ReadContentResponse, WriteContentRequest } from '../../src/api/gen/containerd/services/content/v1/content.js';

const data = Buffer.from('payload '.repeat(3000));
const offsets = [0, 1, 127, 128, 16383, 16384, 2 ** 31, 2 ** 40 + 5, Number.MAX_SAFE_INTEGER];

describe('wire codecs', () => {
  it('encodes ReadContentResponse byte for byte like the generated code', () => {
    for (const offset of offsets) {
      for (const d of [data, Buffer.alloc(0)]) {
        expect(encodeReadContentResponse({ offset, data: d }).equals(Buffer.from(ReadContentResponse.encode({ offset, data: d }).finish()))).toBe(true);
      }
    }
  });

  it('frames data read with headroom in place: same bytes, same memory', () => {
    for (const offset of offsets) {
      const chunk = allocWithHeadroom(data.length);
      data.copy(chunk);
      const framed = encodeReadContentResponse({ offset, data: chunk });
      expect(framed.equals(Buffer.from(ReadContentResponse.encode({ offset, data }).finish()))).toBe(true);
      expect(framed.buffer).toBe(chunk.buffer);
      const short = shrinkWithHeadroom(chunk, 100);
      expect(encodeReadContentResponse({ offset, data: short }).buffer).toBe(chunk.buffer);
      // A plain subarray has no known headroom: it is copied, never written in front of.
      const plain = data.subarray(10);
      const before = Buffer.from(data.subarray(0, 10));
      encodeReadContentResponse({ offset, data: plain });
      expect(data.subarray(0, 10).equals(before)).toBe(true);
    }
  });

  it('encodes WriteContentRequest so that it decodes to the same message', () => {
    for (const offset of offsets) {
      const m = { action: 2, ref: 'réf/../x', total: offset, expected: 'sha256:' + 'a'.repeat(64), offset, data, labels: { a: 'b', 'ü.key': '', z: 'v'.repeat(300) } };
      const bytes = encodeWriteContentRequest(m);
      expect(bytes.equals(Buffer.from(WriteContentRequest.encode(m).finish()))).toBe(true);
      const back = WriteContentRequest.decode(bytes);
      expect({ ...back, data: back.data.toString() }).toEqual({ ...m, data: m.data.toString() });
    }
    const empty = { action: 0, ref: '', total: 0, expected: '', offset: 0, data: Buffer.alloc(0), labels: {} };
    expect(encodeWriteContentRequest(empty).length).toBe(0);
  });

  it('decodes bytes fields as views of the received buffer, not copies', () => {
    const bytes = encodeReadContentResponse({ offset: 5, data });
    const msg = ReadContentResponse.decode(bytes);
    expect(msg.data.buffer).toBe(bytes.buffer);
    expect(asBuffer(new Uint8Array(bytes.buffer, 3, 4)).buffer).toBe(bytes.buffer);
  });
});
