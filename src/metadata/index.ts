/**
 * The metadata store: one SQLite database holding namespaces, content records, ingests, leases, snapshots,
 * images and containers. Callers get small stores, never SQL; the garbage collector gets plain records and
 * the queries it needs (gc.ts), since src/gc holds the algorithm only.
 */
import type { LocalContentStore } from '../content/local.js';
import { discardEvents, type EventPublisher } from '../events/types.js';
import { openDatabase, UniqueNumbers } from './db.js';
import { type DB } from '../core/sqlite.js';
import { NamespaceStore } from './namespaces.js';
import { LeaseStore } from './leases.js';
import { NamespacedContent } from './content.js';
import { NamespacedSnapshots } from './snapshots.js';
import { GroupCommit } from '../snapshots/storage.js';
import { NamespacedImages } from './images.js';
import { NamespacedContainers } from './containers.js';
import type { Snapshotter } from '../snapshots/types.js';
import type { GCPluginMetadata } from '../gc/types.js';
import { MetadataGC } from './gc.js';

export type { OpContext } from './context.js';
export { requireNamespace } from './context.js';
export type { Namespace } from './namespaces.js';
export type { Lease, LeaseResource } from './leases.js';
export { generateLeaseId } from './leases.js';
export { SCHEMA_VERSION } from './db.js';
export type { NamespacedSnapshots } from './snapshots.js';
export type { NamespacedImages } from './images.js';
export type { NamespacedContainers, Container, ContainerStore, ContainerInput, AnyValue } from './containers.js';

export class MetadataStore implements GCPluginMetadata {
  readonly namespaces: NamespaceStore;
  readonly leases: LeaseStore;
  readonly content: NamespacedContent;
  readonly images: NamespacedImages;
  readonly containers: NamespacedContainers;
  /** What the garbage collector reads and deletes (src/gc's algorithm never sees SQL). */
  readonly gc: MetadataGC;
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
    const notify = (deletion: boolean) => this.notifyMutation(deletion);
    this.leases = new LeaseStore(db, this.namespaces, notify);
    this.content = new NamespacedContent(db, local, this.namespaces, this.leases, events, this.numbers, notify);
    this.images = new NamespacedImages(db, this.namespaces, events, notify);
    this.containers = new NamespacedContainers(db, this.namespaces, events, notify);
    this.gc = new MetadataGC(db);
  }

  private readonly mutationListeners = new Set<(deletion: boolean) => void>();

  /**
   * Calls `fn` after every committed write of the stores (containerd's mutation callbacks, the GC scheduler's
   * feed): `deletion` is true when the write removed something (a record, a lease, a lease resource), which may
   * have left objects unreferenced. Returns a function that unregisters it.
   */
  onMutation(fn: (deletion: boolean) => void): () => void {
    this.mutationListeners.add(fn);
    return () => this.mutationListeners.delete(fn);
  }

  /** Called by the stores after a write transaction committed. A listener's failure never fails the write. */
  notifyMutation(deletion: boolean): void {
    for (const fn of this.mutationListeners) {
      try {
        fn(deletion);
      } catch {
        // The feed is advisory: the write has committed whatever a listener does.
      }
    }
  }

  static open(path: string, local: LocalContentStore, events: EventPublisher = discardEvents): MetadataStore {
    return new MetadataStore(openDatabase(path), path, local, events);
  }

  /** Puts the namespaced layer in front of a snapshotter backend. */
  addSnapshotter(name: string, backend: Snapshotter): NamespacedSnapshots {
    const ns = new NamespacedSnapshots(name, backend, this.db, this.namespaces, this.leases, this.events, this.numbers, (d) =>
      this.notifyMutation(d),
    );
    this.snapshotters.set(name, ns);
    return ns;
  }

  close(): void {
    GroupCommit.release(this.db);
    if (this.db.open) this.db.close();
  }
}
