/**
 * The metadata store: one SQLite database holding namespaces, content records, ingests and leases (and, as
 * later subsystems arrive, snapshots, images and containers). Callers get small stores, never SQL.
 */
import type { LocalContentStore } from '../content/local.js';
import { discardEvents, type EventPublisher } from '../events/types.js';
import { openDatabase, UniqueNumbers, type DB } from './db.js';
import { NamespaceStore } from './namespaces.js';
import { LeaseStore } from './leases.js';
import { NamespacedContent } from './content.js';
import { NamespacedSnapshots } from './snapshots.js';
import { NamespacedImages } from './images.js';
import type { Snapshotter } from '../snapshots/types.js';

export type { OpContext } from './context.js';
export { requireNamespace } from './context.js';
export type { Namespace } from './namespaces.js';
export { applyLabelPaths, validateLabels } from './namespaces.js';
export type { Lease, LeaseResource } from './leases.js';
export { LABEL_GC_EXPIRE, LABEL_GC_FLAT, generateLeaseId } from './leases.js';
export { validateIdentifier } from './identifiers.js';
export { SCHEMA_VERSION } from './db.js';
export type { NamespacedSnapshots } from './snapshots.js';
export type { NamespacedImages } from './images.js';

export class MetadataStore {
  readonly namespaces: NamespaceStore;
  readonly leases: LeaseStore;
  readonly content: NamespacedContent;
  readonly images: NamespacedImages;
  private readonly numbers: UniqueNumbers;
  /** The namespaced view of each snapshotter, by name. */
  readonly snapshotters = new Map<string, NamespacedSnapshots>();

  private constructor(
    readonly db: DB,
    readonly path: string,
    local: LocalContentStore,
    private readonly events: EventPublisher,
  ) {
    this.numbers = new UniqueNumbers(db);
    this.namespaces = new NamespaceStore(db, events);
    this.leases = new LeaseStore(db, this.namespaces);
    this.content = new NamespacedContent(db, local, this.namespaces, this.leases, events, this.numbers);
    this.images = new NamespacedImages(db, this.namespaces, events);
  }

  static open(path: string, local: LocalContentStore, events: EventPublisher = discardEvents): MetadataStore {
    return new MetadataStore(openDatabase(path), path, local, events);
  }

  /** Puts the namespaced layer in front of a snapshotter backend. */
  addSnapshotter(name: string, backend: Snapshotter): NamespacedSnapshots {
    const ns = new NamespacedSnapshots(name, backend, this.db, this.namespaces, this.leases, this.events, this.numbers);
    this.snapshotters.set(name, ns);
    return ns;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
