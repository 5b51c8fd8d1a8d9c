/**
 * A synchronous, push-style tar reader: feed it chunks as they arrive, it calls back for each entry header,
 * each piece of entry data and each entry's end. No stream machinery and no promise per entry: a layer of
 * 50k small files is parsed in a few milliseconds of CPU, which is what lets the applier keep up with GNU tar.
 *
 * Formats: ustar (name prefix), GNU (long names 'L', long link names 'K', base-256 numbers) and PAX
 * (per-entry 'x' records: path, linkpath, size, uid, gid, mtime, atime, SCHILY.xattr.*; global 'g' records
 * are read and ignored, as containerd does). Sparse files and multi-volume archives are refused.
 * A bad header checksum is an error (a corrupt or truncated layer must never apply as a short success).
 */
import { invalidArgument, notImplemented } from '../core/errdefs.js';

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

const BLOCK = 512;
/** Largest PAX or GNU long-name payload accepted (names are at most a few KiB in practice). */
const MAX_META = 1 << 20;

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
  const stored = numeric(block, 148, 8, 'checksum');
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : block[i]!;
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
    else if (key.startsWith('SCHILY.xattr.')) into.xattrs.push([key.slice('SCHILY.xattr.'.length), Buffer.from(raw)]);
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

  constructor(private readonly handler: TarHandler) {}

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
    const flag = String.fromCharCode(block[156]!);
    let size = numeric(block, 124, 12, 'size');
    const padTo = (n: number) => (BLOCK - (n % BLOCK)) % BLOCK;

    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      if (size > MAX_META) throw invalidArgument(`invalid tar header: ${size}-byte extended header`);
      this.metaKind = flag;
      this.remaining = size;
      this.padding = padTo(size);
      if (size === 0) this.onMeta(Buffer.alloc(0));
      else this.state = 'meta';
      if (size === 0 && this.padding > 0) this.state = 'padding';
      return;
    }
    if (flag === 'S') throw notImplemented('sparse files in layers are not supported');
    const type = typeFlags[flag];
    if (!type) throw invalidArgument(`unsupported tar entry type ${JSON.stringify(flag)}`);

    // ustar: a name prefix at 345; GNU ("ustar  \0") keeps other fields there.
    const magic = block.toString('latin1', 257, 265);
    let name = cstring(block, 0, 100);
    if (magic.startsWith('ustar\0')) {
      const prefix = cstring(block, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    const pax = this.pax;
    if (this.longName !== undefined) name = this.longName;
    if (pax.path !== undefined) name = pax.path;
    let linkname = cstring(block, 157, 100);
    if (this.longLink !== undefined) linkname = this.longLink;
    if (pax.linkpath !== undefined) linkname = pax.linkpath;
    if (pax.size !== undefined) size = pax.size;
    const header: TarHeader = {
      name,
      type,
      mode: numeric(block, 100, 8, 'mode'),
      uid: pax.uid ?? numeric(block, 108, 8, 'uid'),
      gid: pax.gid ?? numeric(block, 116, 8, 'gid'),
      size: type === 'file' ? size : 0,
      mtime: pax.mtime ?? numeric(block, 136, 12, 'mtime'),
      ...(pax.atime !== undefined ? { atime: pax.atime } : {}),
      linkname,
      devmajor: type === 'character-device' || type === 'block-device' ? numeric(block, 329, 8, 'devmajor') : 0,
      devminor: type === 'character-device' || type === 'block-device' ? numeric(block, 337, 8, 'devminor') : 0,
      xattrs: pax.xattrs,
    };
    this.pax = { xattrs: [] };
    this.longName = undefined;
    this.longLink = undefined;
    // Non-file entries may still carry data (a hardlink with a size, in some writers): skip it.
    this.handler.header(header);
    this.remaining = size;
    this.padding = padTo(size);
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
