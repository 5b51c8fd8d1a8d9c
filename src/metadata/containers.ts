/**
 * The container store: per-namespace records of what a task is made from (runtime, OCI spec, root file system
 * snapshot, image name, labels, extensions), as containerd's metadata/containers.go keeps them. A container
 * is metadata only: creating one starts nothing, deleting one removes nothing else (its snapshot is the
 * client's to remove, or the garbage collector's once no container refers to it).
 *
 * Rules (containerd 1.6):
 *  - the id follows the identifier rules (src/metadata/identifiers.ts); runtime.name and spec are required;
 *    a snapshotKey needs a snapshotter; extension keys are non-empty; labels follow the label size rule.
 *  - update with no field paths replaces labels, spec, extensions, image and snapshotKey, and fails when the
 *    snapshotter or the runtime name differ (they are immutable); with field paths only `labels`,
 *    `labels.<k>`, `spec`, `extensions`, `extensions.<k>`, `image` and `snapshotkey` are accepted.
 *  - a label set to "" is removed (containerd's boltutil drops empty values).
 *  - containers are not lease resources: a container is itself a GC root (its snapshot and its
 *    `containerd.io/gc.ref.*` labels are what it keeps alive).
 *
 * As containerd: `extensions.<k>` with no such key in the request stores an empty Any under k, and extensions
 * are only ever added to what is stored (containerd's bolt code never clears the bucket), though the update's
 * answer shows the update's own set. Filters take containerd's fields only (`id`, `image`, `runtime.name`, `labels.<k>`): a
 * filter on another field (`snapshotter`, `snapshotkey`) matches nothing, as in containerd.
 *
 * Every change publishes an event: /containers/create (containerd.events.ContainerCreate{id, image,
 * runtime}), /containers/update (ContainerUpdate{id, image, labels, snapshotKey}), /containers/delete
 * (ContainerDelete{id}).
 */
import { alreadyExists, invalidArgument, notFound, StrataError } from '../core/errdefs.js';
import { adapt, labelField, parseAll } from '../filters/index.js';
import { typedEvent, type EventPublisher } from '../events/types.js';
import { type DB } from '../core/sqlite.js';
import { encodeLabels, parseLabels } from '../core/labels.js';
import { validateIdentifier } from '../core/identifiers.js';
import { type NamespaceStore } from './namespaces.js';
import { validateLabels, compactLabels as compact } from '../core/labels.js';
import { requireNamespace, type OpContext } from './context.js';
import { fromParts, now as nowTime, subMsOf } from '../core/time.js';

/** A protobuf Any as stored: the type URL and the encoded bytes, opaque to the store. */
export interface AnyValue {
  typeUrl: string;
  value: Buffer;
}

export interface ContainerRuntime {
  name: string;
  options?: AnyValue;
}

export interface Container {
  id: string;
  labels: Record<string, string>;
  /** The image reference the container was made from (optional, mutable, not validated). */
  image: string;
  /** Required; the name is immutable. */
  runtime: ContainerRuntime;
  /** The OCI runtime spec (types.containerd.io/opencontainers/runtime-spec/1/Spec, JSON bytes). Required. */
  spec?: AnyValue;
  /** Immutable. */
  snapshotter: string;
  /** The root file system snapshot's key in `snapshotter` (mutable). */
  snapshotKey: string;
  createdAt: Date;
  updatedAt: Date;
  extensions: Record<string, AnyValue>;
  /** The sandbox the container belongs to (containerd 1.7's field; not on the 1.6 wire). Immutable. */
  sandboxId?: string;
}

/** What create and update take: the id and runtime, everything else optional. */
export type ContainerInput = Pick<Container, 'id'> &
  Partial<Omit<Container, 'id' | 'createdAt' | 'updatedAt'>>;

export interface ContainerStore {
  get(id: string): Promise<Container>;
  list(filters?: string[]): Promise<Container[]>;
  create(container: ContainerInput): Promise<Container>;
  update(container: ContainerInput, fieldpaths?: string[]): Promise<Container>;
  delete(id: string): Promise<void>;
}

