/**
 * The namespaced content store: per-namespace records, labels and lease attachment in SQLite, bytes in the
 * shared local store. It follows containerd's "shared" content policy: a writer whose expected digest is
 * already on disk (committed by another namespace) adopts the blob without receiving its bytes again.
 *
 * Backend ingest refs are "<namespace>/<sequence>/<ref>", so two namespaces may use the same ref and an
 * ingest survives a daemon restart (the row keeps the mapping; the data is in the local store).
 */
import { existsSync, unlinkSync } from 'node:fs';
import { crashPoint } from '../core/crashpoint.js';
import type { Readable } from 'node:stream';
import {
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  isAlreadyExists,
  isNotFound,
  notFound,
  StrataError,
} from '../core/errdefs.js';
import { adapt, labelField, parseAll } from '../filters/index.js';
import { typedEvent, type EventPublisher } from '../events/types.js';
import { parseDigest } from '../content/digest.js';
import type { LocalContentStore } from '../content/local.js';
import type {
  CommitOptions,
  ContentInfo,
  ContentStore,
  ContentWriter,
  Digest,
  IngestStatus,
  ReadOptions,
  WriterOptions,
} from '../content/types.js';
import { type UniqueNumbers } from './db.js';
import { type DB } from '../core/sqlite.js';
import { encodeLabels, parseLabels } from '../core/labels.js';
import { type NamespaceStore } from './namespaces.js';
import { applyLabelPaths, compactLabels, validateLabelEntries, validateLabels } from '../core/labels.js';
import type { LeaseStore } from './leases.js';
import { GroupCommit } from '../snapshots/storage.js';
import type { OpContext } from './context.js';
import { fromParts, now as nowTime } from '../core/time.js';

/** Ingests not protected by a lease become collectable this long after they start (containerd's rule). */
const UNLEASED_INGEST_TTL_MS = 24 * 60 * 60 * 1000;

interface ContentRow {
  digest: string;
  size: number;
  labels: string;
  created_at: number;
  created_ns: number;
  updated_at: number;
  updated_ns: number;
}

interface IngestRow {
  ref: string;
  backend_ref: string;
  shared_digest: string | null;
  shared_size: number | null;
  created_at: number;
  created_ns: number;
}

const toInfo = (r: ContentRow): ContentInfo => ({
  digest: r.digest,
  size: r.size,
  labels: parseLabels(r.labels),
  createdAt: fromParts(r.created_at, r.created_ns),
  updatedAt: fromParts(r.updated_at, r.updated_ns),
});

export class NamespacedContent {
  /**
   * Blobs a writer is committing right now, with how many writers commit each. From the moment a writer asks
   * the local store to commit until its record is in, the blob may be one it found already on disk (another
   * writer's, or an orphan): a collection must not unlink it in between. containerd gets the same guarantee
   * from the content store's lock, held shared by each commit and exclusively by the collector's sweep.
   */
  private readonly committing = new Map<Digest, number>();

  /** Whether a writer is committing this blob now (the collector keeps it: its record is about to appear). */
  isCommitting(digest: Digest): boolean {
    return this.committing.has(digest);
  }

  /** Keeps `digest` from the collector until the returned function is called. Synchronous on purpose. */
  pinForCommit(digest: Digest): () => void {
    this.committing.set(digest, (this.committing.get(digest) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.committing.get(digest) ?? 1) - 1;
      if (n <= 0) this.committing.delete(digest);
      else this.committing.set(digest, n);
    };
  }

  constructor(
    readonly db: DB,
    readonly local: LocalContentStore,
    readonly namespaces: NamespaceStore,
    readonly leases: LeaseStore,
    readonly events: EventPublisher,
    readonly numbers: UniqueNumbers,
    readonly notifyMutation: (deletion: boolean) => void = () => {},
  ) {
    this.commits = GroupCommit.of(db);
  }

  /**
   * The records of ingests and commits are written without a sync on the event loop and made durable (one
   * fdatasync shared by the concurrent callers, on the thread pool) before the call answers: a pull's dozens of
   * records each blocked the whole daemon for an fdatasync, slowest while an unpack wrote files beside them.
   */
  readonly commits: GroupCommit;

