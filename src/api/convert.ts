/**
 * Every protobuf <-> plain-object conversion of the gRPC layer, for the services and for Strata's clients
 * (the CLI's client, the proxy snapshotter). Below src/api nothing sees a protobuf type; here nothing has a
 * rule of its own beyond the shape of the wire (defaults for absent fields, enum names, Any encodings).
 */
import { Kind as PbKind, type Info as PbInfo } from './gen/containerd/services/snapshots/v1/snapshots.js';
import type { Mount as PbMount } from './gen/containerd/types/mount.js';
import type { Descriptor as DescriptorPb } from './gen/containerd/types/descriptor.js';
import type { Info as ContentInfoPb, Status as IngestStatusPb } from './gen/containerd/services/content/v1/content.js';
import type { Image as ImagePb } from './gen/containerd/services/images/v1/images.js';
import type { Container as ContainerPb } from './gen/containerd/services/containers/v1/containers.js';
import type { Any } from './gen/google/protobuf/any.js';
import { Status as TaskStatusPb, type Process } from './gen/containerd/types/task/task.js';
import type { CollectResponse, Object as ObjectPb } from './gen/strata/services/gc/v1/gc.js';
import type { Progress as PbProgress, RegistryOptions } from './gen/strata/services/transfer/v1/transfer.js';
import type { Plugin } from './gen/containerd/services/introspection/v1/introspection.js';
import { GrpcCode, invalidArgument } from '../core/errdefs.js';
import type { Mount } from '../core/mount.js';
import type { Descriptor } from '../core/descriptor.js';
import type { Info, Kind } from '../snapshots/types.js';
import type { ContentInfo, IngestStatus } from '../content/types.js';
import type { Image } from '../metadata/images.js';
import type { AnyValue, Container, ContainerInput } from '../metadata/containers.js';
import type { ExitInfo, ProcessInfo, TaskStatus } from '../runtime/tasks.js';
import type { GCObject, GCObjectType, GCReport } from '../gc/types.js';
import type { TransferProgress } from '../images/fetch.js';
import type { RegistryRequest } from '../images/transfer.js';
import type { LoadedPlugin } from '../plugin/index.js';

// Mounts and snapshots.
const kindToPb: Record<Kind, PbKind> = { view: PbKind.VIEW, active: PbKind.ACTIVE, committed: PbKind.COMMITTED };

const kindFromPb = (k: PbKind): Kind => (k === PbKind.VIEW ? 'view' : k === PbKind.ACTIVE ? 'active' : 'committed');

export const mountToPb = (m: Mount): PbMount => ({ type: m.type, source: m.source, target: m.target ?? '', options: m.options });

export const mountFromPb = (m: PbMount): Mount => ({ type: m.type, source: m.source, ...(m.target ? { target: m.target } : {}), options: m.options });

export const snapshotInfoToPb = (i: Info): PbInfo => ({
  name: i.name,
  parent: i.parent,
  kind: kindToPb[i.kind],
  labels: i.labels,
  createdAt: i.created,
  updatedAt: i.updated,
});

export const snapshotInfoFromPb = (i: PbInfo): Info => ({
  name: i.name,
  parent: i.parent,
  kind: kindFromPb(i.kind),
  labels: i.labels,
  created: i.createdAt ?? new Date(0),
  updated: i.updatedAt ?? new Date(0),
});

// Descriptors.
export function descriptorFromPb(d: DescriptorPb | undefined): Descriptor {
  const out: Descriptor = { mediaType: d?.mediaType ?? '', digest: d?.digest ?? '', size: Number(d?.size ?? 0) };
  if (d && Object.keys(d.annotations ?? {}).length > 0) out.annotations = { ...d.annotations };
  return out;
}

export function descriptorToPb(d: Descriptor): DescriptorPb {
  return { mediaType: d.mediaType, digest: d.digest, size: d.size, annotations: { ...(d.annotations ?? {}) } };
}

// Content.
export const contentInfoToPb = (i: ContentInfo): ContentInfoPb => ({
  digest: i.digest,
  size: i.size,
  createdAt: i.createdAt,
  updatedAt: i.updatedAt,
  labels: i.labels,
});

export const ingestStatusToPb = (s: IngestStatus): IngestStatusPb => ({
  ref: s.ref,
  offset: s.offset,
  total: s.total,
  expected: s.expected,
  startedAt: s.startedAt,
  updatedAt: s.updatedAt,
});

// Images.
export function imageToPb(i: Image): ImagePb {
  return { name: i.name, labels: { ...i.labels }, target: descriptorToPb(i.target), createdAt: i.createdAt, updatedAt: i.updatedAt };
}

// Containers.
const anyFromPb = (a: Any): AnyValue => ({ typeUrl: a.typeUrl, value: Buffer.from(a.value) });

const anyToPb = (a: AnyValue): Any => ({ typeUrl: a.typeUrl, value: Buffer.from(a.value) });

