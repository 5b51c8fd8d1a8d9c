/**
 * The eStargz format's names and shapes, as stargz-snapshotter defines them (its `estargz` package): a gzip
 * layer whose members can be read one by one, with a table of contents (TOC, JSON in a tar entry named
 * stargz.index.json in its own gzip member) near the end and a fixed-size footer saying where the TOC starts.
 *
 * Blob layout, front to back:
 *   gzip members holding the tar stream: each regular file's data starts a new member at a TOC entry's
 *   `offset`; a file larger than the chunk size is split, one member per chunk ('chunk' entries after its
 *   'reg' entry); headers of the following entries share the member of the data before them;
 *   the TOC member (tar header + JSON), at `tocOffset`;
 *   the footer: an empty gzip member whose header's extra field carries the TOC offset.
 */

export const TOC_TAR_NAME = 'stargz.index.json';
/** An entry after the files to fetch first; everything before its offset is the prefetch span. */
export const PREFETCH_LANDMARK = '.prefetch.landmark';
/** An entry at the front saying there is nothing to prefetch. */
export const NO_PREFETCH_LANDMARK = '.no.prefetch.landmark';
/** Layer annotation in a manifest: the sha256 of the TOC JSON (checked when the layer is opened). */
export const ANNOTATION_TOC_DIGEST = 'containerd.io/snapshot/stargz/toc.digest';
/** Layer annotation in a manifest: the size of the uncompressed tar (the diff). */
export const ANNOTATION_UNCOMPRESSED_SIZE = 'io.containers.estargz.uncompressed-size';
/** eStargz footer: gzip header (10) + XLEN (2) + extra 'S','G',LEN (4) + "%016xSTARGZ" (22) + empty stored block (5) + trailer (8). */
export const FOOTER_SIZE = 51;
/** The legacy stargz footer: the same without the 'SG' subfield header (extra is the 22 bytes themselves). */
export const LEGACY_FOOTER_SIZE = 47;
/** Chunk size of the writer when none is given (ctr-remote's and nerdctl's default). */
export const DEFAULT_CHUNK_SIZE = 4 << 20;
/** The one byte of a landmark file. */
export const LANDMARK_CONTENTS = 0xf;

export type TocEntryType = 'dir' | 'reg' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo' | 'chunk';

/** One TOC entry; the field names are the TOC JSON's, as stargz-snapshotter writes them. */
export interface TocEntry {
  name: string;
  type: TocEntryType;
  /** reg: the file's size. */
  size?: number;
  /** RFC 3339, UTC, whole seconds; absent for time zero. */
  modtime?: string;
  linkName?: string;
  /** The tar header's mode (permission bits, setuid/setgid/sticky). */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Written once per uid (and per gid) in the JSON; the reader fills it in on later entries. */
  userName?: string;
  groupName?: string;
  devMajor?: number;
  devMinor?: number;
  /** Extended attributes, values base64 (Go's []byte in JSON). */
  xattrs?: Record<string, string>;
  /** reg: sha256 of the whole file. */
  digest?: string;
  /** reg/chunk: where the gzip member holding this chunk starts in the blob. */
  offset?: number;
  /** zstd:chunked layouts: where the chunk starts in the decompressed member; 0 for gzip eStargz. */
  innerOffset?: number;
  /** reg/chunk: where this chunk starts in the file. */
  chunkOffset?: number;
  /** reg/chunk: bytes of this chunk; 0 or absent in the JSON means "to the end of the file". */
  chunkSize?: number;
  /** reg/chunk: sha256 of this chunk's uncompressed bytes. */
  chunkDigest?: string;
}

export interface Toc {
  version: number;
  entries: TocEntry[];
}

/** Reads `length` bytes of the blob at `offset` (a registry Range request, a file...). */
export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

export interface FileChunk {
  /** Where the chunk's bytes start in the file. */
  fileOffset: number;
  /** Uncompressed bytes of the chunk. */
  size: number;
  /** Where its gzip member starts in the blob. */
  blobOffset: number;
  /** Compressed bytes to read (up to the next member). */
  blobLength: number;
  /** zstd:chunked / innerOffset layouts; 0 for gzip eStargz. */
  innerOffset: number;
  /** sha256 of the uncompressed chunk. */
  digest: string;
}

export interface EstargzLayer {
  readonly toc: Toc;
  /** sha256 of the TOC JSON bytes (what ANNOTATION_TOC_DIGEST names). */
  readonly tocDigest: string;
  readonly tocOffset: number;
  /** Entries by cleaned path ('' is the root, 'etc/passwd'), hard links resolved to their target's entry. */
  entry(path: string): TocEntry | undefined;
  /**
   * The names in a directory (cleaned path) and their entries (hard links resolved), sorted by name; parent
   * directories the TOC does not list are there too, as 'dir' entries of mode 0755 (as stargz does).
   */
  children(path: string): Map<string, TocEntry>;
  /** How many names refer to an entry (hard links); 1 for most. */
  linkCount(entry: TocEntry): number;
  /** The chunks of a regular file, in order (a file of size 0 has none). */
  chunks(path: string): FileChunk[];
  /** Fetches, gunzips and verifies one chunk (data-loss StrataError on a digest mismatch, never returns bad bytes). */
  readChunk(chunk: FileChunk): Promise<Buffer>;
  /** Bytes of the blob before the prefetch landmark (0 when none or a no-prefetch landmark). */
  readonly prefetchSize: number;
}

export interface OpenOptions {
  /** When given, the TOC JSON's sha256 must be this (ANNOTATION_TOC_DIGEST), else a data-loss error. */
  tocDigest?: string;
  /** Largest TOC accepted, compressed and as JSON (default 64 MiB). */
  maxTocBytes?: number;
}
