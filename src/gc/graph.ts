/**
 * The reference graph of the metadata records and its mark (containerd's reference model, docs/gc.md).
 *
 * The records come from src/metadata (GCRecordStore), read inside the transaction that also deletes what the
 * mark leaves white, so nothing changes between the read and the sweep. RefGraph turns them into nodes
 * (content, ingests, snapshots, images, containers, leases; per namespace), roots and edges, and mark() is a
 * breadth-first tricolour walk that remembers, for each object, the edge it was first reached by: the same walk
 * sweeps and explains (why()).
 *
 * Edges never cross namespaces: a label in namespace A naming a digest only namespace B records is a dead edge.
 */
import type { GCEdge, GCObject, GCObjectType, GCWhy, LeaseRecord, Records } from './types.js';
import { LABEL_GC_ROOT, LABEL_GC_EXPIRE, LABEL_GC_FLAT, LABEL_GC_REF_CONTENT, LABEL_GC_REF_SNAPSHOT, LABEL_GC_BREF_CONTENT, LABEL_GC_BREF_IMAGE, LABEL_GC_BREF_CONTAINER, LABEL_GC_BREF_SNAPSHOT } from '../core/labels.js';

/** A time label's value in milliseconds, or undefined when absent or not a time (then it is ignored). */
function timeLabel(labels: Record<string, string>, key: string): number | undefined {
  const v = labels[key];
  if (v === undefined) return undefined;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : t;
}

/** A lease has expired when containerd.io/gc.expire is a valid time before `now`: it is deleted, and keeps nothing. */
export function leaseExpired(lease: LeaseRecord, now: number): boolean {
  const expire = timeLabel(lease.labels, LABEL_GC_EXPIRE);
  return expire !== undefined && expire < now;
}

// ---------------------------------------------------------------------------------------------------------------
// Label references.

/** The rest of a label key after `prefix`, when the key is the prefix itself or continues with '.' or '/'. */
function suffixed(key: string, prefix: string): boolean {
  if (!key.startsWith(prefix)) return false;
  if (key.length === prefix.length) return true;
  const c = key[prefix.length];
  return c === '.' || c === '/';
}

/** The snapshotter named by a key `<prefix><snapshotter>[.|/<anything>]`, or undefined. */
function snapshotterOf(key: string, prefix: string): string | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const rest = key.slice(prefix.length);
  const end = rest.search(/[./]/);
  const name = end < 0 ? rest : rest.slice(0, end);
  return name === '' ? undefined : name;
}

/** Forward references a labelled object makes: gc.ref.content[.*] and gc.ref.snapshot.<snapshotter>[.*]. */
export function labelRefs(namespace: string, labels: Record<string, string>): { to: GCObject; reason: string }[] {
  const out: { to: GCObject; reason: string }[] = [];
  for (const [k, v] of Object.entries(labels)) {
    if (v === '') continue;
    if (suffixed(k, LABEL_GC_REF_CONTENT)) {
      out.push({ to: { type: 'content', namespace, id: v }, reason: k });
      continue;
    }
    const sn = snapshotterOf(k, `${LABEL_GC_REF_SNAPSHOT}.`);
    if (sn) out.push({ to: { type: 'snapshot', namespace, snapshotter: sn, id: v }, reason: k });
  }
  return out;
}