  /** A ContentStore seen from one namespace (and lease). */
  bind(ctx: OpContext): ContentStore {
    return new BoundContentStore(this, ctx);
  }

  /**
   * Whether the blob may go from disk: no namespace records it, no lease names it, no commit is writing it.
   * Asked inside the transaction that drops its last record; the caller unlinks it (unlinkBlob) synchronously
   * right after that transaction commits, with nothing in between, so a concurrent adoption (which checks the
   * file in its own transaction) cannot record a blob that is about to vanish. Not inside the transaction: a
   * crash between the unlink and the commit would roll the record back and leave it without its blob.
   */
  blobUnused(digest: Digest): boolean {
    const used =
      this.db.prepare('SELECT 1 FROM content WHERE digest = ? LIMIT 1').get(digest) ??
      this.db.prepare("SELECT 1 FROM lease_resources WHERE type = 'content' AND id = ? LIMIT 1").get(digest) ??
      this.db.prepare('SELECT 1 FROM ingests WHERE shared_digest = ? LIMIT 1').get(digest);
    return !used && !this.isCommitting(digest);
  }

  /** Removes a blob blobUnused() let go; a failure leaves an orphan for the collector, never a broken record. */
  unlinkBlob(digest: Digest): void {
    try {
      crashPoint('content.delete.before-unlink');
      unlinkSync(this.local.blobPath(digest));
      crashPoint('content.delete.after-unlink');
    } catch {
      // gone already, or it stays as an orphan that a collection removes
    }
  }
}

function checkedDigest(d: string): Digest {
  parseDigest(d);
  return d;
}

class BoundContentStore implements ContentStore {
  private readonly ns: string;

  constructor(
    private readonly c: NamespacedContent,
    private readonly ctx: OpContext,
  ) {
    this.ns = ctx.namespace;
  }

  private row(digest: Digest): ContentRow | undefined {
    return this.c.db
      .prepare('SELECT digest, size, labels, created_at, created_ns, updated_at, updated_ns FROM content WHERE namespace = ? AND digest = ?')
      .get(this.ns, digest) as ContentRow | undefined;
  }

  async info(digest: Digest): Promise<ContentInfo> {
    const row = this.row(checkedDigest(digest));
    if (!row) throw notFound(`content ${digest}`);
    return toInfo(row);
  }

  async update(info: Pick<ContentInfo, 'digest' | 'labels'>, fieldpaths: string[] = []): Promise<ContentInfo> {
    checkedDigest(info.digest);
    validateLabelEntries(info.labels);
    const updated = this.c.commits.write(() => {
      const row = this.row(info.digest);
      if (!row) throw notFound(`content ${info.digest}`);
      const labels = applyLabelPaths(parseLabels(row.labels), info.labels ?? {}, fieldpaths);
      validateLabels(labels); // what the record would hold (the limits of one object); a throw rolls back
      const now = nowTime();
      this.c.db
        .prepare('UPDATE content SET labels = ?, updated_at = ?, updated_ns = ? WHERE namespace = ? AND digest = ?')
        .run(encodeLabels(labels), now.getTime(), now.subMs, this.ns, info.digest);
      return { ...toInfo(row), labels, updatedAt: now };
    });
    await this.c.commits.durable();
    this.c.notifyMutation(false);
    return updated;
  }

  async list(filters: string[] = []): Promise<ContentInfo[]> {
    const filter = parseAll(filters);
    const rows = this.c.db
      .prepare('SELECT digest, size, labels, created_at, created_ns, updated_at, updated_ns FROM content WHERE namespace = ? ORDER BY digest')
      .all(this.ns) as ContentRow[];
    return rows.map(toInfo).filter((info) =>
      filter.match(
        adapt((path) => {
          if (path.length === 1 && path[0] === 'digest') return info.digest;
          // containerd's adaptor has no size (a TODO there): a filter on it matches nothing.
          if (path[0] === 'labels') return labelField(info.labels, path.slice(1));
          return undefined;
        }),
      ),
    );
  }

