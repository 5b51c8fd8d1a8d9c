/**
 * Opening an eStargz blob by ranges: the footer and the TOC in one or two reads, then any file's chunks on
 * demand, each gunzipped from its own gzip member and checked against the TOC's chunk digest.
 *
 * The TOC is untrusted input (it comes from a registry): every entry is type-checked, names are cleaned and
 * refused when they climb out of the root, data offsets must lie between the blob's start and the TOC, each
 * regular file's chunks must cover it exactly, every chunk must carry a digest, hard links must end at a
 * non-directory entry. What passes is what stargz-snapshotter's reader would serve, minus its silent fix-ups
 * of hostile input.
 */
import { createHash } from 'node:crypto';
import { createGunzip, gunzip } from 'node:zlib';
import { dataLoss, invalidArgument } from '../core/errdefs.js';
import { parseFooter } from './footer.js';
import {
  FOOTER_SIZE,
  LEGACY_FOOTER_SIZE,
  NO_PREFETCH_LANDMARK,
  PREFETCH_LANDMARK,
  TOC_TAR_NAME,
  type EstargzLayer,
  type FileChunk,
  type OpenOptions,
  type ReadAt,
  type Toc,
  type TocEntry,
  type TocEntryType,
} from './types.js';

/** Bytes read from the end of the blob in the first request: the footer and, for most layers, the whole TOC. */
const TAIL_READ = 64 << 10;
const DEFAULT_MAX_TOC_BYTES = 64 << 20;
const MAX_LINK_DEPTH = 64;
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
const TYPES = new Set<TocEntryType>(['dir', 'reg', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'chunk']);

const badToc = (detail: string) => invalidArgument(`invalid eStargz TOC: ${detail}`);

/**
 * A TOC entry's name as a path relative to the root ('' is the root): leading '/' and './' dropped, repeated
 * and trailing slashes folded. A '..' component or a NUL byte is refused (stargz would fold '../x' into 'x').
 */