/** Back references a labelled object declares: the objects that keep it (gc.bref.content/snapshot/image/container). */
export function backRefs(namespace: string, labels: Record<string, string>): { from: GCObject; reason: string }[] {
  const out: { from: GCObject; reason: string }[] = [];
  for (const [k, v] of Object.entries(labels)) {
    if (v === '') continue;
    if (suffixed(k, LABEL_GC_BREF_CONTENT)) {
      out.push({ from: { type: 'content', namespace, id: v }, reason: k });
    } else if (suffixed(k, LABEL_GC_BREF_IMAGE)) {
      out.push({ from: { type: 'image', namespace, id: v }, reason: k });
    } else if (suffixed(k, LABEL_GC_BREF_CONTAINER)) {
      out.push({ from: { type: 'container', namespace, id: v }, reason: k });
    } else {
      const sn = snapshotterOf(k, `${LABEL_GC_BREF_SNAPSHOT}.`);
      if (sn) out.push({ from: { type: 'snapshot', namespace, snapshotter: sn, id: v }, reason: k });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// The graph.

export function nodeKey(o: GCObject): string {
  return `${o.type}\0${o.namespace}\0${o.type === 'snapshot' ? (o.snapshotter ?? '') : ''}\0${o.id}`;
}

function objectOf(type: GCObjectType, namespace: string, id: string, snapshotter?: string): GCObject {
  return snapshotter === undefined ? { type, namespace, id } : { type, namespace, snapshotter, id };
}

export interface Root {
  node: number;
  reason: string;
  flat: boolean;
}

export interface Mark {
  /** Whether node `n` (an index of RefGraph.objects) is reachable from a root. */
  reachable(n: number): boolean;
  why(object: GCObject): GCWhy;
}

/**
 * Nodes are numbered (objects[n]); edges are lists of node numbers with their reasons, built once with dead
 * edges (to objects that do not exist) dropped. `nodesOf` gives each record's node, in the order of Records.
 */
export class RefGraph {
  readonly objects: GCObject[] = [];
  readonly roots: Root[] = [];
  readonly nodesOf: { content: number[]; ingests: number[]; snapshots: number[] };
  private readonly index = new Map<string, number>();
  /** Edges followed in full mode (labels, back references, targets, parents, an ingest's blob). */
  private readonly full: { to: number; reason: string }[][] = [];
  /** The subset followed in flat mode (a flat lease's resources): snapshot parents only. */
  private readonly flat: { to: number; reason: string }[][] = [];

  constructor(readonly records: Records) {
    const now = records.now;
    const add = (object: GCObject): number => {
      const n = this.objects.length;
      this.objects.push(object);
      this.full.push([]);
      this.flat.push([]);
      this.index.set(nodeKey(object), n);
      return n;
    };
    const content = records.content.map((c) => add(objectOf('content', c.namespace, c.digest)));
    const snapshots = records.snapshots.map((s) => add(objectOf('snapshot', s.namespace, s.key, s.snapshotter)));
    const ingests = records.ingests.map((i) => add(objectOf('ingest', i.namespace, i.ref)));
    const images = records.images.map((im) => add(objectOf('image', im.namespace, im.name)));
    const containers = records.containers.map((c) => add(objectOf('container', c.namespace, c.id)));
    const leases = records.leases.map((l) => add(objectOf('lease', l.namespace, l.id)));
    this.nodesOf = { content, ingests, snapshots };

    const find = (o: GCObject) => this.index.get(nodeKey(o));
    const edge = (from: number, to: GCObject, reason: string, alsoFlat = false) => {
      const n = find(to);
      if (n === undefined) return; // a dead edge: nothing to keep
      this.full[from]!.push({ to: n, reason });
      if (alsoFlat) this.flat[from]!.push({ to: n, reason });
    };
    /** Forward references from labels, and back references declared by the labelled object. */
    const labelEdges = (n: number, labels: Record<string, string>, withBackRefs: boolean) => {
      const ns = this.objects[n]!.namespace;
      for (const r of labelRefs(ns, labels)) edge(n, r.to, r.reason);
      if (!withBackRefs) return;
      for (const b of backRefs(ns, labels)) {
        const from = find(b.from);
        if (from !== undefined) this.full[from]!.push({ to: n, reason: b.reason });
      }
    };

    records.content.forEach((c, i) => labelEdges(content[i]!, c.labels, true));
    records.snapshots.forEach((s, i) => {
      const n = snapshots[i]!;
      if (s.parent) edge(n, objectOf('snapshot', s.namespace, s.parent, s.snapshotter), 'parent', true);
      labelEdges(n, s.labels, true);
    });
    records.ingests.forEach((r, i) => {
      // An adopting ingest stands for a blob of its namespace-to-be: like containerd's "expected" reference.
      if (r.sharedDigest) edge(ingests[i]!, objectOf('content', r.namespace, r.sharedDigest), 'expected');
    });
    records.images.forEach((im, i) => {
      edge(images[i]!, objectOf('content', im.namespace, im.targetDigest), 'target');
      labelEdges(images[i]!, im.labels, false);
    });
    records.containers.forEach((c, i) => {
      if (c.snapshotter && c.snapshotKey) edge(containers[i]!, objectOf('snapshot', c.namespace, c.snapshotKey, c.snapshotter), 'snapshot');
      labelEdges(containers[i]!, c.labels, false);
    });

    // Roots, in the order why() prefers them.
    const root = (node: number | undefined, reason: string, flat = false) => {
      if (node !== undefined) this.roots.push({ node, reason, flat });
    };
    images.forEach((n) => root(n, 'image'));
    containers.forEach((n) => root(n, 'container'));
    records.leases.forEach((l, i) => {
      if (leaseExpired(l, now)) return;
      root(leases[i], 'lease not expired');
      const flat = l.labels[LABEL_GC_FLAT] !== undefined;
      const reason = flat ? `lease ${l.id} (flat)` : `lease ${l.id}`;
      for (const r of l.resources) {
        if (r.type === 'content') root(find(objectOf('content', l.namespace, r.id)), reason, flat);
        else if (r.type === 'ingests') root(find(objectOf('ingest', l.namespace, r.id)), reason);
        else if (r.type.startsWith('snapshots/')) root(find(objectOf('snapshot', l.namespace, r.id, r.type.slice('snapshots/'.length))), reason, flat);
      }
    });
    const labelRoot = (n: number, labels: Record<string, string>) => {
      if (labels[LABEL_GC_ROOT] !== undefined) return root(n, `label ${LABEL_GC_ROOT}`);
      const expire = timeLabel(labels, LABEL_GC_EXPIRE);
      if (expire !== undefined && expire >= now) root(n, `label ${LABEL_GC_EXPIRE} ${labels[LABEL_GC_EXPIRE]}`);
    };
    records.content.forEach((c, i) => labelRoot(content[i]!, c.labels));
    records.snapshots.forEach((s, i) => labelRoot(snapshots[i]!, s.labels));
    records.ingests.forEach((r, i) => {
      if (r.expiresAt !== null && r.expiresAt >= now) root(ingests[i], `ingest not expired (expires ${new Date(r.expiresAt).toISOString()})`);
    });
  }

  /** The node number of an object, if the records hold it. */
  nodeOf(object: GCObject): number | undefined {
    return this.index.get(nodeKey(object));
  }

  /**
   * Every node reachable from `start` by full-mode edges (labels, back references, targets, parents), `start`
   * included: what an image or a container holds on its own, whatever else also holds it (`strata du`).
   */
  reachableFrom(start: number): Set<number> {
    const seen = new Set<number>([start]);
    const queue = [start];
    for (let head = 0; head < queue.length; head++) {
      for (const e of this.full[queue[head]!]!) {
        if (seen.has(e.to)) continue;
        seen.add(e.to);
        queue.push(e.to);
      }
    }
    return seen;
  }

  /**
   * Breadth-first mark over (node, mode) states, state = node * 2 + (flat ? 1 : 0). A flat state follows only
   * snapshot parents; the same node reached again in full mode is walked again in full mode (containerd keeps
   * flat and full nodes apart too). Each state remembers the edge it was first reached by, for why().
   */
  mark(): Mark {
    const states = this.objects.length * 2;
    const order = new Int32Array(states).fill(-1);
    const via = new Int32Array(states).fill(-1);
    const reasons: string[] = new Array<string>(states);
    const queue = new Int32Array(states);
    let tail = 0;
    const visit = (node: number, flat: boolean, from: number, reason: string) => {
      if (order[node * 2]! >= 0) return; // walked in full mode already: nothing more to find
      const st = node * 2 + (flat ? 1 : 0);
      if (order[st]! >= 0) return;
      order[st] = tail;
      via[st] = from;
      reasons[st] = reason;
      queue[tail++] = st;
    };
    for (const r of this.roots) visit(r.node, r.flat, -1, r.reason);
    for (let head = 0; head < tail; head++) {
      const st = queue[head]!;
      const node = st >> 1;
      const flat = (st & 1) === 1;
      for (const e of flat ? this.flat[node]! : this.full[node]!) visit(e.to, flat, st, e.reason);
    }

    return {
      reachable: (n) => order[n * 2]! >= 0 || order[n * 2 + 1]! >= 0,
      why: (object) => {
        const n = this.index.get(nodeKey(object));
        if (n === undefined) return { object, reachable: false, path: [] };
        const full = order[n * 2]!;
        const flat = order[n * 2 + 1]!;
        if (full < 0 && flat < 0) return { object, reachable: false, path: [] };
        let st = full >= 0 && (flat < 0 || full < flat) ? n * 2 : n * 2 + 1;
        const path: GCEdge[] = [];
        while (via[st]! >= 0) {
          const from = via[st]!;
          path.push({ from: this.objects[from >> 1]!, to: this.objects[st >> 1]!, reason: reasons[st]! });
          st = from;
        }
        path.reverse();
        return { object, reachable: true, root: reasons[st]!, path };
      },
    };
  }
}
