/**
 * strata du: where a namespace's disk goes, and what holds what no image uses.
 *
 *   strata du [--snapshotter NAME]... [-b] [--json]
 *
 * Everything is read through containerd's own API (images, content list/statuses, snapshots list/usage,
 * containers, leases and their resources, introspection for the snapshotters), so it works against containerd
 * too. The records are put into the garbage collector's reference graph (src/gc/graph.ts, containerd's model):
 *
 *  - an image holds what it reaches: its target, the manifests and blobs its gc.ref.content labels name, the
 *    snapshot its config's gc.ref.snapshot.<snapshotter> label names and that snapshot's parents. A blob or
 *    snapshot two images reach is *shared*; the rest of an image's objects are *unique* to it (what removing
 *    that image alone would free);
 *  - what no image reaches is an *orphan*. For each, the first reference path the collector would follow tells
 *    why it is kept (a lease, a gc.root label, a container's snapshot, an ingest that has not expired, a gc.ref
 *    label of a kept object...), or that nothing keeps it (the next collection removes it).
 *
 * docs/gc.md has the JSON fields.
 */
import { NAMESPACE_HEADER } from '../api/headers.js';
import type { StrataClient } from '../api/clients/strata.js';
import { Kind } from '../api/gen/containerd/services/snapshots/v1/snapshots.js';
import { isNotFound } from '../core/errdefs.js';
import { RefGraph } from '../gc/graph.js';
import type { GCEdge, GCObject, Records } from '../gc/types.js';
import { bool, CliError, type Command, type Values } from './command.js';
import { humanSize, printJson, table, write } from './output.js';
import { pluginStatus } from './plugins.js';
import { kindName } from './snapshots.js';

const SNAPSHOTTER_PLUGIN = 'io.containerd.snapshotter.v1';
/** containerd gives an ingest without a lease 24 hours (metadata/content.go); after that GC may remove it. */
const INGEST_TTL_MS = 24 * 3600 * 1000;

// ---- what is read ----

export interface DuInput {
  namespace: string;
  /** Milliseconds since the epoch: lease and ingest expiries are judged against it. */
  now: number;
  images: { name: string; digest: string; labels: Record<string, string> }[];
  content: { digest: string; size: number; labels: Record<string, string> }[];
  ingests: { ref: string; offset: number; total: number; expected: string; startedAt?: Date; updatedAt?: Date }[];
  /** The snapshotters read (in order), even those without snapshots. */
  snapshotters: string[];
  snapshots: { snapshotter: string; key: string; parent: string; kind: string; labels: Record<string, string>; size: number; inodes: number }[];
  containers: { id: string; snapshotter: string; snapshotKey: string; labels: Record<string, string> }[];
  leases: { id: string; labels: Record<string, string>; resources: { type: string; id: string }[] }[];
  /** For blobs the other namespaces record too (the content store keeps one file for all): digest -> namespaces. */
  elsewhere?: Record<string, string[]>;
}

// ---- what is reported (the JSON output; docs/gc.md) ----

export interface Usage {
  count: number;
  /** Bytes of all of them. */
  size: number;
  /** Bytes of those no other image holds. */
  unique: number;
  /** Bytes of those another image holds too. */
  shared: number;
}

export interface ImageUsage {
  name: string;
  digest: string;
  content: Usage;
  snapshots: Usage;
  /** content + snapshots. */
  size: number;
  unique: number;
  shared: number;
}

export interface KeptBy {
  /** Why the first object of the path is a root, as `strata gc why` says it ("lease tmp", "label containerd.io/gc.root", "container"...). */
  root: string;
  /** From that root to the object; empty when the object is itself the root. */
  path: { from: string; to: string; reason: string }[];
  /** One line for people. */
  summary: string;
}

export interface Orphan {
  type: 'content' | 'snapshot' | 'ingest';
  /** A digest (content), `<snapshotter>/<key>` (snapshot) or a ref (ingest). */
  id: string;
  /** Bytes on disk: the blob's size, the snapshot's usage, the bytes an ingest has written. */
  size: number;
  /** What keeps it, or null: nothing does, the next garbage collection removes it. */
  keptBy: KeptBy | null;
  /**
   * Other namespaces that record the same blob (content only; [] otherwise): the blob file stays on disk while
   * any of them does, even when this namespace lets go of it.
   */
  alsoIn: string[];
}

export interface DuReport {
  namespace: string;
  images: ImageUsage[];
  /** Per snapshotter: the namespace's snapshots, their usage and inodes. */
  snapshotters: { name: string; count: number; size: number; inodes: number }[];
  /** Every blob of the namespace. */
  content: { count: number; size: number };
  /** Held by at least one image: every byte once. */
  imagesTotal: { size: number; unique: number; shared: number };
  /** Blobs, snapshots and ingests no image holds. */
  orphans: Orphan[];
  /** Bytes of the orphans that nothing keeps and no other namespace records (what a garbage collection would free now). */
  reclaimable: number;
}

