/**
 * The footer: an empty gzip member at the very end of the blob whose header's extra field (RFC 1952 2.3.1.1)
 * holds the TOC's offset as 16 hex digits followed by "STARGZ".
 *
 *   eStargz (51 bytes): extra = 'S' 'G' LEN(22, little-endian) "%016xSTARGZ"
 *   legacy stargz (47 bytes): extra = "%016xSTARGZ" with no subfield header
 *
 * Both are read; only the eStargz footer is written (byte for byte what Go's gzip writer gives at
 * NoCompression: no mtime, XFL 0, OS 255, one empty final stored block).
 */
import { gunzipSync } from 'node:zlib';
import { invalidArgument } from '../core/errdefs.js';
import { FOOTER_SIZE, LEGACY_FOOTER_SIZE } from './types.js';

const MAGIC = 'STARGZ';
const FEXTRA = 0x04;

const notEstargz = (why: string) => invalidArgument(`not an eStargz blob: ${why}`);

/** The offset in `extra` (22 bytes: 16 hex digits + STARGZ), or a reason it is not one. */
function offsetOf(extra: Buffer): number | string {
  if (extra.length !== 16 + MAGIC.length) return `footer extra field is ${extra.length} bytes`;
  if (extra.toString('latin1', 16) !== MAGIC) return 'no STARGZ magic in the footer';
  const hex = extra.toString('latin1', 0, 16);
  if (!/^[0-9a-fA-F]{16}$/.test(hex)) return 'the footer\'s TOC offset is not hexadecimal';
  const offset = Number.parseInt(hex, 16);
  if (!Number.isSafeInteger(offset)) return 'the footer\'s TOC offset is too large';
  return offset;
}

/** Parses one footer of exactly `size` bytes: the TOC offset, or why it is not a footer of that kind. */
function parseOne(f: Buffer, legacy: boolean): number | string {
  if (f[0] !== 0x1f || f[1] !== 0x8b || f[2] !== 8) return 'no gzip member at the footer';
  if (!(f[3]! & FEXTRA)) return 'the footer has no extra field';
  const xlen = f.readUInt16LE(10);
  let extra: Buffer;
  if (legacy) {
    if (xlen !== 16 + MAGIC.length) return `footer extra field is ${xlen} bytes`;
    extra = f.subarray(12, 12 + xlen);
  } else {
    if (xlen !== 4 + 16 + MAGIC.length) return `footer extra field is ${xlen} bytes`;
    if (f[12] !== 0x53 || f[13] !== 0x47) return 'the footer\'s subfield is not SG';
    if (f.readUInt16LE(14) !== 16 + MAGIC.length) return `footer subfield is ${f.readUInt16LE(14)} bytes`;
    extra = f.subarray(16, 16 + 16 + MAGIC.length);
  }
  const offset = offsetOf(extra);
  if (typeof offset === 'string') return offset;
  // The rest must be a well-formed empty gzip member (what Go's gzip reader would accept).
  try {
    if (gunzipSync(f).length !== 0) return 'the footer member is not empty';
  } catch {
    return 'the footer is not a valid gzip member';
  }
  return offset;
}

/**
 * The TOC's offset in the blob, from the blob's last bytes (at least 47; the eStargz footer is tried on the
 * last 51, then the legacy one on the last 47). Throws invalid argument 'not an eStargz blob: ...' otherwise.
 */
export function parseFooter(footer: Buffer): { tocOffset: number; legacy: boolean } {
  const reasons: string[] = [];
  if (footer.length >= FOOTER_SIZE) {
    const r = parseOne(footer.subarray(footer.length - FOOTER_SIZE), false);
    if (typeof r === 'number') return { tocOffset: r, legacy: false };
    reasons.push(r);
  }
  if (footer.length >= LEGACY_FOOTER_SIZE) {
    const r = parseOne(footer.subarray(footer.length - LEGACY_FOOTER_SIZE), true);
    if (typeof r === 'number') return { tocOffset: r, legacy: true };
    if (!reasons.includes(r)) reasons.push(`legacy: ${r}`);
  } else {
    reasons.push(`${footer.length} bytes is shorter than a footer`);
  }
  throw notEstargz(reasons.join('; '));
}

/** The 51-byte eStargz footer pointing at `tocOffset`. */
export function footerBytes(tocOffset: number): Buffer {
  if (!Number.isSafeInteger(tocOffset) || tocOffset < 0) throw invalidArgument(`invalid TOC offset ${tocOffset}`);
  const b = Buffer.alloc(FOOTER_SIZE);
  b[0] = 0x1f;
  b[1] = 0x8b;
  b[2] = 8; // deflate
  b[3] = FEXTRA;
  // mtime 0 (4..7), XFL 0 (8)
  b[9] = 255; // OS unknown, as Go writes
  b.writeUInt16LE(4 + 16 + MAGIC.length, 10);
  b[12] = 0x53; // 'S'
  b[13] = 0x47; // 'G'
  b.writeUInt16LE(16 + MAGIC.length, 14);
  b.write(tocOffset.toString(16).padStart(16, '0') + MAGIC, 16, 'latin1');
  // An empty final stored block: BFINAL=1 BTYPE=00, LEN 0, NLEN 0xffff.
  b.set([0x01, 0x00, 0x00, 0xff, 0xff], 38);
  // CRC32 and ISIZE of nothing: 0 (43..50).
  return b;
}
