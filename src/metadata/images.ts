/**
 * The image store: per-namespace records mapping a name to a root descriptor (manifest or index), with
 * labels, as containerd's metadata/images.go keeps them. The target keeps mediaType, digest, size and
 * annotations (containerd stores no urls or platform for it). Names are any non-empty string (containerd
 * does not restrict them further; references are the clients' business).
 *
 * Every change publishes an event: /images/create (ImageCreate{name, labels}), /images/update
 * (ImageUpdate{name, labels}), /images/delete (ImageDelete{name}). In containerd 1.6 these messages live in
 * the package containerd.services.images.v1, which is what their type URLs say.
 *
 * Deleting an image record does not delete content: the garbage collector (roots: images) does that.
 */
import { crashPoint } from '../core/crashpoint.js';
import { alreadyExists, invalidArgument, notFound } from '../core/errdefs.js';
import { adapt, labelField, parseAll } from '../filters/index.js';
import { typedEvent, type EventPublisher } from '../events/types.js';
import { isValidDigest } from '../content/digest.js';
import type { Descriptor } from '../core/descriptor.js';
import { type DB } from '../core/sqlite.js';
import { encodeLabels, parseLabels } from '../core/labels.js';
import { type NamespaceStore } from './namespaces.js';
import { validateLabels, compactLabels as compact } from '../core/labels.js';
import { requireNamespace, type OpContext } from './context.js';
import { fromParts, now as nowTime } from '../core/time.js';
import { GroupCommit } from '../snapshots/storage.js';

/** An image record: a name pointing at a root descriptor (manifest or index), as containerd stores it. */
export interface Image {
  name: string;
  target: Descriptor;
  labels: Record<string, string>;
  createdAt: Date;
  updatedAt: Date;
}

/**
 * The image store of one namespace (bound from the metadata store's NamespacedImages with an OpContext).
 * Errors: 'not found', 'already exists', 'invalid argument' (bad name, empty target fields, bad labels).
 * Every change publishes /images/create|update|delete on the event exchange.
 */
export interface ImageStore {
  get(name: string): Promise<Image>;
  /** containerd filter syntax on name, target.mediatype, target.digest, labels.* (any filter matches). */
  list(filters?: string[]): Promise<Image[]>;
  create(image: Pick<Image, 'name' | 'target'> & { labels?: Record<string, string> }): Promise<Image>;
  /**
   * containerd field paths: 'labels', 'labels.<key>', 'target', 'annotations'... ; none = replace labels and
   * target. The name cannot change.
   */
  update(image: Pick<Image, 'name'> & Partial<Pick<Image, 'target' | 'labels'>>, fieldpaths?: string[]): Promise<Image>;
  delete(name: string): Promise<void>;
}

interface ImageRow {
  name: string;
  target_media_type: string;
  target_digest: string;
  target_size: number;
  target_annotations: string;
  labels: string;
  created_at: number;
  created_ns: number;
  updated_at: number;
  updated_ns: number;
}

const COLUMNS = 'name, target_media_type, target_digest, target_size, target_annotations, labels, created_at, updated_at, created_ns, updated_ns';

/** Event type names (containerd 1.6 declares them in the images service package). */
export const IMAGE_EVENT_CREATE = 'containerd.services.images.v1.ImageCreate';
export const IMAGE_EVENT_UPDATE = 'containerd.services.images.v1.ImageUpdate';
export const IMAGE_EVENT_DELETE = 'containerd.services.images.v1.ImageDelete';

function toImage(r: ImageRow): Image {
  const target: Descriptor = { mediaType: r.target_media_type, digest: r.target_digest, size: r.target_size };
  const annotations = parseLabels(r.target_annotations);
  if (Object.keys(annotations).length > 0) target.annotations = annotations;
  return {
    name: r.name,
    target,
    labels: parseLabels(r.labels),
    createdAt: fromParts(r.created_at, r.created_ns),
    updatedAt: fromParts(r.updated_at, r.updated_ns),
  };
}

