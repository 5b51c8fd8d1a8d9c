/**
 * Writing an eStargz blob from a layer's tar entries, member by member, as stargz-snapshotter's estargz
 * Writer does:
 *
 *   - the tar stream is gzip-compressed in members; a regular file's data starts a new member (at the TOC
 *     entry's `offset`), and a file larger than the chunk size gets one member per chunk ('chunk' TOC
 *     entries after its 'reg' entry), each with the sha256 of its bytes (`chunkDigest`); the padding after a
 *     file and the headers of the entries that follow share the member of the last chunk;
 *   - a landmark file first (`.no.prefetch.landmark`), or after the prioritized files (`.prefetch.landmark`);
 *   - then the TOC member (a tar holding stargz.index.json, then the end-of-archive blocks), then the footer.
 *
 * The tar headers themselves come from the caller (src/diff/tar.ts is the one tar module; this folder sits
 * below it): each entry arrives with its parsed fields and its encoded header blocks. Only the two entries
 * the format adds, the landmark and the TOC, are encoded here: short ASCII names of regular files, which
 * plain ustar holds.
 *
 * The uncompressed stream (all members, TOC included, footer empty) is the layer's diff: its sha256 is the
 * diffID a converted image's config lists, and unpacking the blob as an ordinary gzip layer gives it.
 */
import { createHash, type Hash } from 'node:crypto';
import { gzip } from 'node:zlib';
import { promisify } from 'node:util';
import { invalidArgument } from '../core/errdefs.js';
import { footerBytes } from './footer.js';
import { cleanEntryName } from './reader.js';
import {
  DEFAULT_CHUNK_SIZE,
  LANDMARK_CONTENTS,
  NO_PREFETCH_LANDMARK,
  PREFETCH_LANDMARK,
  TOC_TAR_NAME,
  type TocEntry,
} from './types.js';

const gzipP = promisify(gzip);

/**
 * Uncompressed bytes after which a member holding only headers (directories, links, empty files) is closed
 * and a new one begun, so memory stays bounded on layers of many such entries. Extra member boundaries are
 * harmless: readers inflate from a chunk's offset through as many members as it takes (gzip allows
 * concurrent members), and a chunk's own data is never split.
 */
const MAX_HEADER_MEMBER = 8 << 20;

/** One tar entry as the writer needs it (parsed by the caller's tar reader). */
export interface WriterEntry {
  /** The name as in the tar (not cleaned: the TOC keeps it, as stargz's writer does). */
  name: string;
  type: 'dir' | 'reg' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';
  mode: number;
  uid: number;
  gid: number;
  userName?: string;
  groupName?: string;
  /** reg: bytes of data to follow. */
  size: number;
  /** Seconds since the epoch. */
  mtime: number;
  linkName?: string;
  devMajor?: number;
  devMinor?: number;
  xattrs?: [string, Buffer][];
}

export interface EstargzWriterOptions {
  /** Bytes of file data per gzip member (default 4 MiB, ctr-remote's). */
  chunkSize?: number;
  /** gzip level, 0..9 (default 9, Go's gzip.BestCompression that ctr-remote and nerdctl use). */
  compressionLevel?: number;
  /**
   * The caller writes prioritized files first and then calls prefetchLandmark(). Without it, the
   * no-prefetch landmark is the blob's first entry.
   */
  prioritized?: boolean;
  /** Members compressed at once on libuv's threads (default 2: the daemon's pool has 4 for everything else too). */
  concurrency?: number;
}

export interface EstargzResult {
  /** sha256 of the blob (the layer descriptor's digest). */
  blobDigest: string;
  blobSize: number;
  /** sha256 of the uncompressed tar stream (the config's diff_id). */
  diffID: string;
  /** sha256 of the TOC JSON (ANNOTATION_TOC_DIGEST). */
  tocDigest: string;
  /** Bytes of the uncompressed tar stream (ANNOTATION_UNCOMPRESSED_SIZE). */
  uncompressedSize: number;
}