  async delete(digest: Digest): Promise<void> {
    checkedDigest(digest);
    crashPoint('content.delete.before-record');
    const unused = this.c.db.transaction(() => {
      const res = this.c.db.prepare('DELETE FROM content WHERE namespace = ? AND digest = ?').run(this.ns, digest);
      if (res.changes === 0) throw notFound(`content ${digest}`);
      this.c.db.prepare("DELETE FROM lease_resources WHERE namespace = ? AND type = 'content' AND id = ?").run(this.ns, digest);
      return this.c.blobUnused(digest);
    }).immediate();
    crashPoint('content.delete.after-record');
    // Synchronously after the commit: nothing can record the blob in between.
    if (unused) this.c.unlinkBlob(digest);
    this.c.notifyMutation(true);
    this.c.events.publish(this.ns, '/content/delete', typedEvent('containerd.events.ContentDelete', { digest }));
  }

  async read(digest: Digest, opts: ReadOptions = {}): Promise<Readable> {
    if ((opts.offset ?? 0) < 0 || (opts.size ?? 0) < 0) throw invalidArgument('offset and size must not be negative');
    if (!this.row(checkedDigest(digest))) throw notFound(`content ${digest}`);
    return this.c.local.read(digest, opts);
  }

  private ingestRow(ref: string): IngestRow | undefined {
    return this.c.db
      .prepare('SELECT ref, backend_ref, shared_digest, shared_size, created_at, created_ns FROM ingests WHERE namespace = ? AND ref = ?')
      .get(this.ns, ref) as IngestRow | undefined;
  }

  private async statusOf(row: IngestRow): Promise<IngestStatus> {
    try {
      const st = await this.c.local.status(row.backend_ref);
      return { ...st, ref: row.ref };
    } catch (err) {
      if (!isNotFound(err) || row.shared_digest === null) throw err;
      const at = fromParts(row.created_at, row.created_ns);
      const size = row.shared_size ?? 0;
      return { ref: row.ref, offset: size, total: size, expected: row.shared_digest, startedAt: at, updatedAt: at };
    }
  }

  async status(ref: string): Promise<IngestStatus> {
    const row = this.ingestRow(ref);
    if (!row) throw notFound(`ingest ref "${ref}"`);
    return this.statusOf(row);
  }

  async listStatuses(filters: string[] = []): Promise<IngestStatus[]> {
    const filter = parseAll(filters);
    const rows = this.c.db
      .prepare('SELECT ref, backend_ref, shared_digest, shared_size, created_at, created_ns FROM ingests WHERE namespace = ? ORDER BY ref')
      .all(this.ns) as IngestRow[];
    const out: IngestStatus[] = [];
    for (const row of rows) {
      const match = filter.match(adapt((p) => (p.length === 1 && p[0] === 'ref' ? row.ref : undefined)));
      if (!match) continue;
      try {
        out.push(await this.statusOf(row));
      } catch (err) {
        // A row whose data vanished (crash before the first byte reached disk) is not an active ingest.
        if (!isNotFound(err)) throw err;
      }
    }
    return out;
  }

  async abort(ref: string): Promise<void> {
    const row = this.ingestRow(ref);
    if (!row) throw notFound(`ingest ref "${ref}"`);
    try {
      await this.c.local.abort(row.backend_ref);
    } catch (err) {
      if (!isNotFound(err)) throw err; // no data yet: the row goes all the same
    }
    crashPoint('content.abort.before-record');
    this.c.db.transaction(() => {
      this.c.db.prepare('DELETE FROM ingests WHERE namespace = ? AND ref = ?').run(this.ns, ref);
      this.c.db
        .prepare("DELETE FROM lease_resources WHERE namespace = ? AND type = 'ingests' AND id = ?")
        .run(this.ns, ref);
    }).immediate();
    crashPoint('content.abort.after-record');
    this.c.notifyMutation(false);
  }

