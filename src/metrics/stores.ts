/**
 * Strata's own metrics: the content store, snapshots per snapshotter, the garbage collector, pulls and tasks.
 *
 * This folder sits low in the layering (core, log and plugin only), so what it reads of each plugin is typed
 * here by what it needs, and the daemon hands the instances over. Gauges that walk the disk or a database are
 * computed when scraped; a snapshot's usage is remembered once it is committed (it can no longer change).
 */
import type { TextWriter } from './exposition.js';
import { Histogram } from './exposition.js';

export interface ContentSource {
  list(): Promise<{ size: number }[]>;
  listStatuses(): Promise<{ offset: number }[]>;
}

export interface SnapshotSource {
  walk(fn: (info: { name: string; kind: string; created: Date }) => void | Promise<void>): Promise<void>;
  usage(key: string): Promise<{ size: number; inodes: number }>;
}

export interface GCSource {
  metrics(): {
    runs: number;
    pauseMsTotal: number;
    pauseMsLast: number;
    removedObjects: Record<string, number>;
    removedBytes: number;
    lastRunAt?: Date;
  };
}

export interface TaskSource {
  list(ctx: { namespace: string }): { containerId: string; pid: number; status: string }[];
}

export interface NamespaceSource {
  list(): { name: string }[];
}

export interface PullSource {
  onPull(fn: (p: { ok: boolean; seconds: number; bytes: number }) => void): () => void;
}

export interface Sources {
  content?: ContentSource;
  snapshotters?: Map<string, SnapshotSource>;
  gc?: GCSource;
  tasks?: TaskSource;
  namespaces?: NamespaceSource;
  pulls?: PullSource;
}

const SNAPSHOT_KINDS = ['active', 'committed', 'view'] as const;
const TASK_STATUSES = ['created', 'running', 'paused', 'pausing', 'stopped', 'unknown'] as const;
const GC_TYPES = ['content', 'ingest', 'snapshot', 'image', 'lease', 'container'] as const;

/** Pull durations: from a cached manifest to a large image over a slow link. */
export const PULL_BUCKETS: readonly number[] = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

export class StoreMetrics {
  private pulls = { ok: 0, failed: 0, bytes: 0 };
  private readonly pullSeconds = new Histogram(PULL_BUCKETS);
  private readonly unsubscribe: (() => void) | undefined;
  /** Usage of committed snapshots by snapshotter and key (+ creation time, in case a key is reused). */
  private readonly committedUsage = new Map<string, { created: number; size: number; inodes: number }>();

  constructor(private readonly src: Sources) {
    this.unsubscribe = src.pulls?.onPull((p) => {
      if (p.ok) this.pulls.ok++;
      else this.pulls.failed++;
      this.pulls.bytes += p.bytes;
      this.pullSeconds.observe(p.seconds);
    });
  }

  close(): void {
    this.unsubscribe?.();
  }

  async writeContent(w: TextWriter): Promise<void> {
    const content = this.src.content;
    if (!content) return;
    const [blobs, ingests] = await Promise.all([content.list(), content.listStatuses()]);
    w.single('strata_content_blobs', 'gauge', 'Blobs in the content store.', blobs.length);
    w.single('strata_content_bytes', 'gauge', 'Bytes of the blobs in the content store.', blobs.reduce((a, b) => a + b.size, 0));
    w.single('strata_content_ingests', 'gauge', 'Content ingests in progress or left unfinished.', ingests.length);
    w.single('strata_content_ingest_bytes', 'gauge', 'Bytes written so far to the content ingests.', ingests.reduce((a, i) => a + i.offset, 0));
  }

