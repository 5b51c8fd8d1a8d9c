/**
 * The layer tar format, read and written in one place: the header layout (ustar fields at fixed offsets, PAX
 * extended headers) is defined once here and used by both sides.
 *
 * Reading: a synchronous, push-style parser. Feed it chunks as they arrive, it calls back for each entry
 * header, each piece of entry data and each entry's end. No stream machinery and no promise per entry: a layer
 * of 50k small files is parsed in a few milliseconds of CPU, which is what lets the applier keep up with GNU tar.
 * Formats: ustar (name prefix), GNU (long names 'L', long link names 'K', base-256 numbers) and PAX
 * (per-entry 'x' records: path, linkpath, size, uid, gid, mtime, atime, SCHILY.xattr.*; global 'g' records
 * are read and ignored, as containerd does). Sparse files and multi-volume archives are refused.
 * A bad header checksum is an error (a corrupt or truncated layer must never apply as a short success).
 *
 * Writing: `encodeHeader` gives the header block(s) of one entry, as Go's archive/tar does in its PAX format:
 * ustar fields, with PAX records (path, linkpath, uid, gid, size, mtime, SCHILY.xattr.*) for what does not
 * fit. Headers are written here rather than with tar-stream's pack, which cannot carry binary PAX values and
 * silently clamps uid/gid above 2^18. (Image archives, docker save and OCI layouts, go through tar-stream in
 * src/images/archive: they hold only regular files with small headers.)
 */
import { invalidArgument, notImplemented } from '../core/errdefs.js';
import { limitError } from './limits.js';

export type EntryType = 'file' | 'link' | 'symlink' | 'character-device' | 'block-device' | 'directory' | 'fifo';

export interface TarHeader {
  name: string;
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch, with a fraction when PAX gives one. */
  mtime: number;
  atime?: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes (PAX SCHILY.xattr.*), values as raw bytes. */
  xattrs: [string, Buffer][];
}

export interface TarHandler {
  header(h: TarHeader): void;
  data(chunk: Buffer): void;
  endEntry(): void;
}

/** Tar's unit: headers are one block, entry data is padded to a whole number of blocks. */
const BLOCK = 512;
/**
 * Largest PAX or GNU long-name payload accepted when the parser is given no max_pax_header_size (names are at
 * most a few KiB in practice).
 */
const MAX_META = 1 << 20;

export interface TarParserOptions {
  /**
   * Bytes of the extended headers ('x', 'g', 'L', 'K') in front of one entry, together (the differ's
   * max_pax_header_size, ./limits.ts); 0: no limit. Unset: each one at most 1 MiB.
   */
  maxPaxHeaderSize?: number;
}

/** The ustar header fields: [offset, length] in the header block. */
const F = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  checksum: [148, 8],
  typeflag: [156, 1],
  linkname: [157, 100],
  magic: [257, 8],
  devmajor: [329, 8],
  devminor: [337, 8],
  prefix: [345, 155],
} as const;

/** PAX record key prefix of an extended attribute (the rest of the key is the xattr's name). */
export const PAX_XATTR = 'SCHILY.xattr.';

/** Padding after `size` bytes of entry data, up to the next block. */
export const padding = (size: number) => (BLOCK - (size % BLOCK)) % BLOCK;

const typeFlags: Record<string, EntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'link',
  '2': 'symlink',
  '3': 'character-device',
  '4': 'block-device',
  '5': 'directory',
  '6': 'fifo',
};

function cstring(buf: Buffer, start: number, len: number): string {
  let end = start;
  const max = start + len;
  while (end < max && buf[end] !== 0) end++;
  return buf.toString('utf8', start, end);
}

function numeric(buf: Buffer, start: number, len: number, field: string): number {
  // Base-256 (GNU): high bit of the first byte set; the rest is a big-endian two's complement number.
  if (buf[start]! & 0x80) {
    let v = buf[start]! & 0x7f;
    if (v & 0x40) throw invalidArgument(`invalid tar header: negative ${field}`);
    for (let i = start + 1; i < start + len; i++) v = v * 256 + buf[i]!;
    if (!Number.isSafeInteger(v)) throw invalidArgument(`invalid tar header: ${field} too large`);
    return v;
  }
  // Octal digits, possibly padded with spaces or NULs on either side (parsed by hand: this runs 8 times per entry).
  let i = start;
  const end = start + len;
  while (i < end && (buf[i] === 0x20 || buf[i] === 0)) i++;
  let v = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = buf[i]!;
    if (c === 0x20 || c === 0) break;
    if (c < 0x30 || c > 0x37) throw invalidArgument(`invalid tar header: ${field} is not octal`);
    v = v * 8 + (c - 0x30);
    digits++;
  }
  for (; i < end; i++) {
    if (buf[i] !== 0x20 && buf[i] !== 0) throw invalidArgument(`invalid tar header: ${field} is not octal`);
  }
  return digits === 0 ? 0 : v;
}