/** "content sha256:…", "snapshot overlayfs/key", "lease tmp", "container c1". */
export function objectName(o: GCObject): string {
  return `${o.type} ${o.type === 'snapshot' ? `${o.snapshotter}/${o.id}` : o.id}`;
}

/** An object for a one-line summary: digests cut to 12 hex digits, as ctr's progress shows them. */
const shortName = (o: GCObject): string => objectName(o).replace(/(sha256:[0-9a-f]{12})[0-9a-f]{52}/g, '$1');

/**
 * One line for people: "lease tmp"; "snapshot of container c1"; "containerd.io/gc.ref.content.l0 of content
 * sha256:0123456789ab (label containerd.io/gc.root)"; "parent of snapshot overlayfs/x, kept by container c1".
 */
export function keptSummary(root: string, path: GCEdge[]): string {
  if (path.length === 0) return root;
  const last = path.at(-1)!;
  const first = path[0]!.from;
  const ownRoot = root === 'image' || root === 'container';
  const head = `${last.reason} of ${shortName(last.from)}`;
  if (path.length === 1) return ownRoot ? head : `${head} (${root})`;
  return `${head}, kept by ${ownRoot ? shortName(first) : `${root} on ${shortName(first)}`}`;
}

/** Whether a collection now would free the orphan's bytes: nothing keeps it and no other namespace records it. */
const freed = (o: Orphan): boolean => o.keptBy === null && o.alsoIn.length === 0;

const emptyUsage = (): Usage => ({ count: 0, size: 0, unique: 0, shared: 0 });

/** The report, from records read by gather() (or built by a test). */
export function diskUsage(input: DuInput): DuReport {
  const ns = input.namespace;
  const leasedIngests = new Set(input.leases.flatMap((l) => l.resources.filter((r) => r.type === 'ingests').map((r) => r.id)));
  const records: Records = {
    now: input.now,
    content: input.content.map((c) => ({ namespace: ns, digest: c.digest, size: c.size, labels: c.labels })),
    ingests: input.ingests.map((i) => {
      const started = (i.startedAt ?? i.updatedAt)?.getTime() ?? input.now;
      return { namespace: ns, ref: i.ref, backendRef: i.ref, sharedDigest: null, expiresAt: leasedIngests.has(i.ref) ? null : started + INGEST_TTL_MS, createdAt: started };
    }),
    snapshots: input.snapshots.map((s) => ({ namespace: ns, snapshotter: s.snapshotter, key: s.key, backendKey: s.key, parent: s.parent, kind: s.kind, labels: s.labels })),
    images: input.images.map((im) => ({ namespace: ns, name: im.name, targetDigest: im.digest, labels: im.labels })),
    containers: input.containers.map((c) => ({ namespace: ns, id: c.id, snapshotter: c.snapshotter, snapshotKey: c.snapshotKey, labels: c.labels })),
    leases: input.leases.map((l) => ({ namespace: ns, id: l.id, labels: l.labels, resources: l.resources })),
  };
  const graph = new RefGraph(records);
  const mark = graph.mark();

  // Node number -> bytes and kind, for the objects that take disk space.
  const sizeOf = new Map<number, { kind: 'content' | 'snapshot'; size: number }>();
  input.content.forEach((c, i) => sizeOf.set(graph.nodesOf.content[i]!, { kind: 'content', size: c.size }));
  input.snapshots.forEach((s, i) => sizeOf.set(graph.nodesOf.snapshots[i]!, { kind: 'snapshot', size: s.size }));

  // What each image reaches, and how many images reach each object.
  const held = input.images.map((im) => {
    const n = graph.nodeOf({ type: 'image', namespace: ns, id: im.name });
    return n === undefined ? new Set<number>() : graph.reachableFrom(n);
  });
  const holders = new Map<number, number>();
  for (const set of held) for (const n of set) if (sizeOf.has(n)) holders.set(n, (holders.get(n) ?? 0) + 1);

  const images: ImageUsage[] = input.images.map((im, i) => {
    const content = emptyUsage();
    const snapshots = emptyUsage();
    for (const n of held[i]!) {
      const s = sizeOf.get(n);
      if (!s) continue;
      const u = s.kind === 'content' ? content : snapshots;
      u.count++;
      u.size += s.size;
      if (holders.get(n)! > 1) u.shared += s.size;
      else u.unique += s.size;
    }
    return {
      name: im.name,
      digest: im.digest,
      content,
      snapshots,
      size: content.size + snapshots.size,
      unique: content.unique + snapshots.unique,
      shared: content.shared + snapshots.shared,
    };
  });
  const imagesTotal = { size: 0, unique: 0, shared: 0 };
  for (const [n, count] of holders) {
    const size = sizeOf.get(n)!.size;
    imagesTotal.size += size;
    if (count > 1) imagesTotal.shared += size;
    else imagesTotal.unique += size;
  }

  const snapshotters = input.snapshotters.map((name) => {
    const mine = input.snapshots.filter((s) => s.snapshotter === name);
    return { name, count: mine.length, size: mine.reduce((a, s) => a + s.size, 0), inodes: mine.reduce((a, s) => a + s.inodes, 0) };
  });

  const keptBy = (object: GCObject): KeptBy | null => {
    const w = mark.why(object);
    if (!w.reachable) return null;
    const root = w.root ?? 'root';
    return {
      root,
      path: w.path.map((e) => ({ from: objectName(e.from), to: objectName(e.to), reason: e.reason })),
      summary: keptSummary(root, w.path),
    };
  };
  const orphans: Orphan[] = [];
  input.content.forEach((c, i) => {
    if (holders.has(graph.nodesOf.content[i]!)) return;
    const alsoIn = [...(input.elsewhere?.[c.digest] ?? [])].sort();
    orphans.push({ type: 'content', id: c.digest, size: c.size, keptBy: keptBy({ type: 'content', namespace: ns, id: c.digest }), alsoIn });
  });
  input.snapshots.forEach((s, i) => {
    if (holders.has(graph.nodesOf.snapshots[i]!)) return;
    const object: GCObject = { type: 'snapshot', namespace: ns, snapshotter: s.snapshotter, id: s.key };
    orphans.push({ type: 'snapshot', id: `${s.snapshotter}/${s.key}`, size: s.size, keptBy: keptBy(object), alsoIn: [] });
  });
  for (const ig of input.ingests) {
    orphans.push({ type: 'ingest', id: ig.ref, size: ig.offset, keptBy: keptBy({ type: 'ingest', namespace: ns, id: ig.ref }), alsoIn: [] });
  }

  return {
    namespace: ns,
    images,
    snapshotters,
    content: { count: input.content.length, size: input.content.reduce((a, c) => a + c.size, 0) },
    imagesTotal: imagesTotal,
    orphans,
    reclaimable: orphans.filter(freed).reduce((a, o) => a + o.size, 0),
  };
}