/** Event type names (containerd 1.6: package containerd.events). */
export const CONTAINER_EVENT_CREATE = 'containerd.events.ContainerCreate';
export const CONTAINER_EVENT_UPDATE = 'containerd.events.ContainerUpdate';
export const CONTAINER_EVENT_DELETE = 'containerd.events.ContainerDelete';

interface ContainerRow {
  id: string;
  labels: string;
  image: string;
  runtime_name: string;
  runtime_options_type: string | null;
  runtime_options: Buffer | null;
  spec_type: string | null;
  spec: Buffer | null;
  snapshotter: string;
  snapshot_key: string;
  extensions: string;
  sandbox_id: string;
  created_at: number;
  updated_at: number;
  created_ns: number;
  updated_ns: number;
}

const COLUMNS =
  'id, labels, image, runtime_name, runtime_options_type, runtime_options, spec_type, spec, snapshotter, snapshot_key, extensions, sandbox_id, created_at, updated_at, created_ns, updated_ns';

const copyAny = (a: AnyValue): AnyValue => ({ typeUrl: a.typeUrl, value: Buffer.from(a.value) });

function encodeExtensions(ext: Record<string, AnyValue>): string {
  const out: Record<string, { typeUrl: string; value: string }> = {};
  for (const [k, v] of Object.entries(ext)) out[k] = { typeUrl: v.typeUrl, value: Buffer.from(v.value).toString('base64') };
  return JSON.stringify(out);
}

function decodeExtensions(json: string): Record<string, AnyValue> {
  const raw = JSON.parse(json) as Record<string, { typeUrl: string; value: string }>;
  const out: Record<string, AnyValue> = {};
  for (const [k, v] of Object.entries(raw)) out[k] = { typeUrl: v.typeUrl, value: Buffer.from(v.value, 'base64') };
  return out;
}

function toContainer(r: ContainerRow): Container {
  const runtime: ContainerRuntime = { name: r.runtime_name };
  if (r.runtime_options_type !== null) runtime.options = { typeUrl: r.runtime_options_type, value: Buffer.from(r.runtime_options ?? []) };
  const c: Container = {
    id: r.id,
    labels: parseLabels(r.labels),
    image: r.image,
    runtime,
    snapshotter: r.snapshotter,
    snapshotKey: r.snapshot_key,
    createdAt: fromParts(r.created_at, r.created_ns),
    updatedAt: fromParts(r.updated_at, r.updated_ns),
    extensions: decodeExtensions(r.extensions),
  };
  if (r.spec_type !== null) c.spec = { typeUrl: r.spec_type, value: Buffer.from(r.spec ?? []) };
  if (r.sandbox_id !== '') c.sandboxId = r.sandbox_id;
  return c;
}

function toRow(c: Container): ContainerRow {
  return {
    id: c.id,
    labels: encodeLabels(c.labels),
    image: c.image,
    runtime_name: c.runtime.name,
    runtime_options_type: c.runtime.options ? c.runtime.options.typeUrl : null,
    runtime_options: c.runtime.options ? Buffer.from(c.runtime.options.value) : null,
    spec_type: c.spec ? c.spec.typeUrl : null,
    spec: c.spec ? Buffer.from(c.spec.value) : null,
    snapshotter: c.snapshotter,
    snapshot_key: c.snapshotKey,
    extensions: encodeExtensions(c.extensions),
    sandbox_id: c.sandboxId ?? '',
    created_at: c.createdAt.getTime(),
    updated_at: c.updatedAt.getTime(),
    created_ns: subMsOf(c.createdAt),
    updated_ns: subMsOf(c.updatedAt),
  };
}

const detailOf = (err: unknown): string => (err instanceof StrataError ? err.detail : String(err));

/** containerd's validateContainer, with its wording; `context` is what the caller puts in front. */
function validateContainer(c: Container, context: string): void {
  const fail = (detail: string): never => {
    throw invalidArgument(`${context}: ${detail}`);
  };
  try {
    validateIdentifier(c.id);
  } catch (err) {
    fail(`container.ID: ${detailOf(err)}`);
  }
  for (const [k, v] of Object.entries(c.extensions)) {
    if (k === '') fail('container.Extension keys must not be zero-length');
    if (!v || typeof v.typeUrl !== 'string' || !(v.value instanceof Uint8Array)) fail(`container.Extensions[${JSON.stringify(k)}] must be an Any`);
  }
  try {
    validateLabels(c.labels);
  } catch (err) {
    fail(`containers.Labels: ${detailOf(err)}`);
  }
  if (!c.runtime.name) fail('container.Runtime.Name must be set');
  if (c.spec === undefined) fail('container.Spec must be set');
  if (c.snapshotKey !== '' && c.snapshotter === '') fail('container.Snapshotter must be set if container.SnapshotKey is set');
}