/** containerd's validateImage: name, labels, then the target (digest, size > 0, media type). */
function validateImage(image: { name: string; target?: Descriptor | undefined; labels?: Record<string, string> }): void {
  if (!image.name) throw invalidArgument('image name must not be empty');
  try {
    validateLabels(image.labels);
  } catch (err) {
    throw invalidArgument(`image.Labels: ${(err as { detail?: string }).detail ?? String(err)}`);
  }
  const t = image.target;
  const digest = t?.digest ?? '';
  if (!isValidDigest(digest)) throw invalidArgument(`Target.Digest ${JSON.stringify(digest)} invalid: invalid checksum digest format`);
  if (!t || !(typeof t.size === 'number' && t.size > 0 && Number.isSafeInteger(t.size))) {
    throw invalidArgument('Target.Size must be greater than zero');
  }
  if (!t.mediaType) throw invalidArgument('Target.MediaType must be set');
  if (t.annotations !== undefined) {
    for (const [k, v] of Object.entries(t.annotations)) {
      if (typeof v !== 'string' || k === '') throw invalidArgument('Target.Annotations must map non-empty keys to strings');
    }
  }
}

export class NamespacedImages {
  constructor(
    readonly db: DB,
    readonly namespaces: NamespaceStore,
    readonly events: EventPublisher,
    readonly notifyMutation: (deletion: boolean) => void = () => {},
  ) {
    namespaces.registerOccupant({
      describe: (d, ns) => (d.prepare('SELECT 1 FROM images WHERE namespace = ? LIMIT 1').get(ns) ? ['images'] : []),
    });
  }

  /** The image store of one namespace. */
  bind(ctx: OpContext): ImageStore {
    return new BoundImageStore(this, requireNamespace(ctx.namespace));
  }

  /** Namespaces and names of the images whose target is `digest` (any namespace). */
  byTarget(digest: string): { namespace: string; name: string }[] {
    return this.db.prepare('SELECT namespace, name FROM images WHERE target_digest = ? ORDER BY namespace, name').all(digest) as {
      namespace: string;
      name: string;
    }[];
  }
}

class BoundImageStore implements ImageStore {
  constructor(
    private readonly s: NamespacedImages,
    private readonly ns: string,
  ) {}

  private row(name: string): ImageRow | undefined {
    return this.s.db.prepare(`SELECT ${COLUMNS} FROM images WHERE namespace = ? AND name = ?`).get(this.ns, name) as
      | ImageRow
      | undefined;
  }

  async get(name: string): Promise<Image> {
    const row = this.row(name);
    if (!row) throw notFound(`image ${JSON.stringify(name)}`);
    return toImage(row);
  }

  async list(filters: string[] = []): Promise<Image[]> {
    const filter = parseAll(filters);
    const rows = this.s.db.prepare(`SELECT ${COLUMNS} FROM images WHERE namespace = ? ORDER BY name`).all(this.ns) as ImageRow[];
    return rows.map(toImage).filter((img) =>
      filter.match(
        adapt((path) => {
          switch (path[0]) {
            case 'name':
              return path.length === 1 && img.name !== '' ? img.name : undefined;
            case 'target':
              if (path.length !== 2) return undefined;
              if (path[1] === 'digest') return img.target.digest || undefined;
              if (path[1] === 'mediatype') return img.target.mediaType || undefined;
              return undefined;
            case 'labels':
              return labelField(img.labels, path.slice(1));
            case 'annotations':
              return labelField(img.target.annotations, path.slice(1));
            default:
              return undefined;
          }
        }),
      ),
    );
  }