  async writeSnapshots(w: TextWriter): Promise<void> {
    const snapshotters = [...(this.src.snapshotters ?? new Map<string, SnapshotSource>())].sort(([a], [b]) => (a < b ? -1 : 1));
    const counts: [string, Record<string, number>][] = [];
    const usage: [string, { size: number; inodes: number }][] = [];
    const seen = new Set<string>();
    for (const [name, sn] of snapshotters) {
      const byKind: Record<string, number> = { active: 0, committed: 0, view: 0 };
      const infos: { name: string; kind: string; created: Date }[] = [];
      try {
        await sn.walk((info) => void infos.push(info));
      } catch {
        continue; // a backend that cannot list now (a proxy that went away): left out of this scrape
      }
      const total = { size: 0, inodes: 0 };
      for (const info of infos) {
        byKind[info.kind] = (byKind[info.kind] ?? 0) + 1;
        const key = `${name}\0${info.name}`;
        const created = info.created.getTime();
        let u: { size: number; inodes: number } | undefined;
        if (info.kind === 'committed') {
          seen.add(key);
          const cached = this.committedUsage.get(key);
          if (cached && cached.created === created) u = cached;
        }
        if (!u) {
          try {
            u = await sn.usage(info.name);
          } catch {
            continue; // removed while walking
          }
          if (info.kind === 'committed') this.committedUsage.set(key, { created, size: u.size, inodes: u.inodes });
        }
        total.size += u.size;
        total.inodes += u.inodes;
      }
      counts.push([name, byKind]);
      usage.push([name, total]);
    }
    for (const key of this.committedUsage.keys()) if (!seen.has(key)) this.committedUsage.delete(key);

    w.family('strata_snapshots', 'gauge', 'Snapshots by snapshotter and kind.');
    for (const [name, byKind] of counts) {
      for (const kind of SNAPSHOT_KINDS) w.sample('strata_snapshots', [['kind', kind], ['snapshotter', name]], byKind[kind] ?? 0);
    }
    w.family('strata_snapshot_usage_bytes', 'gauge', 'Disk bytes the snapshots of a snapshotter use (each counted alone, without its parents).');
    for (const [name, u] of usage) w.sample('strata_snapshot_usage_bytes', [['snapshotter', name]], u.size);
    w.family('strata_snapshot_usage_inodes', 'gauge', 'Inodes the snapshots of a snapshotter use.');
    for (const [name, u] of usage) w.sample('strata_snapshot_usage_inodes', [['snapshotter', name]], u.inodes);
  }

  writeGC(w: TextWriter): void {
    const gc = this.src.gc;
    if (!gc) return;
    const m = gc.metrics();
    w.single('strata_gc_runs_total', 'counter', 'Garbage collections run (scheduled or requested).', m.runs);
    w.single('strata_gc_pause_seconds_total', 'counter', 'Time the garbage collector held the metadata lock, in total.', m.pauseMsTotal / 1000);
    w.single('strata_gc_last_pause_seconds', 'gauge', 'Time the last garbage collection held the metadata lock.', m.pauseMsLast / 1000);
    w.family('strata_gc_removed_objects_total', 'counter', 'Objects the garbage collector removed, by type.');
    for (const t of GC_TYPES) w.sample('strata_gc_removed_objects_total', [['type', t]], m.removedObjects[t] ?? 0);
    w.single('strata_gc_removed_bytes_total', 'counter', 'Bytes of the blobs and ingests the garbage collector removed.', m.removedBytes);
    if (m.lastRunAt) w.single('strata_gc_last_run_timestamp_seconds', 'gauge', 'When the last garbage collection ended.', m.lastRunAt.getTime() / 1000);
  }

  writePulls(w: TextWriter): void {
    if (!this.src.pulls) return;
    w.family('strata_image_pulls_total', 'counter', 'Image pulls run in the daemon (transfer service), by outcome.');
    w.sample('strata_image_pulls_total', [['outcome', 'success']], this.pulls.ok);
    w.sample('strata_image_pulls_total', [['outcome', 'failure']], this.pulls.failed);
    w.single('strata_image_pull_bytes_total', 'counter', 'Bytes image pulls downloaded from registries.', this.pulls.bytes);
    w.family('strata_image_pull_duration_seconds', 'histogram', 'Duration of image pulls (fetch and unpack).');
    this.pullSeconds.write(w, 'strata_image_pull_duration_seconds', []);
  }

  writeTasks(w: TextWriter): void {
    const { tasks, namespaces } = this.src;
    if (!tasks || !namespaces) return;
    const byStatus: Record<string, number> = {};
    for (const ns of namespaces.list()) {
      for (const t of tasks.list({ namespace: ns.name })) byStatus[t.status] = (byStatus[t.status] ?? 0) + 1;
    }
    w.family('strata_tasks', 'gauge', 'Tasks (init processes) by status.');
    for (const s of TASK_STATUSES) w.sample('strata_tasks', [['status', s]], byStatus[s] ?? 0);
  }
}