export function cleanEntryName(name: string): string {
  if (name.includes('\0')) throw badToc(`entry name ${JSON.stringify(name)} contains a NUL byte`);
  const parts: string[] = [];
  for (const p of name.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') throw badToc(`entry name ${JSON.stringify(name)} leaves the layer's root`);
    parts.push(p);
  }
  return parts.join('/');
}

const parentOf = (p: string) => {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
};
const baseOf = (p: string) => p.slice(p.lastIndexOf('/') + 1);

async function readExactly(readAt: ReadAt, offset: number, length: number, what: string): Promise<Buffer> {
  const b = await readAt(offset, length);
  if (b.length < length) {
    throw dataLoss(`short read of the eStargz ${what}: ${b.length} of ${length} bytes at offset ${offset}`);
  }
  return b.length === length ? b : b.subarray(0, length);
}

/** The first `want` bytes a gzip member decompresses to (fewer when it ends first); stops inflating there. */
export function gunzipPrefix(member: Buffer, want: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const g = createGunzip();
    const parts: Buffer[] = [];
    let have = 0;
    let settled = false;
    const finish = (err: unknown, out?: Buffer) => {
      if (settled) return;
      settled = true;
      if (err) reject(err);
      else resolve(out!);
    };
    g.on('data', (d: Buffer) => {
      if (settled) return;
      parts.push(d);
      have += d.length;
      if (have >= want) {
        finish(undefined, Buffer.concat(parts).subarray(0, want));
        g.destroy();
      }
    });
    g.on('end', () => finish(undefined, Buffer.concat(parts)));
    g.on('error', (e) => finish(e));
    g.end(member);
  });
}

/* ---- the TOC member: gzip of a tar holding stargz.index.json ---- */

function octal(b: Buffer, start: number, len: number): number {
  if (b[start]! & 0x80) {
    let v = b[start]! & 0x7f;
    for (let i = start + 1; i < start + len; i++) v = v * 256 + b[i]!;
    return v;
  }
  const s = b.toString('latin1', start, start + len).replace(/[\0 ]+$/, '').replace(/^[\0 ]+/, '');
  if (!/^[0-7]*$/.test(s)) return Number.NaN;
  return s === '' ? 0 : Number.parseInt(s, 8);
}

function cstr(b: Buffer, start: number, len: number): string {
  const end = b.indexOf(0, start);
  return b.toString('utf8', start, end < 0 || end > start + len ? start + len : end);
}

/** The TOC JSON bytes out of the TOC member's tar: its first entry (after PAX headers), named stargz.index.json. */
function tocJsonFromTar(tar: Buffer): Buffer {
  let pos = 0;
  let paxPath: string | undefined;
  let paxSize: number | undefined;
  for (let headers = 0; headers < 4; headers++) {
    if (tar.length < pos + 512) throw badToc('the TOC member holds no tar header');
    const h = tar.subarray(pos, pos + 512);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
    if (octal(h, 148, 8) !== sum) throw badToc('the TOC tar header checksum does not match');
    const flag = String.fromCharCode(h[156]!);
    let size = octal(h, 124, 12);
    if (!Number.isSafeInteger(size) || size < 0) throw badToc('the TOC tar header has a bad size');
    const dataStart = pos + 512;
    if (flag === 'x' || flag === 'g') {
      if (tar.length < dataStart + size) throw badToc('the TOC tar is truncated');
      if (flag === 'x') {
        const recs = tar.toString('utf8', dataStart, dataStart + size);
        for (const line of recs.split('\n')) {
          const m = /^\d+ ([^=]+)=(.*)$/s.exec(line);
          if (!m) continue;
          if (m[1] === 'path') paxPath = m[2];
          if (m[1] === 'size') paxSize = Number(m[2]);
        }
      }
      pos = dataStart + Math.ceil(size / 512) * 512;
      continue;
    }
    let name = cstr(h, 0, 100);
    if (h.toString('latin1', 257, 263) === 'ustar\0') {
      const prefix = cstr(h, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    if (paxPath !== undefined) name = paxPath;
    if (paxSize !== undefined) size = paxSize;
    if (!Number.isSafeInteger(size) || size < 0) throw badToc('the TOC tar header has a bad size');
    if (name !== TOC_TAR_NAME) throw badToc(`the TOC tar entry is named ${JSON.stringify(name)}, not ${TOC_TAR_NAME}`);
    if (tar.length < dataStart + size) throw badToc('the TOC JSON is truncated');
    return tar.subarray(dataStart, dataStart + size);
  }
  throw badToc('too many extended headers before the TOC');
}

function gunzipLimited(buf: Buffer, max: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    gunzip(buf, { maxOutputLength: max }, (err, out) => {
      if (!err) return resolve(out);
      if (err instanceof RangeError || (err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
        return reject(invalidArgument(`eStargz TOC is larger than the limit of ${max} bytes`));
      }
      reject(badToc(`the TOC member is not valid gzip (${(err as Error).message})`));
    });
  });
}

/* ---- entry validation ---- */

const isUint = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function checkEntry(raw: unknown, i: number): TocEntry {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw badToc(`entry ${i} is not an object`);
  const e = raw as Record<string, unknown>;
  if (typeof e.name !== 'string') throw badToc(`entry ${i} has no name`);
  if (typeof e.type !== 'string' || !TYPES.has(e.type as TocEntryType)) {
    throw badToc(`entry ${i} (${JSON.stringify(e.name)}) has unknown type ${JSON.stringify(e.type)}`);
  }
  for (const k of ['size', 'mode', 'uid', 'gid', 'devMajor', 'devMinor', 'offset', 'innerOffset', 'chunkOffset', 'chunkSize']) {
    if (e[k] !== undefined && !isUint(e[k])) throw badToc(`entry ${i} (${JSON.stringify(e.name)}) has a bad ${k}`);
  }
  for (const k of ['modtime', 'linkName', 'userName', 'groupName', 'digest', 'chunkDigest']) {
    if (e[k] !== undefined && typeof e[k] !== 'string') throw badToc(`entry ${i} (${JSON.stringify(e.name)}) has a bad ${k}`);
  }
  for (const k of ['digest', 'chunkDigest']) {
    if (e[k] !== undefined && e[k] !== '' && !DIGEST_RE.test(e[k] as string)) {
      throw badToc(`entry ${i} (${JSON.stringify(e.name)}) has a bad ${k} ${JSON.stringify(e[k])}`);
    }
  }
  if (e.xattrs !== undefined) {
    if (typeof e.xattrs !== 'object' || e.xattrs === null || Array.isArray(e.xattrs)) {
      throw badToc(`entry ${i} (${JSON.stringify(e.name)}) has bad xattrs`);
    }
    for (const v of Object.values(e.xattrs)) {
      if (typeof v !== 'string') throw badToc(`entry ${i} (${JSON.stringify(e.name)}) has a bad xattr value`);
    }
  }
  return e as unknown as TocEntry;
}

function parseTocJson(json: Buffer): Toc {
  let v: unknown;
  try {
    v = JSON.parse(json.toString('utf8'));
  } catch (err) {
    throw badToc(`the TOC is not JSON (${(err as Error).message})`);
  }
  if (typeof v !== 'object' || v === null) throw badToc('the TOC is not a JSON object');
  const o = v as Record<string, unknown>;
  if (typeof o.version !== 'number') throw badToc('the TOC has no version');
  if (!Array.isArray(o.entries)) throw badToc('the TOC has no entries');
  return { version: o.version, entries: o.entries.map(checkEntry) };
}

/* ---- the layer ---- */

class Layer implements EstargzLayer {
  /** Non-chunk entries by cleaned name (hard links still as themselves), implicit parent dirs included. */
  private readonly byName = new Map<string, TocEntry>();
  private readonly kids = new Map<string, Map<string, TocEntry>>();
  private readonly links = new Map<TocEntry, number>();
  private readonly fileChunks = new Map<TocEntry, FileChunk[]>();
  readonly prefetchSize: number;

  constructor(
    private readonly readAt: ReadAt,
    readonly toc: Toc,
    readonly tocDigest: string,
    readonly tocOffset: number,
  ) {
    this.index();
    const root = this.kids.get('') ?? new Map<string, TocEntry>();
    const landmark = root.get(PREFETCH_LANDMARK);
    this.prefetchSize = root.has(NO_PREFETCH_LANDMARK) || !landmark ? 0 : (landmark.offset ?? 0);
  }

  private index(): void {
    const uname = new Map<number, string>();
    const gname = new Map<number, string>();
    /** Data entries (reg with size > 0, chunk) per file, in TOC order. */
    const parts = new Map<TocEntry, TocEntry[]>();
    let lastNonChunk: TocEntry | undefined;
    for (const [i, e] of this.toc.entries.entries()) {
      if (e.type === 'chunk') {
        if (!lastNonChunk || lastNonChunk.type !== 'reg') throw badToc(`chunk entry ${i} does not follow a regular file`);
        e.name = lastNonChunk.name;
        parts.get(lastNonChunk)?.push(e);
        if (!e.chunkSize) e.chunkSize = Math.max(0, (lastNonChunk.size ?? 0) - (e.chunkOffset ?? 0));
        continue;
      }
      e.name = cleanEntryName(e.name);
      lastNonChunk = e;
      if (e.userName) uname.set(e.uid ?? 0, e.userName);
      else if (uname.has(e.uid ?? 0)) e.userName = uname.get(e.uid ?? 0);
      if (e.groupName) gname.set(e.gid ?? 0, e.groupName);
      else if (gname.has(e.gid ?? 0)) e.groupName = gname.get(e.gid ?? 0);
      if (e.name === '' && e.type !== 'dir') throw badToc(`the root entry is a ${e.type}, not a directory`);
      if (e.type === 'reg') {
        const size = e.size ?? 0;
        if (!e.chunkSize && size > 0) e.chunkSize = size;
        parts.set(e, size > 0 ? [e] : []);
      }
      this.byName.set(e.name, e); // a later entry of the same name replaces an earlier one, as in a tar
    }
    if (!this.byName.has('')) this.byName.set('', { name: '', type: 'dir', mode: 0o755 });

    // Directory tree, implicit parents, hard links.
    const ensureDir = (d: string): Map<string, TocEntry> => {
      let m = this.kids.get(d);
      if (m) return m;
      let e = this.byName.get(d);
      if (!e) {
        e = { name: d, type: 'dir', mode: 0o755 };
        this.byName.set(d, e);
      } else if (e.type !== 'dir') {
        throw badToc(`${JSON.stringify(d)} is a ${e.type} but has entries under it`);
      }
      m = new Map();
      this.kids.set(d, m);
      if (d !== '') ensureDir(parentOf(d)).set(baseOf(d), e);
      return m;
    };
    ensureDir('');
    for (const [name, e] of [...this.byName]) {
      if (name === '') continue;
      const target = e.type === 'hardlink' ? this.resolve(e) : e;
      if (target.type === 'dir') ensureDir(name);
      ensureDir(parentOf(name)).set(baseOf(name), target);
      this.links.set(target, (this.links.get(target) ?? 0) + 1);
    }
    for (const m of this.kids.values()) {
      const sorted = [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      m.clear();
      for (const [k, v] of sorted) m.set(k, v);
    }

    // Chunks: offsets inside the payload, one member per offset, exact coverage of each file.
    const offsets = new Set<number>();
    for (const [reg, list] of parts) {
      for (const c of list) {
        const off = c.offset ?? 0;
        if (off <= 0 || off >= this.tocOffset) {
          throw badToc(`data of ${JSON.stringify(reg.name)} at offset ${off} is outside the blob's payload (0..${this.tocOffset})`);
        }
        if (offsets.has(off)) throw badToc(`offset ${off} is used by two chunks`);
        offsets.add(off);
      }
    }
    const sortedOffsets = [...offsets].sort((a, b) => a - b);
    const nextOffset = (off: number): number => {
      let lo = 0;
      let hi = sortedOffsets.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (sortedOffsets[mid]! <= off) lo = mid + 1;
        else hi = mid;
      }
      return lo < sortedOffsets.length ? sortedOffsets[lo]! : this.tocOffset;
    };
    for (const [reg, list] of parts) {
      const size = reg.size ?? 0;
      const out: FileChunk[] = [];
      let expect = 0;
      for (const c of list) {
        const fileOffset = c.chunkOffset ?? 0;
        const chunkSize = c.chunkSize ?? 0;
        if (fileOffset !== expect || chunkSize <= 0 || fileOffset + chunkSize > size) {
          throw badToc(`the chunks of ${JSON.stringify(reg.name)} do not cover its ${size} bytes in order`);
        }
        const digest = c.chunkDigest || (list.length === 1 ? reg.digest : undefined);
        if (!digest) throw badToc(`a chunk of ${JSON.stringify(reg.name)} at ${fileOffset} has no chunkDigest`);
        const blobOffset = c.offset!;
        out.push({
          fileOffset,
          size: chunkSize,
          blobOffset,
          blobLength: nextOffset(blobOffset) - blobOffset,
          innerOffset: c.innerOffset ?? 0,
          digest,
        });
        expect += chunkSize;
      }
      if (expect !== size) throw badToc(`the chunks of ${JSON.stringify(reg.name)} do not cover its ${size} bytes in order`);
      this.fileChunks.set(reg, out);
    }
  }

  /** The entry a hard link names, following links to links; refused when missing, a directory, or a cycle. */
  private resolve(e: TocEntry): TocEntry {
    let cur = e;
    for (let depth = 0; depth < MAX_LINK_DEPTH; depth++) {
      if (cur.type !== 'hardlink') {
        if (cur.type === 'dir') throw badToc(`hard link ${JSON.stringify(e.name)} points at a directory`);
        return cur;
      }
      const target = this.byName.get(cleanEntryName(cur.linkName ?? ''));
      if (!target || target === cur) {
        throw badToc(`hard link ${JSON.stringify(e.name)} points at ${JSON.stringify(cur.linkName ?? '')}, which is not in the layer`);
      }
      cur = target;
    }
    throw badToc(`hard link ${JSON.stringify(e.name)} is part of a cycle`);
  }

  entry(path: string): TocEntry | undefined {
    let name: string;
    try {
      name = cleanEntryName(path);
    } catch {
      return undefined;
    }
    const e = this.byName.get(name);
    return e && e.type === 'hardlink' ? this.resolve(e) : e;
  }

  children(path: string): Map<string, TocEntry> {
    const e = this.entry(path);
    return (e && this.kids.get(e.name)) ?? new Map();
  }

  linkCount(entry: TocEntry): number {
    return this.links.get(entry) ?? 1;
  }

  chunks(path: string): FileChunk[] {
    const e = this.entry(path);
    return (e && this.fileChunks.get(e)) ?? [];
  }

  async readChunk(chunk: FileChunk): Promise<Buffer> {
    const end = chunk.blobOffset + chunk.blobLength;
    if (chunk.blobOffset <= 0 || chunk.blobLength <= 0 || end > this.tocOffset) {
      throw invalidArgument(`chunk at offset ${chunk.blobOffset} (+${chunk.blobLength}) is outside the eStargz payload`);
    }
    const member = await readExactly(this.readAt, chunk.blobOffset, chunk.blobLength, 'chunk');
    let data: Buffer;
    try {
      data = await gunzipPrefix(member, chunk.innerOffset + chunk.size);
    } catch (err) {
      throw dataLoss(`chunk at offset ${chunk.blobOffset} of the eStargz blob is not valid gzip (${(err as Error).message})`);
    }
    data = data.subarray(chunk.innerOffset);
    if (data.length !== chunk.size) {
      throw dataLoss(`chunk at offset ${chunk.blobOffset} of the eStargz blob holds ${data.length} bytes, the TOC says ${chunk.size}`);
    }
    const got = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    if (got !== chunk.digest) {
      throw dataLoss(`chunk at offset ${chunk.blobOffset} of the eStargz blob has digest ${got}, the TOC says ${chunk.digest}`);
    }
    return data;
  }
}