// ---- reading it through the API ----

/** The snapshotters to read: the ones named, else every snapshotter plugin that loaded. */
async function snapshotterNames(c: StrataClient, named: string[]): Promise<string[]> {
  if (named.length > 0) return named;
  const { plugins } = await c.call(c.introspection, c.introspection.plugins, { filters: [] });
  return plugins.filter((p) => p.type === SNAPSHOTTER_PLUGIN && pluginStatus(p) === 'ok').map((p) => p.id);
}

const kindOf = (k: Kind): string => kindName(k).toLowerCase();

/** Reads the namespace's records with containerd's API calls. */
export async function gather(c: StrataClient, namespace: string, named: string[]): Promise<DuInput> {
  const now = Date.now();
  const { images } = await c.call(c.images, c.images.list, { filters: [] });
  const content = (await c.collect(c.content.list({ filters: [] }, c.metadata()))).flatMap((r) => r.info);
  const { statuses } = await c.call(c.content, c.content.listStatuses, { filters: [] });
  const snapshotters = await snapshotterNames(c, named);
  const snapshots: DuInput['snapshots'] = [];
  for (const snapshotter of snapshotters) {
    const infos = (await c.collect(c.snapshots.list({ snapshotter, filters: [] }, c.metadata()))).flatMap((r) => r.info);
    for (const i of infos) {
      let usage: { size: number; inodes: number };
      try {
        usage = await c.call(c.snapshots, c.snapshots.usage, { snapshotter, key: i.name });
      } catch (err) {
        if (isNotFound(err)) continue; // removed since the listing
        throw err;
      }
      snapshots.push({ snapshotter, key: i.name, parent: i.parent, kind: kindOf(i.kind), labels: i.labels, size: usage.size, inodes: usage.inodes });
    }
  }
  const { containers } = await c.call(c.containers, c.containers.list, { filters: [] });
  const { leases } = await c.call(c.leases, c.leases.list, { filters: [] });
  const withResources: DuInput['leases'] = [];
  for (const l of leases) {
    let resources: { type: string; id: string }[] = [];
    try {
      resources = (await c.call(c.leases, c.leases.listResources, { id: l.id })).resources;
    } catch (err) {
      if (!isNotFound(err)) throw err;
      continue; // deleted since the listing
    }
    withResources.push({ id: l.id, labels: l.labels, resources });
  }
  // The blobs other namespaces record: one content listing per namespace.
  const elsewhere: Record<string, string[]> = {};
  const { namespaces } = await c.call(c.namespaces, c.namespaces.list, { filter: '' });
  for (const other of namespaces.map((n) => n.name).filter((n) => n !== namespace)) {
    const md = c.metadata();
    md.set(NAMESPACE_HEADER, other);
    for (const r of await c.collect(c.content.list({ filters: [] }, md))) {
      for (const i of r.info) (elsewhere[i.digest] ??= []).push(other);
    }
  }
  return {
    namespace,
    now,
    elsewhere,
    images: images.map((im) => ({ name: im.name, digest: im.target?.digest ?? '', labels: im.labels })),
    content: content.map((i) => ({ digest: i.digest, size: i.size, labels: i.labels })),
    ingests: statuses.map((s) => ({
      ref: s.ref,
      offset: s.offset,
      total: s.total,
      expected: s.expected,
      ...(s.startedAt ? { startedAt: s.startedAt } : {}),
      ...(s.updatedAt ? { updatedAt: s.updatedAt } : {}),
    })),
    snapshotters,
    snapshots,
    containers: containers.map((x) => ({ id: x.id, snapshotter: x.snapshotter, snapshotKey: x.snapshotKey, labels: x.labels })),
    leases: withResources,
  };
}