  async writer(opts: WriterOptions): Promise<ContentWriter> {
    const ref = opts.ref;
    if (!ref) throw invalidArgument('ref must not be empty');
    const total = opts.total ?? 0;
    if (total < 0) throw invalidArgument('total must not be negative');
    const expected = opts.expected ? checkedDigest(opts.expected) : '';

    let shared: { digest: Digest; size: number } | undefined;
    if (expected) {
      // Adoption check outside the transaction (it stats a file); re-checked at commit.
      const onDisk = await this.c.local.info(expected).catch(() => undefined);
      if (onDisk && (total === 0 || total === onDisk.size)) shared = { digest: expected, size: onDisk.size };
    }

    const { backendRef, exists } = this.c.commits.write(() => {
      // Adopt only a blob still there: a collection may have removed it since it was seen (it unlinks inside
      // its own synchronous check, so from here on the ingest row below keeps the blob).
      if (shared && !existsSync(this.c.local.blobPath(shared.digest))) shared = undefined;
      this.c.namespaces.ensure(this.ns);
      if (expected && this.row(expected)) {
        // Already here: the caller's lease still takes it, so a pull under a lease keeps what it found.
        this.c.leases.attach(this.ctx, 'content', expected);
        return { backendRef: '', exists: true };
      }
      let row = this.ingestRow(ref);
      if (!row) {
        const created = nowTime();
        const seq = this.c.numbers.next();
        const backend = `${this.ns}/${seq}/${ref}`;
        this.c.db
          .prepare(
            'INSERT INTO ingests (namespace, ref, backend_ref, shared_digest, shared_size, expires_at, created_at, created_ns) VALUES (?, ?, ?, NULL, NULL, NULL, ?, ?)',
          )
          .run(this.ns, ref, backend, created.getTime(), created.subMs);
        row = this.ingestRow(ref)!;
      }
      const leased = this.c.leases.attach(this.ctx, 'ingests', ref);
      this.c.db
        .prepare('UPDATE ingests SET expires_at = ?, shared_digest = ?, shared_size = ? WHERE namespace = ? AND ref = ?')
        .run(
          leased ? null : Date.now() + UNLEASED_INGEST_TTL_MS,
          shared?.digest ?? null,
          shared?.size ?? null,
          this.ns,
          ref,
        );
      return { backendRef: row.backend_ref, exists: false };
    });
    await this.c.commits.durable();
    this.c.notifyMutation(false);
    if (exists) throw alreadyExists(`content ${expected}`);

    const inner = shared ? undefined : await this.c.local.writer({ ref: backendRef, total });
    if (inner && expected && this.row(expected)) {
      // Another writer of this ref committed the blob while this one waited for the ref's lock: what it took is
      // a new, empty ingest. Answer as if the blob had been there at open (containerd's ALREADY_EXISTS), rather
      // than have the caller fetch the whole blob again.
      await inner.close();
      this.c.commits.write(() => this.c.leases.attach(this.ctx, 'content', expected));
      await this.c.commits.durable();
      // The committing writer dropped the ingest's record; the empty backend ingest the lock made goes too.
      if (this.ingestRow(ref)?.backend_ref !== backendRef) await this.c.local.abort(backendRef).catch(() => undefined);
      throw alreadyExists(`content ${expected}`);
    }
    return new NamespacedWriter(this.c, this.ctx, ref, backendRef, total, inner, shared);
  }
}

class NamespacedWriter implements ContentWriter {
  private readonly startedAt = nowTime();

  constructor(
    private readonly c: NamespacedContent,
    private readonly ctx: OpContext,
    readonly ref: string,
    private readonly backendRef: string,
    private readonly total: number,
    private inner: ContentWriter | undefined,
    private readonly shared: { digest: Digest; size: number } | undefined,
  ) {}

  get offset(): number {
    return this.inner ? this.inner.offset : (this.shared?.size ?? 0);
  }

  async status(): Promise<IngestStatus> {
    if (this.inner) return { ...(await this.inner.status()), ref: this.ref };
    const size = this.shared?.size ?? 0;
    return {
      ref: this.ref,
      offset: size,
      total: size,
      expected: this.shared?.digest ?? '',
      startedAt: this.startedAt,
      updatedAt: this.startedAt,
    };
  }

