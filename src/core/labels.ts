/**
 * The labels containerd's clients, garbage collector and snapshotters read, and the rules every labelled
 * record follows (size limit, field-path updates, empty values as removals). One home for each name: the
 * stores, the collector, the workflows and the CLI import them from here.
 */
import { invalidArgument } from './errdefs.js';

// Garbage collection (containerd's gc labels; docs/gc.md).
/** Makes the object a GC root. */
export const LABEL_GC_ROOT = 'containerd.io/gc.root';
/** When a lease stops protecting anything (RFC 3339 time). */
export const LABEL_GC_EXPIRE = 'containerd.io/gc.expire';
/** Asks GC to protect a lease's resources without following their references. */
export const LABEL_GC_FLAT = 'containerd.io/gc.flat';
/** A reference to content; any suffix (`.config`, `.l.<n>`, `.m.<n>`) is allowed. */
export const LABEL_GC_REF_CONTENT = 'containerd.io/gc.ref.content';
/** A reference to a snapshot: `containerd.io/gc.ref.snapshot.<snapshotter>`. */
export const LABEL_GC_REF_SNAPSHOT = 'containerd.io/gc.ref.snapshot';
/** Back references: the labelled object is kept alive by the one it names. */
export const LABEL_GC_BREF_CONTENT = 'containerd.io/gc.bref.content';
/** `containerd.io/gc.bref.snapshot.<snapshotter>`. */
export const LABEL_GC_BREF_SNAPSHOT = 'containerd.io/gc.bref.snapshot';
export const LABEL_GC_BREF_IMAGE = 'containerd.io/gc.bref.image';
export const LABEL_GC_BREF_CONTAINER = 'containerd.io/gc.bref.container';

// Content and distribution.
/** The digest of a compressed layer's uncompressed form (the diff ID). */
export const LABEL_UNCOMPRESSED = 'containerd.io/uncompressed';
/** `containerd.io/distribution.source.<registry host>`: the repositories a blob came from. */
export const LABEL_DISTRIBUTION_SOURCE = 'containerd.io/distribution.source';

/**
 * The host part of a distribution-source label key, as containerd derives it (remotes/docker/handler.go):
 * the reference's registry host without its port ("127.0.0.1:5000" → "127.0.0.1", "[::1]:5000" → "::1",
 * "docker.io" stays "docker.io"). Two registries on one address share the key, as in containerd.
 */
export function distributionSourceHost(registryHost: string): string {
  let h = registryHost;
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end > 0 ? h.slice(1, end) : h;
  }
  const colon = h.lastIndexOf(':');
  if (colon >= 0 && h.indexOf(':') === colon) h = h.slice(0, colon);
  return h;
}

/** `containerd.io/distribution.source.<host without port>` for a reference's registry host. */
export const distributionSourceKey = (registryHost: string): string => `${LABEL_DISTRIBUTION_SOURCE}.${distributionSourceHost(registryHost)}`;

/**
 * Adds a repository to a distribution-source label value: the comma-separated list, merged, de-duplicated
 * and sorted byte-wise, empty entries dropped (containerd's appendDistributionSourceLabel).
 */
export function appendDistributionSource(current: string | undefined, repository: string): string {
  const repos = new Set((current ?? '').split(',').filter((r) => r !== ''));
  if (repository !== '') repos.add(repository);
  return [...repos].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)).join(',');
}

/**
 * The repository a push to `host/repository` may mount a blob from, read from the blob's labels as
 * containerd's pusher does (selectRepositoryMountCandidate): among the source repositories of the same host
 * (port ignored) other than the target, the one sharing the most leading path components, the last listed
 * winning ties; undefined when there is none.
 */
export function selectMountCandidate(labels: Record<string, string>, registryHost: string, repository: string): string | undefined {
  const value = labels[distributionSourceKey(registryHost)];
  if (!value) return undefined;
  const target = repository.split('/');
  let best = -1;
  let match: string | undefined;
  for (const repo of value.split(',')) {
    if (repo === repository) continue;
    const parts = repo.split('/');
    let n = 0;
    while (n < target.length && n < parts.length && target[n] === parts[n]) n++;
    if (n >= best) {
      best = n;
      match = repo;
    }
  }
  return match;
}