/** A full record from an input: defaults for what is absent, copies of what is given. */
function normalize(input: ContainerInput, now: Date): Container {
  const c: Container = {
    id: input.id ?? '',
    labels: { ...(input.labels ?? {}) },
    image: input.image ?? '',
    runtime: { name: input.runtime?.name ?? '' },
    snapshotter: input.snapshotter ?? '',
    snapshotKey: input.snapshotKey ?? '',
    createdAt: now,
    updatedAt: now,
    extensions: Object.fromEntries(Object.entries(input.extensions ?? {}).map(([k, v]) => [k, v ? copyAny(v) : v])),
  };
  if (input.runtime?.options) c.runtime.options = copyAny(input.runtime.options);
  if (input.spec) c.spec = copyAny(input.spec);
  if (input.sandboxId) c.sandboxId = input.sandboxId;
  return c;
}

export class NamespacedContainers {
  constructor(
    readonly db: DB,
    readonly namespaces: NamespaceStore,
    readonly events: EventPublisher,
    readonly notifyMutation: (deletion: boolean) => void = () => {},
  ) {
    namespaces.registerOccupant({
      describe: (d, ns) => (d.prepare('SELECT 1 FROM containers WHERE namespace = ? LIMIT 1').get(ns) ? ['containers'] : []),
    });
  }

  /** The container store of one namespace (a lease in the context is ignored: containers are not leased). */
  bind(ctx: OpContext): ContainerStore {
    return new BoundContainerStore(this, requireNamespace(ctx.namespace));
  }

  /** Every container record of a namespace, synchronously, ordered by id (what list() filters). */
  listAll(namespace: string): Container[] {
    const rows = this.db.prepare(`SELECT ${COLUMNS} FROM containers WHERE namespace = ? ORDER BY id`).all(namespace) as ContainerRow[];
    return rows.map(toContainer);
  }
}

class BoundContainerStore implements ContainerStore {
  constructor(
    private readonly s: NamespacedContainers,
    private readonly ns: string,
  ) {}

  private row(id: string): ContainerRow | undefined {
    return this.s.db.prepare(`SELECT ${COLUMNS} FROM containers WHERE namespace = ? AND id = ?`).get(this.ns, id) as ContainerRow | undefined;
  }

  async get(id: string): Promise<Container> {
    const row = this.row(id);
    if (!row) throw notFound(`container ${JSON.stringify(id)} in namespace ${JSON.stringify(this.ns)}`);
    return toContainer(row);
  }

  async list(filters: string[] = []): Promise<Container[]> {
    const filter = parseAll(filters);
    return this.s.listAll(this.ns).filter((c) =>
      filter.match(
        adapt((path) => {
          switch (path[0]) {
            case 'id':
              return path.length === 1 && c.id !== '' ? c.id : undefined;
            case 'image':
              return path.length === 1 && c.image !== '' ? c.image : undefined;
            case 'runtime':
              return path.length === 2 && path[1] === 'name' && c.runtime.name !== '' ? c.runtime.name : undefined;
            case 'labels':
              return labelField(c.labels, path.slice(1));
            default:
              return undefined;
          }
        }),
      ),
    );
  }