function checksumOk(block: Buffer): boolean {
  const stored = numeric(block, F.checksum[0], F.checksum[1], 'checksum');
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= F.checksum[0] && i < F.checksum[0] + F.checksum[1] ? 0x20 : block[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

function isZero(block: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

interface Pax {
  path?: string;
  linkpath?: string;
  size?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  atime?: number;
  xattrs: [string, Buffer][];
}

/** Parses PAX records ("<len> <key>=<value>\n"); values stay bytes for xattrs. */
function parsePax(buf: Buffer, into: Pax): void {
  let pos = 0;
  while (pos < buf.length) {
    const space = buf.indexOf(0x20, pos);
    if (space < 0) break;
    const len = Number.parseInt(buf.toString('latin1', pos, space), 10);
    if (!Number.isSafeInteger(len) || len <= 0 || pos + len > buf.length) throw invalidArgument('invalid tar header: bad PAX record');
    const rec = buf.subarray(space + 1, pos + len - 1); // without the trailing newline
    pos += len;
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw invalidArgument('invalid tar header: bad PAX record');
    const key = rec.toString('utf8', 0, eq);
    const raw = rec.subarray(eq + 1);
    const value = () => raw.toString('utf8');
    const num = (what: string) => {
      const n = Number(value());
      if (!Number.isFinite(n) || n < 0) throw invalidArgument(`invalid tar header: PAX ${what} ${JSON.stringify(value())}`);
      return n;
    };
    if (key === 'path') into.path = value();
    else if (key === 'linkpath') into.linkpath = value();
    else if (key === 'size') into.size = num('size');
    else if (key === 'uid') into.uid = num('uid');
    else if (key === 'gid') into.gid = num('gid');
    else if (key === 'mtime') into.mtime = num('mtime');
    else if (key === 'atime') into.atime = num('atime');
    else if (key.startsWith(PAX_XATTR)) into.xattrs.push([key.slice(PAX_XATTR.length), Buffer.from(raw)]);
    else if (key.startsWith('GNU.sparse.')) throw notImplemented('sparse files in layers are not supported');
  }
}

type State = 'header' | 'data' | 'meta' | 'padding' | 'end';

export class TarParser {
  private state: State = 'header';
  private block = Buffer.alloc(BLOCK);
  private blockFill = 0;
  /** Bytes of entry data (or metadata payload) still to come, then padding. */
  private remaining = 0;
  private padding = 0;
  private meta: Buffer[] = [];
  private metaKind: 'x' | 'g' | 'L' | 'K' = 'x';
  private pax: Pax = { xattrs: [] };
  private longName?: string;
  private longLink?: string;
  private zeroBlocks = 0;
  /** Bytes of extended headers read since the last entry (for max_pax_header_size). */
  private metaBytes = 0;

  constructor(
    private readonly handler: TarHandler,
    private readonly options: TarParserOptions = {},
  ) {}

  /** True once the end-of-archive marker was read (the rest of the stream is ignored). */
  get ended(): boolean {
    return this.state === 'end';
  }

  push(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length && this.state !== 'end') {
      switch (this.state) {
        case 'header': {
          const n = Math.min(BLOCK - this.blockFill, chunk.length - pos);
          chunk.copy(this.block, this.blockFill, pos, pos + n);
          this.blockFill += n;
          pos += n;
          if (this.blockFill === BLOCK) {
            this.blockFill = 0;
            this.onHeader(this.block);
          }
          break;
        }
        case 'data': {
          const n = Math.min(this.remaining, chunk.length - pos);
          if (n > 0) this.handler.data(chunk.subarray(pos, pos + n));
          this.remaining -= n;
          pos += n;
          if (this.remaining === 0) {
            this.handler.endEntry();
            this.state = this.padding > 0 ? 'padding' : 'header';
          }
          break;
        }
        case 'meta': {
          const n = Math.min(this.remaining, chunk.length - pos);
          this.meta.push(Buffer.from(chunk.subarray(pos, pos + n)));
          this.remaining -= n;
          pos += n;
          if (this.remaining === 0) {
            this.onMeta(Buffer.concat(this.meta));
            this.meta = [];
            this.state = this.padding > 0 ? 'padding' : 'header';
          }
          break;
        }
        case 'padding': {
          const n = Math.min(this.padding, chunk.length - pos);
          this.padding -= n;
          pos += n;
          if (this.padding === 0) this.state = 'header';
          break;
        }
      }
    }
  }

  /** The stream ended: anything but a clean end (or EOF at a header boundary, which Go's reader accepts) is an error. */
  end(): void {
    if (this.state === 'end') return;
    if (this.state === 'header' && this.blockFill === 0 && this.remaining === 0) return;
    throw invalidArgument('invalid tar stream: unexpected end of data');
  }

  private onHeader(block: Buffer): void {
    if (isZero(block)) {
      if (++this.zeroBlocks === 2) this.state = 'end';
      return;
    }
    if (this.zeroBlocks > 0) throw invalidArgument('invalid tar header: data after an empty block');
    if (!checksumOk(block)) throw invalidArgument('invalid tar header: checksum mismatch');
    const flag = String.fromCharCode(block[F.typeflag[0]]!);
    let size = numeric(block, F.size[0], F.size[1], 'size');

    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      // Checked before the payload is read: a hostile header never makes the parser buffer past the limit.
      const max = this.options.maxPaxHeaderSize;
      this.metaBytes += size;
      if (max === undefined) {
        if (size > MAX_META) throw invalidArgument(`invalid tar header: ${size}-byte extended header`);
      } else if (max > 0 && this.metaBytes > max) {
        throw limitError('max_pax_header_size', max, `${this.metaBytes} bytes of extended headers (PAX records, GNU long names) before one entry`);
      }
      this.metaKind = flag;
      this.remaining = size;
      this.padding = padding(size);
      if (size === 0) this.onMeta(Buffer.alloc(0));
      else this.state = 'meta';
      if (size === 0 && this.padding > 0) this.state = 'padding';
      return;
    }
    if (flag === 'S') throw notImplemented('sparse files in layers are not supported');
    const type = typeFlags[flag];
    if (!type) throw invalidArgument(`unsupported tar entry type ${JSON.stringify(flag)}`);

    // ustar: a name prefix at 345; GNU ("ustar  \0") keeps other fields there.
    const magic = block.toString('latin1', F.magic[0], F.magic[0] + F.magic[1]);
    let name = cstring(block, F.name[0], F.name[1]);
    if (magic.startsWith('ustar\0')) {
      const prefix = cstring(block, F.prefix[0], F.prefix[1]);
      if (prefix) name = `${prefix}/${name}`;
    }
    const pax = this.pax;
    if (this.longName !== undefined) name = this.longName;
    if (pax.path !== undefined) name = pax.path;
    let linkname = cstring(block, F.linkname[0], F.linkname[1]);
    if (this.longLink !== undefined) linkname = this.longLink;
    if (pax.linkpath !== undefined) linkname = pax.linkpath;
    if (pax.size !== undefined) size = pax.size;
    const header: TarHeader = {
      name,
      type,
      mode: numeric(block, F.mode[0], F.mode[1], 'mode'),
      uid: pax.uid ?? numeric(block, F.uid[0], F.uid[1], 'uid'),
      gid: pax.gid ?? numeric(block, F.gid[0], F.gid[1], 'gid'),
      size: type === 'file' ? size : 0,
      mtime: pax.mtime ?? numeric(block, F.mtime[0], F.mtime[1], 'mtime'),
      ...(pax.atime !== undefined ? { atime: pax.atime } : {}),
      linkname,
      devmajor: type === 'character-device' || type === 'block-device' ? numeric(block, F.devmajor[0], F.devmajor[1], 'devmajor') : 0,
      devminor: type === 'character-device' || type === 'block-device' ? numeric(block, F.devminor[0], F.devminor[1], 'devminor') : 0,
      xattrs: pax.xattrs,
    };
    this.pax = { xattrs: [] };
    this.metaBytes = 0;
    this.longName = undefined;
    this.longLink = undefined;
    // Non-file entries may still carry data (a hardlink with a size, in some writers): skip it.
    this.handler.header(header);
    this.remaining = size;
    this.padding = padding(size);
    if (size > 0) {
      if (type === 'file') this.state = 'data';
      else {
        this.handler.endEntry();
        this.padding += size;
        this.remaining = 0;
        this.state = 'padding';
      }
    } else {
      this.handler.endEntry();
      this.state = this.padding > 0 ? 'padding' : 'header';
    }
  }

  private onMeta(buf: Buffer): void {
    switch (this.metaKind) {
      case 'x':
        parsePax(buf, this.pax);
        break;
      case 'g':
        break; // global headers: containerd ignores them
      case 'L':
        this.longName = cstring(buf, 0, buf.length);
        break;
      case 'K':
        this.longLink = cstring(buf, 0, buf.length);
        break;
    }
  }
}

/* ------------------------------------------------------------------------------------------------------------
 * Writing.
 * ---------------------------------------------------------------------------------------------------------- */

export type TypeFlag = '0' | '1' | '2' | '3' | '4' | '5' | '6' | 'x';

export interface TarWriteHeader {
  name: string;
  type: TypeFlag;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch. */
  mtime: bigint;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** PAX records beyond the ones the header needs (e.g. SCHILY.xattr.*), binary-safe. */
  pax?: [string, Buffer][];
}

const MAX_OCTAL_7 = 0o7777777;
const MAX_OCTAL_11 = 0o77777777777;
const isAscii = (s: string) => /^[\x00-\x7f]*$/.test(s);
const toAscii = (s: string) => s.replace(/[^\x00-\x7f]/g, '');

function putString(buf: Buffer, off: number, len: number, s: string): void {
  buf.write(toAscii(s).slice(0, len), off, len, 'latin1');
}

function putOctal(buf: Buffer, off: number, len: number, v: number | bigint): void {
  const s = v.toString(8).padStart(len - 1, '0');
  buf.write(s, off, len - 1, 'latin1');
  buf[off + len - 1] = 0;
}

function paxRecord(key: string, value: Buffer): Buffer {
  // "<len> <key>=<value>\n", len counting its own digits.
  const rest = Buffer.byteLength(key) + value.length + 3;
  let len = rest + String(rest).length;
  if (String(len).length !== String(rest).length) len = rest + String(len).length;
  return Buffer.concat([Buffer.from(`${len} ${key}=`, 'utf8'), value, Buffer.from('\n')]);
}

function rawHeader(h: TarWriteHeader): Buffer {
  const b = Buffer.alloc(BLOCK);
  putString(b, ...F.name, h.name);
  putOctal(b, ...F.mode, h.mode & 0o7777);
  putOctal(b, ...F.uid, h.uid <= MAX_OCTAL_7 && h.uid >= 0 ? h.uid : 0);
  putOctal(b, ...F.gid, h.gid <= MAX_OCTAL_7 && h.gid >= 0 ? h.gid : 0);
  putOctal(b, ...F.size, h.size <= MAX_OCTAL_11 ? h.size : 0);
  putOctal(b, ...F.mtime, h.mtime >= 0n && h.mtime <= BigInt(MAX_OCTAL_11) ? h.mtime : 0n);
  b.fill(0x20, F.checksum[0], F.checksum[0] + F.checksum[1]); // checksum: spaces while summing
  b.write(h.type, F.typeflag[0], F.typeflag[1], 'latin1');
  if (h.linkname) putString(b, ...F.linkname, h.linkname);
  b.write('ustar\x0000', F.magic[0], F.magic[1], 'latin1');
  putOctal(b, ...F.devmajor, h.devmajor ?? 0);
  putOctal(b, ...F.devminor, h.devminor ?? 0);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i]!;
  putOctal(b, F.checksum[0], F.checksum[1] - 1, sum); // six digits and a NUL; the eighth byte stays a space
  return b;
}

