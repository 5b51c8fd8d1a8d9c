/**
 * An in-process Strata store for the collector tests: a real SQLite metadata file, the real local content store
 * and the real overlay snapshotter (registered as "overlayfs"), on a temp directory laid out as stratad's root.
 */
import { existsSync } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { openLocalContentStore, type LocalContentStore } from '../../src/content/local.js';
import type { ContentStore } from '../../src/content/types.js';
import { WalkingDiffer } from '../../src/diff/walking.js';
import { MetadataCollector } from '../../src/gc/index.js';
import type { ImageStore } from '../../src/metadata/images.js';
import { defaultTransferConfig, ImageTransfers } from '../../src/images/transfer.js';
import { silentLogger } from '../../src/log/index.js';
import { MetadataStore, type NamespacedSnapshots } from '../../src/metadata/index.js';
import { openOverlaySnapshotter } from '../../src/snapshots/overlay/index.js';
import type { Info, Snapshotter } from '../../src/snapshots/types.js';
import { isAlreadyExists } from '../../src/core/errdefs.js';
import { sha256 } from '../helpers/data.js';

export const SNAPSHOTTER = 'overlayfs';

export interface Store {
  root: string;
  md: MetadataStore;
  local: LocalContentStore;
  backend: Snapshotter;
  sn: NamespacedSnapshots;
  collector: MetadataCollector;
  content(namespace: string, lease?: string): ContentStore;
  snapshots(namespace: string, lease?: string): Snapshotter;
  images(namespace: string): ImageStore;
  transfers(): ImageTransfers;
  close(): Promise<void>;
}

/** The daemon's own layout under its root, so `strata fsck --root` (test/helpers/fsck.ts) reads a store made here. */
export const paths = (root: string) => ({
  db: join(root, 'io.containerd.metadata.v1.sqlite', 'meta.db'),
  content: join(root, 'io.containerd.content.v1.content'),
  blobs: join(root, 'io.containerd.content.v1.content', 'blobs'),
  ingest: join(root, 'io.containerd.content.v1.content', 'ingest'),
  overlay: join(root, 'io.containerd.snapshotter.v1.overlayfs'),
  snapshotDirs: join(root, 'io.containerd.snapshotter.v1.overlayfs', 'snapshots'),
});

export interface StoreOptions {
  now?: () => number;
  /** Puts something in front of the local content store (to pause or fail its calls). */
  wrapLocal?: (local: LocalContentStore) => LocalContentStore;
  /** Puts something in front of the overlay backend. */
  wrapBackend?: (backend: Snapshotter) => Snapshotter;
}

export async function openStore(root: string, opts: StoreOptions = {}): Promise<Store> {
  const p = paths(root);
  const realLocal = await openLocalContentStore(p.content);
  const local = opts.wrapLocal ? opts.wrapLocal(realLocal) : realLocal;
  const md = MetadataStore.open(p.db, local);
  const realBackend = await openOverlaySnapshotter(p.overlay);
  const backend = opts.wrapBackend ? opts.wrapBackend(realBackend) : realBackend;
  const sn = md.addSnapshotter(SNAPSHOTTER, backend);
  const collector = new MetadataCollector(md, opts.now ? { now: opts.now } : {});
  const ctx = (namespace: string, lease?: string) => (lease ? { namespace, lease } : { namespace });
  return {
    root,
    md,
    local,
    backend,
    sn,
    collector,
    content: (ns, lease) => md.content.bind(ctx(ns, lease)),
    snapshots: (ns, lease) => sn.bind(ctx(ns, lease)),
    images: (ns) => md.images.bind({ namespace: ns }),
    transfers: () => new ImageTransfers(md, new WalkingDiffer({}), defaultTransferConfig(), silentLogger),
    close: async () => {
      await realBackend.close();
      md.close();
    },
  };
}

/**
 * An object whose method `name` is replaced by `fn` (called with the original, bound); every other property
 * reads from the target, methods bound to it.
 */