// Snapshots (the remote-snapshot protocol).
/** The chain ID a client asks a remote snapshotter for; ALREADY_EXISTS means the snapshotter has it. */
export const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref';
/** Labels under this prefix are passed from the namespaced layer down to the backend. */
export const INHERITED_LABEL_PREFIX = 'containerd.io/snapshot/';

const MAX_LABEL_SIZE = 4096;

/** Where the per-object label limits are configured (the metadata plugin owns every labelled record). */
export const LABEL_LIMITS_SECTION = 'plugins."io.containerd.metadata.v1.sqlite"';

/**
 * Limits on the labels of one object (a blob's record, a snapshot, an image, a container, a lease, a
 * namespace), beyond containerd's per-label rule: containerd bounds each label but not how many an object may
 * carry, so one client could grow a record (and every List that returns it) without end. 0: no limit.
 */
export interface LabelLimits {
  /** Labels on one object. */
  max_labels_per_object: number;
  /** Bytes of one object's labels, keys and values together. */
  max_label_bytes_per_object: number;
}

/**
 * Far above what containerd's own clients write: a manifest blob has one gc.ref label per layer and an index
 * one per manifest (a few hundred at most), images and containers a handful.
 */
export const labelLimitDefaults = (): LabelLimits => ({ max_labels_per_object: 4096, max_label_bytes_per_object: 1 << 20 });

let limits: LabelLimits = labelLimitDefaults();

/** Sets the process's label limits (the metadata plugin, from its config section). */
export function setLabelLimits(l: LabelLimits): void {
  limits = { ...l };
}

/** The label limits in force. */
export const labelLimits = (): LabelLimits => ({ ...limits });

/**
 * Reads the label limits from a config section (each a whole number, 0 or more; absent: the default), naming
 * the key of a bad value.
 */
export function labelLimitsFromConfig(cfg: Record<string, unknown>): LabelLimits {
  const out = labelLimitDefaults();
  for (const key of Object.keys(out) as (keyof LabelLimits)[]) {
    const v = cfg[key];
    if (v === undefined) continue;
    const n = typeof v === 'bigint' ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
      throw invalidArgument(`config: ${LABEL_LIMITS_SECTION}.${key} must be a whole number, 0 or more (0: no limit)`);
    }
    out[key] = n;
  }
  return out;
}

/**
 * containerd's rule for each label (key not empty; key + value at most 4096 bytes), alone: for the labels of an
 * update request, which are not what the object will hold (validateLabels checks that, once merged). Returns
 * the count and bytes of the labels with a value.
 */
export function validateLabelEntries(labels: Record<string, string> | undefined): { count: number; bytes: number } {
  let count = 0;
  let bytes = 0;
  for (const [k, v] of Object.entries(labels ?? {})) {
    if (k === '') throw invalidArgument('label key must not be empty');
    const size = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (size > MAX_LABEL_SIZE) {
      throw invalidArgument(`label key and value greater than maximum size (${MAX_LABEL_SIZE} bytes), key: ${k.slice(0, 10)}`);
    }
    if (v === '') continue;
    count++;
    bytes += size;
  }
  return { count, bytes };
}

/**
 * The one label validator, for every labelled object. containerd's rule for each label: key not empty; key +
 * value at most 4096 bytes. Then the limits of one object (labelLimits()), counted over the labels it would
 * hold: empty values are removals and do not count. Stores call it with the labels an object is created with
 * and, for an update, with the labels it would have after it (inside the transaction, so a refused update
 * leaves the object as it was).
 */
