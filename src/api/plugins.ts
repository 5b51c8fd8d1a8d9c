/**
 * The gRPC services, each registered as an io.containerd.grpc.v1 plugin over the subsystems it translates.
 * A service whose plugin is disabled or failed answers UNIMPLEMENTED.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PluginType, register } from '../plugin/index.js';
import type { MetadataStore } from '../metadata/index.js';
import type { Exchange } from '../events/exchange.js';
import { STRATA_REVISION, STRATA_VERSION } from '../version.js';
import type { GrpcService } from './call.js';
import { contentService } from './services/content.js';
import { namespacesService } from './services/namespaces.js';
import { leasesService } from './services/leases.js';
import { eventsService } from './services/events.js';
import { introspectionService } from './services/introspection.js';
import { healthService, versionService } from './services/version.js';
import { snapshotsService } from './services/snapshots.js';
import { imagesService } from './services/images.js';
import { diffService } from './services/diff.js';
import { transferService } from './services/transfer.js';
import { gcService, syncDelete } from './services/gc.js';
import type { Scheduler } from '../gc/scheduler.js';
import type { Differ } from '../diff/types.js';
import type { ImageTransfers } from '../images/transfer.js';
import { opContext } from './call.js';
import { invalidArgument } from '../core/errdefs.js';

const metadata = (ic: { get<T>(t: PluginType, id?: string): T }) => ic.get<MetadataStore>(PluginType.Metadata, 'sqlite');

// containerd's in-process service layer (io.containerd.service.v1), listed by introspection as containerd lists
// it: each grpc service below stands over one of these (clients such as the CRI plugin look them up by type and
// id). Each is the store its gRPC service translates; requires are containerd's, for the types Strata has.
const servicePlugins: [string, PluginType[], (ic: { get<T>(t: PluginType, id?: string): T }) => unknown][] = [
  ['introspection-service', [], () => ({})],
  ['namespaces-service', [PluginType.Event, PluginType.Metadata], (ic) => metadata(ic).namespaces],
  ['containers-service', [PluginType.Event, PluginType.Metadata], (ic) => metadata(ic).containers],
  ['images-service', [PluginType.Metadata, PluginType.GC], (ic) => metadata(ic).images],
  ['tasks-service', [PluginType.Event, PluginType.Runtime, PluginType.Metadata], (ic) => ic.get(PluginType.Runtime, 'task')],
  ['snapshots-service', [PluginType.Event, PluginType.Metadata], (ic) => metadata(ic).snapshotters],
  ['content-service', [PluginType.Event, PluginType.Metadata], (ic) => metadata(ic).content],
  ['leases-service', [PluginType.Metadata], (ic) => metadata(ic).leases],
  ['diff-service', [PluginType.Differ, PluginType.Metadata], (ic) => ic.get(PluginType.Differ, 'walking')],
];
for (const [id, requires, init] of servicePlugins) {
  register<unknown, Record<string, unknown>>({ type: PluginType.Service, id, requires, init });
}

register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'content',
  requires: [PluginType.Service, PluginType.Metadata],
  init: (ic) => contentService(metadata(ic).content, ic.log),
});

register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'snapshots',
  requires: [PluginType.Service, PluginType.Metadata],
  init: (ic) => {
    const md = metadata(ic);
    return snapshotsService((name, call) => {
      if (!name) throw invalidArgument('snapshotter argument missing');
      const sn = md.snapshotters.get(name);
      if (!sn) throw invalidArgument(`snapshotter not loaded: ${name}`);
      return sn.bind(opContext(call));
    }, ic.log);
  },
});

register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'namespaces',
  requires: [PluginType.Service, PluginType.Metadata],
  init: (ic) => namespacesService(metadata(ic).namespaces, ic.log),
});

register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'leases',
  // After the GC plugin (when loaded): Delete with sync waits for a collection, as containerd's.
  requires: [PluginType.Service, PluginType.Metadata, PluginType.GC],
  init: (ic) => leasesService(metadata(ic).leases, ic.log, syncDelete(ic.getAll<Scheduler>(PluginType.GC).get('scheduler'))),
});

register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'events',
  requires: [PluginType.Event],
  init: (ic) => eventsService(ic.get<Exchange>(PluginType.Event, 'exchange'), ic.log),
});

register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'introspection',
  requires: ['*'],
  init: (ic) => {
    // A stable identity for this daemon root, kept across restarts (as containerd keeps its uuid file).
    mkdirSync(ic.root, { recursive: true, mode: 0o700 });
    const file = join(ic.root, 'uuid');
    let uuid: string;
    try {
      uuid = readFileSync(file, 'utf8').trim();
    } catch {
      uuid = randomUUID();
      writeFileSync(file, uuid, { mode: 0o600 });
    }
    return introspectionService(() => ic.plugins(), uuid, ic.log);
  },
});

register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'version',
  init: (ic) => versionService(STRATA_VERSION, STRATA_REVISION, ic.log),
});

register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'healthcheck',
  init: (ic) => healthService(ic.log),
});

register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'images',
  requires: [PluginType.Service, PluginType.Metadata, PluginType.GC],
  init: (ic) => imagesService(metadata(ic).images, ic.log, syncDelete(ic.getAll<Scheduler>(PluginType.GC).get('scheduler'))),
});

register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'diff',
  requires: [PluginType.Service, PluginType.Metadata, PluginType.Differ],
  init: (ic) => {
    const md = metadata(ic);
    return diffService(ic.get<Differ>(PluginType.Differ, 'walking'), (call) => md.content.bind(opContext(call)), ic.log);
  },
});

// Strata's extension: pull, push, import, export and unpack in the daemon.
register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'transfer',
  requires: [PluginType.Transfer],
  init: (ic) => transferService(ic.get<ImageTransfers>(PluginType.Transfer, 'images'), ic.log),
});

// Strata's extension: garbage collection on demand, why an object is kept, orphans (`strata gc`, `strata prune`).
register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'gc',
  requires: [PluginType.GC],
  init: (ic) => {
    const scheduler = ic.get<Scheduler>(PluginType.GC, 'scheduler');
    return gcService(scheduler, scheduler.collector, ic.log);
  },
});

// Containers: the metadata container store (import kept with its registration; ESM hoists it).
import { containersService } from './services/containers.js';
register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'containers',
  requires: [PluginType.Service, PluginType.Metadata],
  init: (ic) => containersService(metadata(ic).containers, ic.log),
});

// Tasks: containers run on runc, each watched by a monitor process (src/runtime).
import { tasksService } from './services/tasks.js';
import type { TaskManager } from '../runtime/tasks.js';
register<GrpcService, Record<string, unknown>>({
  type: PluginType.GRPC,
  id: 'tasks',
  requires: [PluginType.Service, PluginType.Runtime],
  init: (ic) => tasksService(ic.get<TaskManager>(PluginType.Runtime, 'task'), ic.log),
});