/** Reads the footer and TOC with `readAt` (one request, two for a TOC over 64 KiB), checks `tocDigest` when given. */
export async function openEstargz(readAt: ReadAt, blobSize: number, opts: OpenOptions = {}): Promise<EstargzLayer> {
  if (!Number.isSafeInteger(blobSize) || blobSize < LEGACY_FOOTER_SIZE) {
    throw invalidArgument(`not an eStargz blob: ${blobSize} bytes is smaller than a footer`);
  }
  const maxToc = opts.maxTocBytes ?? DEFAULT_MAX_TOC_BYTES;
  const tailLen = Math.min(blobSize, TAIL_READ);
  const tailStart = blobSize - tailLen;
  const tail = await readExactly(readAt, tailStart, tailLen, 'footer');
  const { tocOffset, legacy } = parseFooter(tail);
  const tocEnd = blobSize - (legacy ? LEGACY_FOOTER_SIZE : FOOTER_SIZE);
  if (tocOffset >= tocEnd) {
    throw invalidArgument(`not an eStargz blob: the footer's TOC offset ${tocOffset} is outside the blob of ${blobSize} bytes`);
  }
  const tocLen = tocEnd - tocOffset;
  if (tocLen > maxToc) throw invalidArgument(`eStargz TOC of ${tocLen} bytes is larger than the limit of ${maxToc} bytes`);
  const member = tocOffset >= tailStart
    ? tail.subarray(tocOffset - tailStart, tocEnd - tailStart)
    : await readExactly(readAt, tocOffset, tocLen, 'TOC');
  // The tar around the JSON adds a header, padding and the end-of-archive blocks.
  const tar = await gunzipLimited(member, maxToc + 4096);
  const json = tocJsonFromTar(tar);
  if (json.length > maxToc) throw invalidArgument(`eStargz TOC is larger than the limit of ${maxToc} bytes`);
  const tocDigest = `sha256:${createHash('sha256').update(json).digest('hex')}`;
  if (opts.tocDigest !== undefined && opts.tocDigest !== tocDigest) {
    throw dataLoss(`eStargz TOC has digest ${tocDigest}, the layer's annotation says ${opts.tocDigest}`);
  }
  return new Layer(readAt, parseTocJson(json), tocDigest, tocOffset);
}