export function validateLabels(labels: Record<string, string> | undefined): void {
  const { count, bytes } = validateLabelEntries(labels);
  const { max_labels_per_object: maxCount, max_label_bytes_per_object: maxBytes } = limits;
  if (maxCount > 0 && count > maxCount) {
    throw invalidArgument(`labels over the limit max_labels_per_object = ${maxCount} (${LABEL_LIMITS_SECTION}): ${count} labels on one object`);
  }
  if (maxBytes > 0 && bytes > maxBytes) {
    throw invalidArgument(
      `labels over the limit max_label_bytes_per_object = ${maxBytes} (${LABEL_LIMITS_SECTION}): ${bytes} bytes of labels on one object`,
    );
  }
}

/** Empty values are dropped, as containerd's boltutil.writeMap does (a label set to "" is a removal). */
export function compactLabels(m: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(m ?? {})) if (v !== '') out[k] = v;
  return out;
}

/**
 * containerd's label update rule for field paths: none or "labels" replaces the map; "labels.<key>" copies that
 * one key from `next` (deleting it when absent or empty). Any other path is invalid for label-only objects.
 */
export function applyLabelPaths(
  current: Record<string, string>,
  next: Record<string, string>,
  fieldpaths: string[],
): Record<string, string> {
  if (fieldpaths.length === 0) return compactLabels(next);
  let out = { ...current };
  for (const path of fieldpaths) {
    if (path === 'labels') {
      out = compactLabels(next);
    } else if (path.startsWith('labels.')) {
      const key = path.slice('labels.'.length);
      const v = next[key];
      if (v === undefined || v === '') delete out[key];
      else out[key] = v;
    } else {
      throw invalidArgument(`cannot update ${JSON.stringify(path)} field`);
    }
  }
  return out;
}

/** Labels are stored as JSON objects in TEXT columns. */
export const parseLabels = (json: string): Record<string, string> => JSON.parse(json) as Record<string, string>;
export const encodeLabels = (labels: Record<string, string> | undefined): string => JSON.stringify(labels ?? {});

/* ------------------------------------------------------------------------------------------------------------
 * Remote (lazily pulled) snapshots: the labels stargz-snapshotter reads on a labelled prepare, as containerd 1.6
 * clients (ctr-remote rpull) and Strata's own pull put them there. All are inherited labels (they reach the
 * backend and proxy plugins).
 * ---------------------------------------------------------------------------------------------------------- */

/** On a committed snapshot a lazy-pull snapshotter provides: its value is "remote snapshot". */
export const LABEL_REMOTE_SNAPSHOT = 'containerd.io/snapshot/remote';
export const REMOTE_SNAPSHOT_VALUE = 'remote snapshot';
/** The image reference the layer is pulled from ("127.0.0.1:5000/app:v1"). */
export const LABEL_STARGZ_REFERENCE = 'containerd.io/snapshot/remote/stargz.reference';
/** The layer blob's digest. */
export const LABEL_STARGZ_DIGEST = 'containerd.io/snapshot/remote/stargz.digest';
/** The digests of this layer and the layers above it in the manifest, comma-separated (bounded by the label size). */
export const LABEL_STARGZ_LAYERS = 'containerd.io/snapshot/remote/stargz.layers';
/** The layer descriptor's `urls`, comma-separated. */
export const LABEL_REMOTE_URLS = 'containerd.io/snapshot/remote/urls';
/** Strata's: the layer blob's size in bytes (saves the lazy-pull snapshotter a request to learn it). */
export const LABEL_REMOTE_SIZE = 'containerd.io/snapshot/remote/strata.size';
/** The TOC digest of an eStargz layer (the layer descriptor's annotation, copied as an inherited label). */
export const LABEL_STARGZ_TOC_DIGEST = 'containerd.io/snapshot/stargz/toc.digest';
/**
 * Strata's: on the active snapshot a lazy-pull snapshotter prepared the ordinary way although it was asked for a
 * remote layer (the caller downloads and applies it), with the reason; Strata's unpack reports it in progress.
 */
export const LABEL_LAZY_FALLBACK = 'containerd.io/snapshot/strata.lazy-fallback';