  async create(input: ContainerInput): Promise<Container> {
    const c = normalize(input, nowTime());
    validateContainer(c, 'create container failed validation');
    c.labels = compact(c.labels);
    const r = toRow(c);
    this.s.db.transaction(() => {
      this.s.namespaces.ensure(this.ns);
      const res = this.s.db
        .prepare(`INSERT OR IGNORE INTO containers (namespace, ${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
        .run(
          this.ns,
          r.id,
          r.labels,
          r.image,
          r.runtime_name,
          r.runtime_options_type,
          r.runtime_options,
          r.spec_type,
          r.spec,
          r.snapshotter,
          r.snapshot_key,
          r.extensions,
          r.sandbox_id,
          r.created_at,
          r.updated_at,
          r.created_ns,
          r.updated_ns,
        );
      if (res.changes === 0) throw alreadyExists(`container ${JSON.stringify(c.id)}`);
    }).immediate();
    this.s.notifyMutation(false);
    this.s.events.publish(
      this.ns,
      '/containers/create',
      typedEvent(CONTAINER_EVENT_CREATE, {
        id: c.id,
        image: c.image,
        runtime: { name: c.runtime.name, ...(c.runtime.options ? { options: copyAny(c.runtime.options) } : {}) },
      }),
    );
    return toContainer(r);
  }

  async update(input: ContainerInput, fieldpaths: string[] = []): Promise<Container> {
    if (!input.id) throw invalidArgument('must specify a container id');
    const next = normalize(input, new Date());
    const updated = this.s.db.transaction(() => {
      const row = this.row(input.id);
      if (!row) throw notFound(`container ${JSON.stringify(input.id)}`);
      const u = toContainer(row);
      const storedExtensions = { ...u.extensions };
      let paths = fieldpaths;
      if (paths.length === 0) {
        // A full replace: only these fields may change, and the immutable ones must match.
        paths = ['labels', 'spec', 'extensions', 'image', 'snapshotkey'];
        if (u.snapshotter !== next.snapshotter) throw invalidArgument('container.Snapshotter field is immutable');
        if (u.runtime.name !== next.runtime.name) throw invalidArgument('container.Runtime.Name field is immutable');
      }
      for (const path of paths) {
        if (path.startsWith('labels.')) {
          const key = path.slice('labels.'.length);
          u.labels[key] = next.labels[key] ?? '';
          continue;
        }
        if (path.startsWith('extensions.')) {
          const key = path.slice('extensions.'.length);
          // containerd: an extension the request lacks becomes an empty Any under that key.
          u.extensions[key] = next.extensions[key] ?? { typeUrl: '', value: Buffer.alloc(0) };
          continue;
        }
        switch (path) {
          case 'labels':
            u.labels = { ...next.labels };
            break;
          case 'spec':
            if (next.spec) u.spec = next.spec;
            else delete u.spec;
            break;
          case 'extensions':
            u.extensions = { ...next.extensions };
            break;
          case 'image':
            u.image = next.image;
            break;
          case 'snapshotkey':
            u.snapshotKey = next.snapshotKey;
            break;
          default:
            throw invalidArgument(`cannot update ${JSON.stringify(path)} field on ${JSON.stringify(input.id)}`);
        }
      }
      validateContainer(u, 'update failed validation');
      u.labels = compact(u.labels);
      u.updatedAt = nowTime();
      // containerd writes extensions into the container's extensions bucket without clearing it: what is stored
      // is the old set with the update's laid over it, while the answer shows the update's own set.
      const r = toRow({ ...u, extensions: { ...storedExtensions, ...u.extensions } });
      this.s.db
        .prepare(
          'UPDATE containers SET labels = ?, image = ?, spec_type = ?, spec = ?, snapshot_key = ?, extensions = ?, updated_at = ?, updated_ns = ? WHERE namespace = ? AND id = ?',
        )
        .run(r.labels, r.image, r.spec_type, r.spec, r.snapshot_key, r.extensions, r.updated_at, r.updated_ns, this.ns, u.id);
      return u;
    }).immediate();
    this.s.notifyMutation(false);
    this.s.events.publish(
      this.ns,
      '/containers/update',
      typedEvent(CONTAINER_EVENT_UPDATE, { id: updated.id, image: updated.image, labels: { ...updated.labels }, snapshotKey: updated.snapshotKey }),
    );
    return updated;
  }

  async delete(id: string): Promise<void> {
    const res = this.s.db.prepare('DELETE FROM containers WHERE namespace = ? AND id = ?').run(this.ns, id);
    if (res.changes === 0) throw notFound(`container ${id}`);
    this.s.notifyMutation(true);
    this.s.events.publish(this.ns, '/containers/delete', typedEvent(CONTAINER_EVENT_DELETE, { id }));
  }
}