  async create(image: Pick<Image, 'name' | 'target'> & { labels?: Record<string, string> }): Promise<Image> {
    validateImage(image);
    const labels = compact(image.labels);
    const annotations = compact(image.target.annotations);
    const now = nowTime();
    crashPoint('image.create.before-record');
    // Committed without a sync on the event loop, durable (a shared fdatasync on the thread pool) before answering.
    const commits = GroupCommit.of(this.s.db);
    commits.write(() => {
      this.s.namespaces.ensure(this.ns);
      const res = this.s.db
        .prepare(
          `INSERT OR IGNORE INTO images (namespace, ${COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          this.ns,
          image.name,
          image.target.mediaType,
          image.target.digest,
          image.target.size,
          encodeLabels(annotations),
          encodeLabels(labels),
          now.getTime(),
          now.getTime(),
          now.subMs,
          now.subMs,
        );
      if (res.changes === 0) throw alreadyExists(`image ${JSON.stringify(image.name)}`);
    });
    await commits.durable();
    crashPoint('image.create.after-record');
    this.s.notifyMutation(false);
    const created = toImage({
      name: image.name,
      target_media_type: image.target.mediaType,
      target_digest: image.target.digest,
      target_size: image.target.size,
      target_annotations: encodeLabels(annotations),
      labels: encodeLabels(labels),
      created_at: now.getTime(),
      created_ns: now.subMs,
      updated_at: now.getTime(),
      updated_ns: now.subMs,
    });
    this.s.events.publish(this.ns, '/images/create', typedEvent(IMAGE_EVENT_CREATE, { name: created.name, labels: created.labels }));
    return created;
  }

  async update(
    image: Pick<Image, 'name'> & Partial<Pick<Image, 'target' | 'labels'>>,
    fieldpaths: string[] = [],
  ): Promise<Image> {
    if (!image.name) throw invalidArgument('image name is required for update');
    const commits = GroupCommit.of(this.s.db);
    const updated = commits.write(() => {
      const row = this.row(image.name);
      if (!row) throw notFound(`image ${JSON.stringify(image.name)}`);
      const current = toImage(row);
      let labels: Record<string, string>;
      let target: Descriptor;
      if (fieldpaths.length === 0) {
        labels = { ...(image.labels ?? {}) };
        target = image.target ? { ...image.target } : { mediaType: '', digest: '', size: 0 };
      } else {
        labels = { ...current.labels };
        target = { ...current.target, annotations: { ...(current.target.annotations ?? {}) } };
        for (const path of fieldpaths) {
          if (path.startsWith('labels.')) {
            const key = path.slice('labels.'.length);
            labels[key] = image.labels?.[key] ?? '';
          } else if (path.startsWith('annotations.')) {
            const key = path.slice('annotations.'.length);
            target.annotations![key] = image.target?.annotations?.[key] ?? '';
          } else if (path === 'labels') {
            labels = { ...(image.labels ?? {}) };
          } else if (path === 'target') {
            target = image.target ? { ...image.target } : { mediaType: '', digest: '', size: 0 };
          } else if (path === 'annotations') {
            target.annotations = { ...(image.target?.annotations ?? {}) };
          } else {
            throw invalidArgument(`cannot update ${JSON.stringify(path)} field on image ${JSON.stringify(image.name)}`);
          }
        }
      }
      validateImage({ name: image.name, target, labels });
      labels = compact(labels);
      const annotations = compact(target.annotations);
      const now = nowTime();
      this.s.db
        .prepare(
          'UPDATE images SET target_media_type = ?, target_digest = ?, target_size = ?, target_annotations = ?, labels = ?, updated_at = ?, updated_ns = ? WHERE namespace = ? AND name = ?',
        )
        .run(target.mediaType, target.digest, target.size, encodeLabels(annotations), encodeLabels(labels), now.getTime(), now.subMs, this.ns, image.name);
      return toImage({
        name: image.name,
        target_media_type: target.mediaType,
        target_digest: target.digest,
        target_size: target.size,
        target_annotations: encodeLabels(annotations),
        labels: encodeLabels(labels),
        created_at: row.created_at,
        created_ns: row.created_ns,
        updated_at: now.getTime(),
        updated_ns: now.subMs,
      });
    });
    await commits.durable();
    this.s.notifyMutation(false);
    this.s.events.publish(this.ns, '/images/update', typedEvent(IMAGE_EVENT_UPDATE, { name: updated.name, labels: updated.labels }));
    return updated;
  }

  async delete(name: string): Promise<void> {
    crashPoint('image.delete.before-record');
    const res = this.s.db.prepare('DELETE FROM images WHERE namespace = ? AND name = ?').run(this.ns, name);
    if (res.changes === 0) throw notFound(`image ${JSON.stringify(name)}`);
    crashPoint('image.delete.after-record');
    this.s.notifyMutation(true);
    this.s.events.publish(this.ns, '/images/delete', typedEvent(IMAGE_EVENT_DELETE, { name }));
  }
}