export function intercept<T extends object, K extends keyof T>(target: T, name: K, fn: T[K]): T {
  return new Proxy(target, {
    get(t, prop) {
      if (prop === name) return fn;
      const v = Reflect.get(t, prop, t) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
}

/** A gate an operation waits at: `entered` resolves when it gets there, `open()` lets it through. */
export function gate(): { wait: () => Promise<void>; entered: Promise<void>; open: () => void } {
  let open!: () => void;
  let arrived!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  const entered = new Promise<void>((r) => (arrived = r));
  return {
    wait: () => {
      arrived();
      return opened;
    },
    entered,
    open,
  };
}

/** Writes and commits a blob; returns its digest. */
export async function writeBlob(content: ContentStore, data: string | Buffer, labels?: Record<string, string>): Promise<string> {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  const digest = sha256(bytes);
  let w;
  try {
    w = await content.writer({ ref: `ref-${digest}`, total: bytes.length, expected: digest });
  } catch (err) {
    if (isAlreadyExists(err)) return digest; // this namespace has it already
    throw err;
  }
  // A blob another namespace has is adopted: the writer starts at its end.
  if (w.offset < bytes.length) await w.write(bytes.subarray(w.offset));
  await w.commit(bytes.length, digest, labels ? { labels } : {});
  await w.close();
  return digest;
}

/** Starts an ingest of `data` and leaves it open (closed writer, data on disk, no commit). */
export async function startIngest(content: ContentStore, ref: string, data: string): Promise<void> {
  const w = await content.writer({ ref });
  await w.write(Buffer.from(data));
  await w.close();
}

export const blobFile = (s: Store, digest: string) => s.local.blobPath(digest);
export const hasBlob = (s: Store, digest: string) => existsSync(s.local.blobPath(digest));

export async function backendInfos(s: Store): Promise<Info[]> {
  const out: Info[] = [];
  await s.backend.walk((i) => void out.push(i));
  return out;
}

export async function backendKeys(s: Store): Promise<string[]> {
  return (await backendInfos(s)).map((i) => i.name).sort();
}

/** The backend key behind a namespaced snapshot record. */
export function backendKeyOf(s: Store, namespace: string, key: string): string | undefined {
  const row = s.md.db
    .prepare('SELECT backend_key FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?')
    .get(namespace, SNAPSHOTTER, key) as { backend_key: string } | undefined;
  return row?.backend_key;
}

/** Bytes of regular files under a directory (what `du --apparent-size` counts, without directories). */
export async function fileBytes(dir: string): Promise<number> {
  let total = 0;
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await fileBytes(p);
    else if (e.isFile()) total += (await lstat(p)).size;
  }
  return total;
}

/** Regular files under a directory, relative paths. */
export async function filesUnder(dir: string, prefix = ''): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const e of entries) {
    if (e.isDirectory()) out.push(...(await filesUnder(join(dir, e.name), `${prefix}${e.name}/`)));
    else out.push(`${prefix}${e.name}`);
  }
  return out;
}

/** Entries directly under a directory. */
export async function entries(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/** Removed objects of a report as "type ns id" strings (snapshots as "snapshot ns snapshotter/key"). */
export function removedIds(report: { removed: { type: string; namespace: string; snapshotter?: string; id: string }[] }): string[] {
  return report.removed.map((r) => `${r.type} ${r.namespace || '-'} ${r.type === 'snapshot' ? `${r.snapshotter}/${r.id}` : r.id}`).sort();
}

/**
 * Invariants a consistent store keeps: every content row has its blob, every snapshot row its backend snapshot
 * (with its directory), every lease resource its lease; no backend snapshot's parent is missing.
 */
export async function inconsistencies(s: Store): Promise<string[]> {
  const problems: string[] = [];
  for (const r of s.md.db.prepare('SELECT namespace, digest FROM content').all() as { namespace: string; digest: string }[]) {
    if (!hasBlob(s, r.digest)) problems.push(`content ${r.namespace} ${r.digest} has no blob`);
  }
  const infos = new Map((await backendInfos(s)).map((i) => [i.name, i]));
  for (const r of s.md.db.prepare('SELECT namespace, key, backend_key FROM snapshots').all() as { namespace: string; key: string; backend_key: string }[]) {
    if (!infos.has(r.backend_key)) problems.push(`snapshot ${r.namespace} ${r.key} has no backend snapshot ${r.backend_key}`);
  }
  for (const r of s.md.db
    .prepare('SELECT r.namespace, r.lease, r.type, r.id FROM lease_resources r LEFT JOIN leases l ON l.namespace = r.namespace AND l.id = r.lease WHERE l.id IS NULL')
    .all() as { namespace: string; lease: string }[]) {
    problems.push(`lease resource of missing lease ${r.namespace} ${r.lease}`);
  }
  for (const i of infos.values()) {
    if (i.parent && !infos.has(i.parent)) problems.push(`backend snapshot ${i.name} has no parent ${i.parent}`);
  }
  return problems;
}
