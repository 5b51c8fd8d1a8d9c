/**
 * The content store contract. Two implementations stand behind it:
 *  - the local store (src/content/local.ts): blobs and ingests on disk, shared by every namespace, no labels;
 *  - the namespaced store (src/metadata/content.ts): per-namespace records, labels and leases in SQLite,
 *    delegating bytes to the local store.
 * The API's clients never see file paths, only digests, refs, streams and writers. Inside the daemon the
 * namespaced store asks the local one for a blob's path (blobPath) to remove a blob no namespace records
 * and to check one exists when adopting it; nothing else does.
 */
import type { Readable } from 'node:stream';

/** A digest string such as "sha256:<64 hex>". Validated by parseDigest(). */
export type Digest = string;

export interface ContentInfo {
  digest: Digest;
  size: number;
  createdAt: Date;
  updatedAt: Date;
  /** Always {} from the local store; the namespaced store fills them. */
  labels: Record<string, string>;
}

export interface IngestStatus {
  ref: string;
  /** Bytes written so far: where a resumed writer continues. */
  offset: number;
  /** Expected total size, 0 when unknown. */
  total: number;
  /** Expected digest, "" when unknown. */
  expected: Digest;
  startedAt: Date;
  updatedAt: Date;
}

export interface WriterOptions {
  /** The ingest key. Any non-empty string; it never becomes a path (it is hashed). */
  ref: string;
  /** Expected total size; 0 or undefined when unknown. */
  total?: number;
  /** Expected digest; "" or undefined when unknown. */
  expected?: Digest;
}

export interface CommitOptions {
  labels?: Record<string, string>;
}

/**
 * An open ingest. Exactly one writer per ref exists at a time (a second writer() call for the same ref fails
 * with kind 'unavailable' "ref <ref> locked"). close() releases the lock and keeps the data for a later resume.
 */
export interface ContentWriter {
  readonly ref: string;
  /** Bytes written so far. */
  readonly offset: number;
  status(): Promise<IngestStatus>;
  /** Appends at the current offset, hashing as it goes. */
  write(chunk: Uint8Array): Promise<void>;
  /** Cuts the ingest back to `size` bytes (re-hashing what stays) so writing can resume there. */
  truncate(size: number): Promise<void>;
  /** Digest of the bytes written so far. */
  digest(): Digest;
  /**
   * Verifies size (when > 0) and expected digest (when given; else the writer's own expected digest, if any),
   * fsyncs, and renames the data into place read-only. On mismatch: 'failed precondition' and the ingest stays.
   * If the blob already exists: 'already exists' and the ingest is removed.
   */
  commit(size: number, expected?: Digest, opts?: CommitOptions): Promise<void>;
  /** Releases the ref lock; the ingest stays on disk for a later writer to resume. Idempotent. */
  close(): Promise<void>;
}

export interface ReadOptions {
  offset?: number;
  /** Bytes to read; 0 or undefined means to the end. */
  size?: number;
}

/** Field paths accepted by update(): "labels" (replace all) or "labels.<key>" (set or, if absent, delete). */
export type FieldPaths = string[];

export interface ContentStore {
  info(digest: Digest): Promise<ContentInfo>;
  /** Updates labels per field paths (containerd semantics); empty paths replace all labels. */
  update(info: Pick<ContentInfo, 'digest' | 'labels'>, fieldpaths?: FieldPaths): Promise<ContentInfo>;
  /** Every blob, optionally filtered with containerd's filter syntax (any of the filters matches). */
  list(filters?: string[]): Promise<ContentInfo[]>;
  delete(digest: Digest): Promise<void>;
  /** A stream of the blob's bytes; 'out of range' when offset is past the end. */
  read(digest: Digest, opts?: ReadOptions): Promise<Readable>;
  status(ref: string): Promise<IngestStatus>;
  listStatuses(filters?: string[]): Promise<IngestStatus[]>;
  abort(ref: string): Promise<void>;
  writer(opts: WriterOptions): Promise<ContentWriter>;
}