/** The header block(s) of one entry: a PAX extended header first when a field does not fit ustar. */
export function encodeHeader(h: TarWriteHeader): Buffer {
  const records: [string, Buffer][] = [];
  if (Buffer.byteLength(h.name) > F.name[1] || !isAscii(h.name)) records.push(['path', Buffer.from(h.name, 'utf8')]);
  if (h.linkname && (Buffer.byteLength(h.linkname) > F.linkname[1] || !isAscii(h.linkname))) {
    records.push(['linkpath', Buffer.from(h.linkname, 'utf8')]);
  }
  if (h.uid > MAX_OCTAL_7 || h.uid < 0) records.push(['uid', Buffer.from(String(h.uid))]);
  if (h.gid > MAX_OCTAL_7 || h.gid < 0) records.push(['gid', Buffer.from(String(h.gid))]);
  if (h.size > MAX_OCTAL_11) records.push(['size', Buffer.from(String(h.size))]);
  if (h.mtime < 0n || h.mtime > BigInt(MAX_OCTAL_11)) records.push(['mtime', Buffer.from(String(h.mtime))]);
  for (const r of h.pax ?? []) records.push(r);
  const header = rawHeader(h);
  if (records.length === 0) return header;
  records.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  const data = Buffer.concat(records.map(([k, v]) => paxRecord(k, v)));
  const base = h.name.replace(/\/+$/, '').split('/').pop() ?? '';
  const paxHeader = rawHeader({ name: `PaxHeaders.0/${base}`, type: 'x', mode: 0, uid: 0, gid: 0, size: data.length, mtime: 0n });
  return Buffer.concat([paxHeader, data, Buffer.alloc(padding(data.length)), header]);
}

/** The end-of-archive marker: two zero blocks. */
export const endOfArchive = () => Buffer.alloc(2 * BLOCK);