  /** Leaves adoption mode: copy the first `size` bytes of the shared blob into a real ingest. */
  private async unshare(size: number): Promise<ContentWriter> {
    const w = await this.c.local.writer({ ref: this.backendRef, total: this.total });
    try {
      if (size > 0 && this.shared) {
        const src = await this.c.local.read(this.shared.digest, { offset: 0, size });
        for await (const chunk of src) await w.write(chunk as Buffer);
      }
    } catch (err) {
      await w.close();
      throw err;
    }
    this.inner = w;
    return w;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (!this.inner) {
      if (chunk.length === 0) return;
      await this.unshare(this.shared?.size ?? 0);
    }
    await this.inner!.write(chunk);
  }

  async truncate(size: number): Promise<void> {
    if (this.inner) return this.inner.truncate(size);
    await this.unshare(size);
  }

  digest(): Digest {
    return this.inner ? this.inner.digest() : (this.shared?.digest ?? '');
  }

  async commit(size: number, expected?: Digest, opts: CommitOptions = {}): Promise<void> {
    validateLabels(opts.labels);
    if (expected) checkedDigest(expected);
    // Pinned before the local store looks for the blob, released once the record is in (or the commit failed).
    const unpin = this.c.pinForCommit(this.digest());
    try {
      await this.commitPinned(size, expected, opts);
    } finally {
      unpin();
    }
  }

  private async commitPinned(size: number, expected: Digest | undefined, opts: CommitOptions): Promise<void> {
    let actual: Digest;
    let finalSize: number;
    if (!this.inner) {
      const s = this.shared!;
      if (size !== 0 && size !== s.size) {
        throw failedPrecondition(`"${this.ref}" failed size validation: ${s.size} != ${size}`);
      }
      if (expected && expected !== s.digest) throw failedPrecondition(`"${this.ref}" unexpected digest`);
      actual = s.digest;
      finalSize = s.size;
    } else {
      const offset = this.inner.offset;
      if (size !== 0 && size !== offset) {
        throw failedPrecondition(`"${this.ref}" failed size validation: ${offset} != ${size}`);
      }
      try {
        await this.inner.commit(offset, expected);
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
      }
      actual = this.inner.digest();
      finalSize = offset;
    }

    let innerErr: StrataError | undefined;
    crashPoint('content.commit.before-record');
    this.c.commits.write(() => {
      // Recheck the file inside the transaction: a concurrent delete unlinks inside its own transaction.
      if (!existsSync(this.c.local.blobPath(actual))) {
        throw failedPrecondition(`content ${actual} was removed while "${this.ref}" was being committed; write it again`);
      }
      this.c.namespaces.ensure(this.ctx.namespace);
      const now = nowTime();
      const res = this.c.db
        .prepare(
          'INSERT OR IGNORE INTO content (namespace, digest, size, labels, created_at, created_ns, updated_at, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
        )
        .run(this.ctx.namespace, actual, finalSize, encodeLabels(compactLabels(opts.labels)), now.getTime(), now.subMs, now.getTime(), now.subMs);
      if (res.changes === 0) innerErr = alreadyExists(`content ${actual}`);
      this.c.db.prepare('DELETE FROM ingests WHERE namespace = ? AND ref = ?').run(this.ctx.namespace, this.ref);
      this.c.leases.detach(this.ctx, 'ingests', this.ref);
      this.c.leases.attach(this.ctx, 'content', actual);
    });
    await this.c.commits.durable();
    crashPoint('content.commit.after-record');
    this.c.notifyMutation(false);
    if (innerErr) throw innerErr;
    // containerd 2.1's /content/create: once per new record in a namespace (a blob adopted from another
    // namespace counts, a commit answered ALREADY_EXISTS does not), after the record is in.
    this.c.events.publish(this.ctx.namespace, '/content/create', typedEvent('containerd.events.ContentCreate', { digest: actual, size: finalSize }));
  }

  async close(): Promise<void> {
    await this.inner?.close();
  }
}