export function containerFromPb(c: ContainerPb | undefined): ContainerInput {
  const input: ContainerInput = {
    id: c?.id ?? '',
    labels: { ...(c?.labels ?? {}) },
    image: c?.image ?? '',
    runtime: { name: c?.runtime?.name ?? '' },
    snapshotter: c?.snapshotter ?? '',
    snapshotKey: c?.snapshotKey ?? '',
    extensions: Object.fromEntries(Object.entries(c?.extensions ?? {}).map(([k, v]) => [k, anyFromPb(v)])),
  };
  if (c?.runtime?.options) input.runtime!.options = anyFromPb(c.runtime.options);
  if (c?.spec) input.spec = anyFromPb(c.spec);
  return input;
}

export function containerToPb(c: Container): ContainerPb {
  return {
    id: c.id,
    labels: { ...c.labels },
    image: c.image,
    runtime: { name: c.runtime.name, options: c.runtime.options ? anyToPb(c.runtime.options) : undefined },
    spec: c.spec ? anyToPb(c.spec) : undefined,
    snapshotter: c.snapshotter,
    snapshotKey: c.snapshotKey,
    createdAt: c.createdAt,
    updatedAt: c.updatedAt,
    extensions: Object.fromEntries(Object.entries(c.extensions).map(([k, v]) => [k, anyToPb(v)])),
  };
}

// Tasks.
const statusToPb: Record<TaskStatus, TaskStatusPb> = {
  unknown: TaskStatusPb.UNKNOWN,
  created: TaskStatusPb.CREATED,
  running: TaskStatusPb.RUNNING,
  stopped: TaskStatusPb.STOPPED,
  paused: TaskStatusPb.PAUSED,
};

export function processToPb(p: ProcessInfo): Process {
  return {
    containerId: p.containerId,
    id: p.id,
    pid: p.pid,
    status: statusToPb[p.status],
    stdin: p.stdin,
    stdout: p.stdout,
    stderr: p.stderr,
    terminal: p.terminal,
    exitStatus: p.exitStatus,
    exitedAt: p.exitedAt,
  };
}

export const exitToPb = (e: ExitInfo) => ({ id: e.id, pid: e.pid, exitStatus: e.exitStatus, exitedAt: e.exitedAt });

// Garbage collection.
const TYPES: readonly GCObjectType[] = ['content', 'ingest', 'snapshot', 'image', 'lease', 'container'];

export function objectToPb(o: GCObject & { size?: number }): ObjectPb {
  return { type: o.type, namespace: o.namespace, snapshotter: o.snapshotter ?? '', id: o.id, size: o.size ?? 0 };
}

export function objectFromPb(o: ObjectPb | undefined): GCObject {
  if (!o) throw invalidArgument('object must be set');
  if (!TYPES.includes(o.type as GCObjectType)) throw invalidArgument(`unknown object type ${JSON.stringify(o.type)} (want one of ${TYPES.join(', ')})`);
  if (!o.namespace) throw invalidArgument('object namespace must be set');
  if (!o.id) throw invalidArgument('object id must be set');
  if (o.type === 'snapshot' && !o.snapshotter) throw invalidArgument('a snapshot needs its snapshotter');
  const out: GCObject = { type: o.type as GCObjectType, namespace: o.namespace, id: o.id };
  if (o.snapshotter) out.snapshotter = o.snapshotter;
  return out;
}

export function reportToPb(r: GCReport): CollectResponse {
  return {
    dryRun: r.dryRun,
    pauseMs: r.pauseMs,
    elapsedMs: r.elapsedMs,
    removed: r.removed.map(objectToPb),
    expiredLeases: r.expiredLeases.map(objectToPb),
    errors: r.errors.map((e) => ({ object: objectToPb(e.object), error: e.error })),
  };
}

// Transfers.
export const progressToPb = (p: TransferProgress): PbProgress => ({
  ref: p.ref,
  kind: p.kind,
  status: p.status,
  offset: p.offset ?? 0,
  total: p.total ?? 0,
  detail: p.detail ?? '',
});

export const registryFromPb = (r: RegistryOptions | undefined): RegistryRequest => ({
  plainHttp: r?.plainHttp ?? false,
  ...(r?.username || r?.secret ? { credentials: { username: r.username, secret: r.secret } } : {}),
  ...(r?.hostsDir ? { hostsDir: r.hostsDir } : {}),
  ...(r?.maxConcurrent ? { maxConcurrent: r.maxConcurrent } : {}),
});

// Introspection.
export function pluginToPb(p: LoadedPlugin): Plugin {
  const r = p.registration;
  let initErr: Plugin['initErr'];
  // containerd's skip error is no errdefs kind: ToGRPC makes it UNKNOWN, its message ending in "skip plugin".
  if (p.status.state === 'skipped') initErr = { code: GrpcCode.UNKNOWN, message: p.status.reason, details: [] };
  if (p.status.state === 'error') initErr = { code: GrpcCode.UNKNOWN, message: p.status.error.message, details: [] };
  return {
    type: r.type,
    id: r.id,
    requires: (r.requires ?? []).map(String),
    platforms: p.meta.platforms.map((pl) => ({ os: pl.os, architecture: pl.architecture, variant: pl.variant ?? '' })),
    exports: p.meta.exports,
    capabilities: p.meta.capabilities,
    initErr,
  };
}