/** Receives the blob's bytes in order; the writer waits for each call. */
export type BlobSink = (chunk: Buffer) => Promise<void> | void;

/** A ustar header block for a regular file with a short ASCII name (the landmark, the TOC). */
function ustarFileHeader(name: string, size: number): Buffer {
  const b = Buffer.alloc(512);
  const octal = (off: number, len: number, v: number) => b.write(v.toString(8).padStart(len - 1, '0') + '\0', off, len, 'latin1');
  b.write(name, 0, 100, 'latin1');
  octal(100, 8, 0o644);
  octal(108, 8, 0);
  octal(116, 8, 0);
  octal(124, 12, size);
  octal(136, 12, 0);
  b.fill(0x20, 148, 156);
  b.write('0', 156, 1, 'latin1');
  b.write('ustar\x0000', 257, 8, 'latin1');
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[i]!;
  b.write(sum.toString(8).padStart(6, '0') + '\0', 148, 7, 'latin1');
  return b;
}

const pad512 = (n: number) => Buffer.alloc((512 - (n % 512)) % 512);

/** RFC 3339 in UTC, whole seconds (rounded, as Go's writer), '' for the epoch. */
function formatModtime(mtime: number): string {
  const s = Math.round(mtime);
  if (!Number.isFinite(s) || s === 0) return '';
  return new Date(s * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export class EstargzWriter {
  private readonly chunkSize: number;
  private readonly level: number;
  private readonly blobHash = createHash('sha256');
  private readonly diffHash = createHash('sha256');
  private blobSize = 0;
  private uncompressedSize = 0;
  /** Uncompressed bytes of the member being built. */
  private member: Buffer[] = [];
  private memberBytes = 0;
  /** TOC entries whose data starts the current member. */
  private starts: TocEntry[] = [];
  /** Members being compressed, oldest first. */
  private pending: { compressed: Promise<Buffer>; starts: TocEntry[] }[] = [];
  private readonly inflight: number;
  private readonly entries: TocEntry[] = [];
  private readonly lastUser = new Map<number, string>();
  private readonly lastGroup = new Map<number, string>();
  private landmarkWritten = false;
  private closed = false;
  /** The regular file being written: its TOC entry, the current chunk's entry and hashes. */
  private file?: {
    reg: TocEntry;
    size: number;
    written: number;
    fileHash: Hash;
    chunk?: { entry: TocEntry; hash: Hash; size: number; done: number };
    skip: boolean;
  };

  constructor(
    private readonly sink: BlobSink,
    private readonly opts: EstargzWriterOptions = {},
  ) {
    this.chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    this.level = opts.compressionLevel ?? 9;
    this.inflight = Math.max(1, opts.concurrency ?? 2);
    if (!Number.isSafeInteger(this.chunkSize) || this.chunkSize <= 0) throw invalidArgument(`invalid eStargz chunk size ${this.chunkSize}`);
    if (!Number.isInteger(this.level) || this.level < 0 || this.level > 9) throw invalidArgument(`invalid gzip level ${this.level}`);
  }

  /** Appends uncompressed bytes to the current member (and to the diff). */
  private append(b: Buffer): void {
    if (b.length === 0) return;
    this.member.push(b);
    this.memberBytes += b.length;
    this.diffHash.update(b);
    this.uncompressedSize += b.length;
  }

  /**
   * Starts compressing the current member (if any). Up to `inflight` members compress at once on libuv's
   * threads; they reach the sink in order, and the entries whose data starts a member get their offset when
   * that member is emitted (its offset is known only once the members before it are compressed).
   */
  private async closeMember(): Promise<void> {
    if (this.memberBytes === 0) return;
    const data = this.member.length === 1 ? this.member[0]! : Buffer.concat(this.member);
    const compressed = gzipP(data, { level: this.level });
    compressed.catch(() => undefined); // awaited in emitOldest; never an unhandled rejection meanwhile
    this.pending.push({ compressed, starts: this.starts });
    this.member = [];
    this.memberBytes = 0;
    this.starts = [];
    while (this.pending.length > this.inflight) await this.emitOldest();
  }

  private async emitOldest(): Promise<void> {
    const m = this.pending.shift()!;
    const b = await m.compressed;
    for (const e of m.starts) e.offset = this.blobSize;
    await this.emit(b);
  }

  /** Closes the current member and waits for every member to be emitted. */
  private async flush(): Promise<void> {
    await this.closeMember();
    while (this.pending.length > 0) await this.emitOldest();
  }

  private async emit(b: Buffer): Promise<void> {
    this.blobHash.update(b);
    this.blobSize += b.length;
    await this.sink(b);
  }

  private nameIfChanged(map: Map<number, string>, id: number, name: string | undefined): string | undefined {
    if (!name || map.get(id) === name) return undefined;
    map.set(id, name);
    return name;
  }

  private async ensureLandmark(): Promise<void> {
    if (this.landmarkWritten || this.opts.prioritized) return;
    await this.writeLandmark(NO_PREFETCH_LANDMARK);
  }

  private async writeLandmark(name: string): Promise<void> {
    this.landmarkWritten = true;
    await this.beginEntry({ name, type: 'reg', mode: 0o644, uid: 0, gid: 0, size: 1, mtime: 0 }, ustarFileHeader(name, 1), true);
    await this.data(Buffer.from([LANDMARK_CONTENTS]));
    await this.end();
  }

  /** With `prioritized`: ends the prefetch span (the prioritized files were written before this call). */
  async prefetchLandmark(): Promise<void> {
    if (!this.opts.prioritized) throw invalidArgument('prefetchLandmark needs the prioritized option');
    if (this.landmarkWritten) throw invalidArgument('the prefetch landmark is already written');
    await this.writeLandmark(PREFETCH_LANDMARK);
  }

  /**
   * Starts an entry: `header` is its encoded tar header block(s) (PAX records included), written as is. An
   * existing TOC or landmark entry in the input is dropped (a layer converted twice keeps one of each).
   */
  begin(e: WriterEntry, header: Buffer): Promise<void> {
    return this.beginEntry(e, header, false);
  }

  private async beginEntry(e: WriterEntry, header: Buffer, internal: boolean): Promise<void> {
    if (this.closed) throw invalidArgument('eStargz writer is closed');
    if (this.file) throw invalidArgument(`eStargz writer: entry ${JSON.stringify(this.file.reg.name)} is not finished`);
    const clean = cleanEntryName(e.name);
    if (!internal && (clean === TOC_TAR_NAME || clean === PREFETCH_LANDMARK || clean === NO_PREFETCH_LANDMARK)) {
      this.file = { reg: { name: e.name, type: 'reg' }, size: e.type === 'reg' ? e.size : 0, written: 0, fileHash: createHash('sha256'), skip: true };
      return;
    }
    if (!internal) await this.ensureLandmark();
    const ent: TocEntry = { name: e.name, type: e.type };
    if (e.type === 'reg' && e.size > 0) ent.size = e.size;
    const modtime = formatModtime(e.mtime);
    if (modtime) ent.modtime = modtime;
    if ((e.type === 'symlink' || e.type === 'hardlink') && e.linkName) ent.linkName = e.linkName;
    if (e.mode) ent.mode = e.mode;
    if (e.uid) ent.uid = e.uid;
    if (e.gid) ent.gid = e.gid;
    const u = this.nameIfChanged(this.lastUser, e.uid, e.userName);
    if (u) ent.userName = u;
    const g = this.nameIfChanged(this.lastGroup, e.gid, e.groupName);
    if (g) ent.groupName = g;
    if (e.type === 'char' || e.type === 'block') {
      if (e.devMajor) ent.devMajor = e.devMajor;
      if (e.devMinor) ent.devMinor = e.devMinor;
    }
    if (e.xattrs && e.xattrs.length > 0) {
      const x: Record<string, string> = {};
      for (const [k, v] of [...e.xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) x[k] = v.toString('base64');
      ent.xattrs = x;
    }
    this.append(header);
    if (e.type !== 'reg' || e.size === 0) {
      if (this.memberBytes >= MAX_HEADER_MEMBER) await this.closeMember();
    }
    if (e.type !== 'reg') {
      this.entries.push(ent);
      return;
    }
    this.file = { reg: ent, size: e.size, written: 0, fileHash: createHash('sha256'), skip: false };
    if (e.size === 0) this.entries.push(ent);
  }

  /** File data of the current regular entry, in order. */
  async data(buf: Buffer): Promise<void> {
    const f = this.file;
    if (!f) throw invalidArgument('eStargz writer: data outside a regular file');
    if (f.written + buf.length > f.size) throw invalidArgument(`eStargz writer: more data than the ${f.size} bytes of ${JSON.stringify(f.reg.name)}`);
    if (f.skip) {
      f.written += buf.length;
      return;
    }
    let pos = 0;
    while (pos < buf.length) {
      if (!f.chunk) {
        // A new chunk: its own gzip member, starting at the data.
        await this.closeMember();
        const remain = f.size - f.written;
        const size = Math.min(remain, this.chunkSize);
        const entry: TocEntry = f.written === 0 ? f.reg : { name: f.reg.name, type: 'chunk' };
        this.starts.push(entry);
        if (f.written > 0) entry.chunkOffset = f.written;
        if (remain >= this.chunkSize) entry.chunkSize = size; // a short (last) chunk says "to the end", as Go writes
        f.chunk = { entry, hash: createHash('sha256'), size, done: 0 };
      }
      const c = f.chunk;
      const n = Math.min(c.size - c.done, buf.length - pos);
      const piece = buf.subarray(pos, pos + n);
      c.hash.update(piece);
      f.fileHash.update(piece);
      this.append(Buffer.from(piece));
      c.done += n;
      f.written += n;
      pos += n;
      if (c.done === c.size) {
        c.entry.chunkDigest = `sha256:${c.hash.digest('hex')}`;
        this.entries.push(c.entry);
        f.chunk = undefined;
      }
    }
  }

  /** Ends the current entry (regular files: all `size` bytes must have been given). */
  async end(): Promise<void> {
    const f = this.file;
    if (!f) return;
    if (f.written !== f.size) throw invalidArgument(`eStargz writer: ${JSON.stringify(f.reg.name)} ended after ${f.written} of ${f.size} bytes`);
    this.file = undefined;
    if (f.skip) return;
    f.reg.digest = `sha256:${f.fileHash.digest('hex')}`;
    this.append(pad512(f.size));
  }

  /** Writes the TOC and the footer; the blob is complete when this resolves. */
  async close(): Promise<EstargzResult> {
    if (this.file) throw invalidArgument(`eStargz writer: entry ${JSON.stringify(this.file.reg.name)} is not finished`);
    if (this.closed) throw invalidArgument('eStargz writer is closed');
    await this.ensureLandmark();
    if (this.opts.prioritized && !this.landmarkWritten) await this.writeLandmark(PREFETCH_LANDMARK);
    this.closed = true;
    await this.flush();
    const tocOffset = this.blobSize;
    const json = Buffer.from(JSON.stringify({ version: 1, entries: this.entries }, null, '\t'));
    const tocDigest = `sha256:${createHash('sha256').update(json).digest('hex')}`;
    this.append(ustarFileHeader(TOC_TAR_NAME, json.length));
    this.append(json);
    this.append(pad512(json.length));
    this.append(Buffer.alloc(1024)); // end of archive
    await this.flush();
    await this.emit(footerBytes(tocOffset));
    return {
      blobDigest: `sha256:${this.blobHash.digest('hex')}`,
      blobSize: this.blobSize,
      diffID: `sha256:${this.diffHash.digest('hex')}`,
      tocDigest,
      uncompressedSize: this.uncompressedSize,
    };
  }
}