// ---- printing ----

const TABLE = { minwidth: 4, tabwidth: 8, padding: 2 } as const;

export function formatReport(r: DuReport, bytes: boolean): string {
  const size = bytes ? (n: number) => String(n) : humanSize;
  const out: string[] = [];
  const imageRows = r.images.map((i) => [i.name, size(i.content.size), size(i.snapshots.size), size(i.size), size(i.unique), size(i.shared)]);
  out.push(table([['IMAGE', 'CONTENT', 'SNAPSHOTS', 'TOTAL', 'UNIQUE', 'SHARED'], ...imageRows], TABLE));
  out.push(`images: ${r.images.length}, ${size(r.imagesTotal.size)} on disk (${size(r.imagesTotal.shared)} shared by more than one)\n`);
  out.push('\n');
  const snRows = r.snapshotters.map((s) => [s.name, String(s.count), size(s.size), String(s.inodes)]);
  out.push(table([['SNAPSHOTTER', 'SNAPSHOTS', 'SIZE', 'INODES'], ...snRows], TABLE));
  out.push(`content: ${r.content.count} blob${r.content.count === 1 ? '' : 's'}, ${size(r.content.size)}\n`);
  out.push('\n');
  if (r.orphans.length === 0) {
    out.push('orphans: none (every blob and snapshot belongs to an image)\n');
  } else {
    const why = (o: Orphan): string => {
      const also = o.alsoIn.length > 0 ? `namespace${o.alsoIn.length === 1 ? '' : 's'} ${o.alsoIn.join(', ')} also record${o.alsoIn.length === 1 ? 's' : ''} it` : '';
      if (o.keptBy) return also ? `${o.keptBy.summary}; ${also}` : o.keptBy.summary;
      return also ? `- (the next gc drops this namespace's record; the data stays: ${also})` : '- (nothing: the next gc removes it)';
    };
    const rows = r.orphans.map((o) => [o.type, o.id, size(o.size), why(o)]);
    out.push(table([['ORPHAN', 'ID', 'SIZE', 'KEPT BY'], ...rows], TABLE));
    const free = r.orphans.filter(freed).length;
    out.push(`orphans: ${r.orphans.length}, ${size(r.orphans.reduce((a, o) => a + o.size, 0))}; reclaimable by gc now: ${free}, ${size(r.reclaimable)}\n`);
  }
  return out.join('');
}

const list = (values: Values, key: string): string[] => {
  const v = (values as Record<string, unknown>)[key];
  return Array.isArray(v) ? (v as string[]) : typeof v === 'string' ? [v] : [];
};

export const du: Command = {
  name: 'du',
  usage: '[--snapshotter <name>]... [-b]',
  summary: 'disk use per image (unique and shared), per snapshotter, and the orphans with what keeps each',
  options: { snapshotter: { type: 'string', multiple: true }, bytes: { type: 'boolean', short: 'b' } },
  async run({ args, values, session }) {
    if (args.length > 0) throw new CliError('du takes no arguments');
    const c = await session.connect();
    const report = diskUsage(await gather(c, session.globals.namespace, list(values, 'snapshotter')));
    if (session.json) return printJson(report);
    await write(formatReport(report, bool(values, 'bytes')));
  },
};
